"""``dream-policy distill-cache``: fine-tune a copy of the DiT head to run under a cache schedule.

A schedule reuses stale sub-block outputs, and at a small budget the actions sampled under it drift from
the uncached head's (``bench/RESULTS.md``: about -0.17 avg_seq_len at budget 2 on the play-table). Here a
*student* head, initialised from the checkpoint's, samples under the schedule (the runtime's own
``CachedBlocks`` hook, gradients flowing through the reused values and all denoising steps) and learns to
reproduce, from the same starting noise, the chunk that the checkpoint's uncached head samples (mean
squared error over the chunk, in normalised action units). The checkpoint stays as it is: the student is
written to a safetensors file beside a copy of the schedule that names it (``CacheSchedule.head``), so
the runtime swaps it in while that schedule is on, and ``cache=none`` still runs the checkpoint's head.

States: the DiT conditions to distil on, ``conditions=FILE`` (a tensor (N, A, D) saved with ``torch.save``,
or a dict holding one as ``cond``), or else recorded from the uncached policy in closed loop on the
play-table (``dream_policy.rollout_states``, chains ``rollout_first`` on) and saved beside the output for
the next run. The error before and after, on held-out states (``held_out=FILE``, or the last
``held_out_fraction`` of them), goes into the schedule's ``info.distill``.

A schedule that already names a distilled head continues from that head (more steps, more states); the
target is still the checkpoint's uncached head.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from dream_policy.bac import CacheSchedule
from dream_policy.dit import DiT
from dream_policy.dit_cache import CachedBlocks, load_head

EVAL_SEEDS = (10_000, 10_001)  # the sampling noise of the held-out error
GRIPPER = 6  # the gripper's action dimension


def sample(model: Any, head: DiT, cond: torch.Tensor, seed: int, schedule: CacheSchedule | None,
           grad: bool = False) -> torch.Tensor:
    """The chunk (B, chunk, 7) ``head`` samples for ``cond`` from the noise of ``seed``, under ``schedule``
    (None: uncached)."""
    hook = None if schedule is None else CachedBlocks(schedule)
    generator = torch.Generator(device=cond.device).manual_seed(seed)
    return model.sample_actions(cond, generator=generator, block_hook=hook, head=head, grad=grad)


def sampled_chunks(model: Any, head: DiT, schedule: CacheSchedule | None, cond: torch.Tensor,
                   batch_size: int = 1024) -> torch.Tensor:
    """The chunks ``head`` samples for ``cond`` under ``schedule`` over ``EVAL_SEEDS``: (seeds, N, chunk, 7)."""
    return torch.stack([torch.cat([sample(model, head, part, seed + k * 7919, schedule)
                                   for k, part in enumerate(cond.split(batch_size))])
                        for seed in EVAL_SEEDS])


def head_error(model: Any, head: DiT, schedule: CacheSchedule, cond: torch.Tensor,
               reference: torch.Tensor | None = None, batch_size: int = 1024) -> dict[str, float]:
    """How far ``head`` under ``schedule`` samples from the checkpoint's uncached head on ``cond`` over
    ``EVAL_SEEDS``: mean |error| of the first action and of the chunk, and the share of first actions whose
    gripper command flips sign. ``reference``: the uncached ``sampled_chunks``, if known."""
    if reference is None:
        reference = sampled_chunks(model, model.dit, None, cond, batch_size)
    ours = sampled_chunks(model, head, schedule, cond, batch_size)
    first = (ours[:, :, 0] - reference[:, :, 0]).abs().mean()
    flips = ((ours[:, :, 0, GRIPPER] > 0) != (reference[:, :, 0, GRIPPER] > 0)).float().mean()
    return {"first_action": round(float(first), 5), "chunk": round(float((ours - reference).abs().mean()), 5),
            "gripper_flips": round(float(flips), 5)}


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps times a cosine decay to zero at ``steps`` (the cosine runs from step 0,
    unlike the trainer's ``schedule.lr_at``: the shipped distilled head was trained with this one)."""
    return peak * min(1.0, (step + 1) / max(warmup, 1)) * 0.5 * (1 + math.cos(math.pi * step / steps))


def distill_head(model: Any, schedule: CacheSchedule, cond: torch.Tensor, iters: int, batch_size: int,
                 lr: float, warmup: int = 50, clip: float = 1.0, seed: int = 1,
                 show_progress: bool = True, start: DiT | None = None) -> tuple[DiT, list[float]]:
    """(student, its loss per step): a copy of ``start`` (default ``model.dit``) trained so that, sampling
    under ``schedule``, it reproduces the uncached ``model.dit``'s chunks on conditions drawn from ``cond``
    (N, A, D); the noise of iteration ``i`` is seeded ``i``, the batches by ``seed``. ``model`` and
    ``start`` are left as they were."""
    if iters < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"iters={iters} and batch_size={batch_size} must be >= 1 and lr={lr} > 0")
    teacher = model.dit  # sampled without a graph: only the student's weights get gradients
    student = copy.deepcopy(teacher if start is None else start).eval()
    for p in student.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    picks = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    bar = tqdm(range(iters), desc="distilling the cached head", unit="step", disable=not show_progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, iters, lr, warmup)
        batch = cond[torch.randint(len(cond), (batch_size,), generator=picks)]
        target = sample(model, teacher, batch, step, None)
        loss = (sample(model, student, batch, step, schedule, grad=True) - target).pow(2).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"distillation loss became {loss.item()} at step {step}: lower lr={lr}")
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), clip)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.5f}")
    for p in student.parameters():
        p.requires_grad_(False)
    return student.eval(), losses


