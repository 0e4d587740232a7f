"""``dream-policy calibrate-cache``: record the DiT head's sub-block outputs on calibration samples and
turn them into a BAC schedule stored next to the checkpoint (``cache_schedule.json``).

Statistics per sub-block, from its outputs X^k (k = denoising step) on N calibration samples:
- ``similarity[i, k]``: cosine similarity of X^i and X^k per sample, averaged (the scheduler's input);
- ``variation = (1/K^2) sum_t sum_u mean|X^t - X^u|`` (the Bubbling Union's ranking).

``mode=search`` needs no statistics: it samples the calibration windows' actions under candidate
schedules and keeps the one that the greedy search (``bac.greedy_prune``) finds closest to the uncached
actions on what the runtime plays (the first ``action_horizon`` actions of a chunk), at the FLOPs of
``budget`` updates per sub-block (``budget`` may be fractional there), averaged over ``noise_seeds``
draws of the sampling noise.

Calibration states (``states=``): ``windows``, the annotated windows of a data set (the expert's states),
or ``rollouts``, the conditions the uncached policy itself samples from in closed loop on the play-table
(``dream_policy.rollout_states``), which is where the runtime meets the schedule.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate
from tqdm import tqdm

from dream_policy.bac import (
    MODES,
    SCHEDULE_FILE,
    BlockKey,
    CacheSchedule,
    adaptive_steps,
    block_order,
    bubbling_union,
    greedy_prune,
    uniform_steps,
)
from dream_policy.dit_cache import BlockRecorder, CachedBlocks


def similarity_matrix(trajectory: torch.Tensor) -> np.ndarray:
    """(K, K) mean cosine similarity between steps of one sub-block's outputs ``trajectory`` (K, N, ...)."""
    flat = trajectory.flatten(2).double()  # (K, N, F)
    unit = flat / flat.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.einsum("inf,knf->ikn", unit, unit).mean(-1).numpy()  # (K, K)


def variation(trajectory: torch.Tensor) -> float:
    """(1/K^2) sum over step pairs of the mean absolute difference of the outputs."""
    flat = trajectory.flatten(1).double()  # (K, N*F)
    K = flat.shape[0]
    return float(torch.cdist(flat, flat, p=1).sum() / (K * K * flat.shape[1]))


def block_statistics(trajectories: Mapping[BlockKey, torch.Tensor]) -> dict[BlockKey, dict[str, Any]]:
    return {key: {"similarity": similarity_matrix(x), "variation": variation(x)} for key, x in trajectories.items()}


def build_schedule(mode: str, stats: Mapping[BlockKey, Mapping[str, Any]], num_steps: int, budget: int,
                   bubbling_blocks: int, depth: int, width: int, reuse: str = "regate") -> CacheSchedule:
    """The schedule of ``mode`` (``none``: every step) from per-block statistics."""
    if mode not in MODES or mode == "search":
        raise ValueError(f"mode {mode!r} is not one of {[m for m in MODES if m != 'search']} "
                         "(search: search_schedule)")
    keys = sorted(stats)
    if mode == "none":
        steps = {key: list(range(num_steps)) for key in keys}
    elif mode == "uniform":
        steps = {key: uniform_steps(num_steps, budget) for key in keys}
    else:
        steps = {key: adaptive_steps(stats[key]["similarity"], budget) for key in keys}
        if mode == "bac":
            steps = bubbling_union(steps, {key: stats[key]["variation"] for key in keys}, bubbling_blocks)
    info = {"variation": {f"{i}.{kind}": round(float(stats[(i, kind)]["variation"]), 6) for i, kind in keys}}
    if mode == "bac":
        info["bubbling_blocks"] = bubbling_blocks
    return CacheSchedule(mode, num_steps, depth, width, steps, None if mode == "none" else budget, info, reuse)


Batch = dict[str, Any] | torch.Tensor  # a window batch, or DiT conditions (B, A, D) as they are


def condition(model: Any, batch: Batch) -> torch.Tensor:
    """The DiT condition (B, A, D) of a window ``batch`` (a tensor is taken as a condition already)."""
    return batch if isinstance(batch, torch.Tensor) else model.features(batch)["action"]


@torch.no_grad()
def record(model: Any, batches: Iterable[Batch], seed: int = 0) -> dict[BlockKey, torch.Tensor]:
    """Every sub-block's output at every denoising step over all ``batches``: {key: (K, N, chunk, C)}."""
    parts: dict[BlockKey, list[torch.Tensor]] = {}
    generator = torch.Generator().manual_seed(seed)
    for batch in batches:
        recorder = BlockRecorder()
        model.sample_actions(condition(model, batch), generator=generator, block_hook=recorder)
        for key, x in recorder.trajectories().items():
            parts.setdefault(key, []).append(x)
    if not parts:
        raise ValueError("no calibration samples: the data yielded no batch")
    return {key: torch.cat(xs, dim=1) for key, xs in parts.items()}


@torch.no_grad()
def action_error(model: Any, batches: Iterable[Batch], schedule: CacheSchedule, seed: int = 0,
                 head: Any = None) -> float:
    """Mean |cached - uncached| action over ``batches``, both sampled from the same noise; ``head``: the DiT
    the cached actions are sampled with (a distilled one; None: the model's own)."""
    errors = []
    for batch in batches:
        cond = condition(model, batch)
        exact = model.sample_actions(cond, torch.Generator().manual_seed(seed))
        cached = model.sample_actions(cond, torch.Generator().manual_seed(seed), CachedBlocks(schedule), head=head)
        errors.append((cached - exact).abs().mean().item())
    return float(np.mean(errors))


class _FlopHook:
    """A block hook that counts each sub-block's FLOPs (torch's FlopCounterMode) per evaluation."""

    def __init__(self) -> None:
        self.flops: dict[BlockKey, list[int]] = {}
        self.branches = (0,)

    def start_step(self, index: int, _t: int) -> None:
        pass

    def __call__(self, block: int, kind: str, compute: Any) -> torch.Tensor:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            value = compute()
        self.flops.setdefault((block, kind), []).append(counter.get_total_flops())
        return value


@torch.no_grad()
def sub_block_flops(model: Any, cond: torch.Tensor) -> dict[BlockKey, float]:
    """FLOPs of one evaluation of each DiT sub-block (mean over the denoising steps) for condition ``cond``."""
    hook = _FlopHook()
    model.sample_actions(cond[:1], torch.Generator().manual_seed(0), hook)
    return {key: float(np.mean(f)) for key, f in hook.flops.items()}


@torch.no_grad()
def search_schedule(model: Any, batches: list[Batch], budget: float, seed: int = 0,
                    played: int | None = None, reuse: str = "regate", rounds_hint: int = 4,
                    show_progress: bool = True, noise_seeds: int = 1) -> CacheSchedule:
    """The ``search`` schedule: greedy removal of updates, scored by the error of the played actions.

    The error is the mean |cached - uncached| of the first ``played`` actions of each chunk (None: the
    model's ``action_horizon``, else the whole chunk), both sampled from the same noise, averaged over
    ``noise_seeds`` noise draws (seeds ``seed``, ``seed + 1``, ...); the schedule's sub-block FLOPs stay
    within those of ``budget`` updates of every sub-block.
    """
    cfg, dit_cfg = model.config, model.config.dit
    num_steps = cfg.ddim_steps
    if not 1 <= budget <= num_steps:
        raise ValueError(f"budget={budget} must be in [1, steps={num_steps}]")
    if noise_seeds < 1:
        raise ValueError(f"noise_seeds={noise_seeds} must be >= 1")
    played = played or cfg.action_horizon or cfg.chunk
    cond = torch.cat([condition(model, b) for b in batches])  # (N, A, D)
    draws = [seed + i for i in range(noise_seeds)]
    reference = [model.sample_actions(cond, torch.Generator().manual_seed(s))[:, :played] for s in draws]
    costs = sub_block_flops(model, cond)
    blocks = sorted(costs, key=block_order)

    def error(steps: dict[BlockKey, list[int]]) -> float:
        schedule = CacheSchedule("search", num_steps, dit_cfg.depth, dit_cfg.width, steps, None, {}, reuse)
        return float(np.mean([(model.sample_actions(cond, torch.Generator().manual_seed(s), CachedBlocks(schedule))
                               [:, :played] - ref).abs().mean() for s, ref in zip(draws, reference, strict=True)]))

    full = sum(costs.values()) * num_steps
    target = budget * sum(costs.values())
    bar = tqdm(total=round(100 * (1 - target / full)), desc="search (% of sub-block FLOPs dropped)",
               disable=not show_progress)

    def progress(steps: dict[BlockKey, list[int]], err: float) -> None:
        bar.n = round(100 * (1 - sum(costs[k] * len(v) for k, v in steps.items()) / full))
        bar.set_postfix(error=f"{err:.4f}")
        bar.refresh()

    steps = greedy_prune(blocks, num_steps, target, error, costs, rounds_hint, progress)
    bar.close()
    info = {"played_actions": played, "played_error": round(error(steps), 6), "noise_seeds": noise_seeds,
            "flops_fraction": round(sum(costs[k] * len(v) for k, v in steps.items()) / (sum(costs.values()) * num_steps), 4),
            "sub_block_mflops": {f"{i}.{kind}": round(costs[(i, kind)] / 1e6, 4) for i, kind in blocks}}
    return CacheSchedule("search", num_steps, dit_cfg.depth, dit_cfg.width, steps, budget, info, reuse)