def read_conditions(path: str | Path, tokens: int, width: int) -> torch.Tensor:
    """Saved DiT conditions (N, tokens, width) from ``path``, with a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"conditions file {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file
        raise ValueError(f"{path}: not a readable torch file ({type(err).__name__}: {err})") from err
    cond = data.get("cond") if isinstance(data, Mapping) else data
    if not isinstance(cond, torch.Tensor):
        raise ValueError(f"{path}: expected a tensor of conditions, or a dict holding one as 'cond'")  # noqa: TRY004
    if cond.dim() != 3 or tuple(cond.shape[1:]) != (tokens, width) or len(cond) == 0:
        raise ValueError(f"{path}: conditions must be (N, {tokens}, {width}) with N >= 1 for this checkpoint, "
                         f"got {tuple(cond.shape)}")
    if not torch.isfinite(cond).all():
        raise ValueError(f"{path}: conditions hold NaN or infinite values")
    return cond.float()


def distill_command(cfg: Mapping[str, Any]) -> None:
    """CLI: ``dream-policy distill-cache ckpt=PATH schedule=JSON [conditions=FILE] [iters=N] [out=JSON]``."""
    from dream_policy.checkpoint import save_tensors
    from dream_policy.cli import UsageError
    from dream_policy.runtime import DreamPolicy

    torch.manual_seed(int(cfg["seed"]))
    torch.set_num_threads(int(cfg.get("torch_threads") or 2))
    if not cfg.get("ckpt") or not cfg.get("schedule"):
        raise UsageError("distill-cache needs ckpt=PATH (a checkpoint folder) and schedule=JSON (a cache schedule)")
    ckpt, schedule_path = Path(str(cfg["ckpt"])), Path(str(cfg["schedule"]))
    policy = DreamPolicy.from_checkpoint(ckpt, cache="none")
    model = policy.model
    schedule = CacheSchedule.load(schedule_path)
    dit_cfg = model.config.dit
    schedule.check_matches(dit_cfg.depth, dit_cfg.width, model.config.ddim_steps, str(schedule_path))
    if schedule.mode == "none":
        raise UsageError(f"{schedule_path} caches nothing (mode none): there is nothing to distil for")
    out = Path(str(cfg["out"])) if cfg.get("out") else schedule_path.with_name(schedule_path.stem + "_distilled.json")
    head_file = out.with_name(out.stem + "_head.safetensors")
    tokens, width = dit_cfg.cond_tokens, dit_cfg.cond_dim
    if cfg.get("conditions"):
        cond, states = read_conditions(cfg["conditions"], tokens, width), {"conditions": str(cfg["conditions"])}
    else:
        from dream_policy.rollout_states import closed_loop_conditions

        cond, states = closed_loop_conditions(policy, int(cfg["rollout_first"]), int(cfg["rollout_chains"]),
                                              str(cfg["scene"]), int(cfg["ep_len"]), int(cfg["seed"]))
        saved = out.with_name(out.stem + "_states.pt")
        torch.save({"cond": cond, "info": states}, saved)
        print(f"recorded {len(cond)} closed-loop states -> {saved} (conditions={saved} reuses them)")
    if cfg.get("held_out"):
        train, held_out = cond, read_conditions(cfg["held_out"], tokens, width)
    else:
        keep = len(cond) - max(1, int(len(cond) * float(cfg["held_out_fraction"])))
        if keep < 1:
            raise UsageError(f"{len(cond)} states are too few to hold some out: record more or give held_out=FILE")
        train, held_out = cond[:keep], cond[keep:]
    held_out = held_out[: int(cfg["held_out_max"])]
    reference = sampled_chunks(model, model.dit, None, held_out)
    before = head_error(model, model.dit, schedule, held_out, reference)
    print(f"checkpoint head under {schedule_path.name} on {len(held_out)} held-out states: {before}")
    start = load_head(model, schedule)
    if start is not None:
        before_start = head_error(model, start, schedule, held_out, reference)
        print(f"continuing from its distilled head {schedule.head_path()}: {before_start}")
    student, losses = distill_head(model, schedule, train, int(cfg["iters"]), int(cfg["batch_size"]), float(cfg["lr"]),
                           int(cfg["warmup"]), float(cfg["clip"]), int(cfg["seed"]), start=start)
    after = head_error(model, student, schedule, held_out, reference)
    print(f"distilled head under {schedule_path.name}: {after}")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(student.state_dict(), head_file)
    distilled = CacheSchedule(schedule.mode, schedule.num_steps, schedule.depth, schedule.width,
                              dict(schedule.steps), schedule.budget, dict(schedule.info), schedule.reuse,
                              head=head_file.name)
    distilled.info["distill"] = {"from_schedule": schedule_path.name, "states": states, "train_states": len(train),
                                 "held_out_states": len(held_out), "iters": int(cfg["iters"]),
                                 "batch_size": int(cfg["batch_size"]), "lr": float(cfg["lr"]),
                                 "loss_first_last": [round(losses[0], 6), round(losses[-1], 6)],
                                 "error_before": before, "error_after": after}
    if start is not None:
        distilled.info["distill"]["continued_from"] = {"head": str(schedule.head), "error": before_start,
                                                       "distill": schedule.info.get("distill")}
    distilled.save(out)
    print(f"distilled head -> {head_file}; schedule naming it -> {out} (cache={out} runs it)")