def calibration_batches(data: str | Path, split: str, policy: Any, samples: int, batch_size: int
                        ) -> list[dict[str, Any]]:
    """``samples`` windows of ``data``'s ``split`` in the policy's preprocessing, batched."""
    from dream_policy.data.loader import CalvinWindowDataset

    cfg = policy.model.config
    dataset = CalvinWindowDataset(Path(data), split, history=cfg.backbone.history, chunk=cfg.chunk,
                                  forecast_n=0, normalizer=policy.normalizer, seed=0)
    items = list(itertools.islice(iter(dataset), samples))
    if not items:
        raise ValueError(f"{data}/{split} yields no language-annotated window to calibrate on")
    keep = ("history", "lang_emb")
    return [default_collate([{k: item[k] for k in keep} for item in items[i:i + batch_size]])
            for i in range(0, len(items), batch_size)]


STATES = ("windows", "rollouts")


def calibration_states(cfg: Mapping[str, Any], policy: Any) -> tuple[list[Batch], dict[str, Any]]:
    """(batches, description) of the calibration states ``cfg`` asks for (see the module)."""
    states, batch_size, seed = str(cfg.get("states") or "windows"), int(cfg["batch_size"]), int(cfg["seed"])
    samples = cfg.get("samples")
    if states not in STATES:
        raise ValueError(f"states={states!r} is not one of {list(STATES)}")
    if states == "windows":
        if not cfg.get("data"):
            raise ValueError("states=windows calibrates on a data set's windows: give data=DIR "
                             "(or states=rollouts to record the policy's own states on the play-table)")
        samples = 64 if samples is None else int(samples)
        batches = calibration_batches(cfg["data"], str(cfg["split"]), policy, samples, batch_size)
        return batches, {"data": str(cfg["data"]), "split": str(cfg["split"]),
                         "samples": sum(len(b["lang_emb"]) for b in batches)}
    from dream_policy.rollout_states import closed_loop_conditions

    cond, info = closed_loop_conditions(policy, int(cfg["rollout_first"]), int(cfg["rollout_chains"]),
                                        str(cfg["scene"]), int(cfg["ep_len"]), seed)
    samples = 512 if samples is None else int(samples)
    pick = torch.randperm(len(cond), generator=torch.Generator().manual_seed(seed))[:samples]
    cond = cond[pick]
    return list(cond.split(batch_size)), {**info, "samples": len(cond)}


def calibrate_command(cfg: Mapping[str, Any]) -> None:
    """CLI: ``dream-policy calibrate-cache ckpt=PATH data=DIR budget=M bubbling_blocks=n`` (or
    ``states=rollouts`` instead of ``data=``)."""
    from dream_policy.cli import UsageError
    from dream_policy.runtime import DreamPolicy

    torch.set_num_threads(int(cfg.get("torch_threads") or 1))
    ckpt = Path(str(cfg["ckpt"]))
    steps = cfg.get("ddim_steps")
    policy = DreamPolicy.from_checkpoint(ckpt, cache="none", ddim_steps=None if steps is None else int(steps))
    model, dit_cfg = policy.model, policy.model.config.dit
    num_steps = policy.model.config.ddim_steps
    budget = float(cfg["budget"]) if str(cfg["mode"]) == "search" else int(cfg["budget"])
    try:
        batches, calibration = calibration_states(cfg, policy)
    except ValueError as error:
        raise UsageError(str(error)) from None
    reuse = str(cfg.get("reuse") or "regate")
    if str(cfg["mode"]) == "search":
        schedule = search_schedule(model, batches, budget, int(cfg["seed"]), reuse=reuse,
                                   noise_seeds=int(cfg.get("noise_seeds") or 1))
    else:
        stats = block_statistics(record(model, batches, int(cfg["seed"])))
        schedule = build_schedule(str(cfg["mode"]), stats, num_steps, int(budget), int(cfg["bubbling_blocks"]),
                                  dit_cfg.depth, dit_cfg.width, reuse)
    schedule.info["action_error"] = action_error(model, batches, schedule, int(cfg["seed"]) + 1000)
    schedule.info["calibration"] = calibration
    out = Path(str(cfg["out"])) if cfg.get("out") else ckpt / SCHEDULE_FILE
    schedule.save(out)
    print(f"{schedule.mode} schedule, budget {budget} of {num_steps} steps: computes "
          f"{schedule.fraction():.0%} of the sub-block evaluations; mean |action - uncached| "
          f"{schedule.info['action_error']:.4f} -> {out}")
