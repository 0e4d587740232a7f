"""Block-wise Adaptive Caching on the shipped checkpoint, every mode side by side in one process:
DiT-head latency (p50/p95; all modes timed interleaved), FLOPs per head call, share of sub-block evaluations, action error against
the uncached head from the same noise, whole ``step()`` latency, and (``--chains N``) closed-loop
CALVIN chains for none / uniform / bac at the shipped budget (and ``search``, the error-driven schedule of
``calibrate-cache mode=search``, at ``--search-budget``, calibrated in the same process on the same
windows, or a stored one, ``--search-schedule``). The line before the last is ``search_head_speedup=<search vs none>``; the last line is
``head_speedup=<bac vs none>`` at the shipped budget. Schedules reuse sub-block outputs re-gated by the
current step's adaLN gate (``--reuse regate``, the default) or the cached increments as they were
(``--reuse increment``); the ``|da| inc`` column gives the action error of the other kind, for comparison.

The shipped setting is the checkpoint's own ``cache_schedule.json`` (what ``cache=auto`` runs) when it has
one: ``--bac-schedule auto``, the default, benches that file as the bac row at its budget (``--budget``
defaults to it; another ``--budget`` calibrates bac here); ``--bac-schedule none`` calibrates bac here at
``--budget`` (default 3) like the other modes.
A ``--bac-schedule`` that names a distilled head (``dream-policy distill-cache``) gets its bac rows' action
error, ``step()`` and closed loop with that head (timed head calls use the checkpoint's DiT: same work).

Usage: MUJOCO_GL=egl python bench/cache_speed.py [--ckpt checkpoints/tiny_D] [--data DIR]
       [--bac-schedule auto|none|JSON] [--budgets 2 3 4 5] [--budget B] [--bubbling-blocks 3] [--search-budget 2.6] [--chains 100] [--workers 2]
Without --data it records 2 short expert episodes to calibrate on.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from dream_policy.bac import SCHEDULE_FILE, CacheSchedule
from dream_policy.calibrate_cache import (
    action_error,
    block_statistics,
    build_schedule,
    calibration_batches,
    record,
    search_schedule,
)
from dream_policy.dit_cache import CachedBlocks, load_head
from dream_policy.runtime import DreamPolicy

MODES = ("uniform", "adaptive", "bac")


def latency_ms(fns: dict, repeats: int) -> dict:
    """{name: call times (ms)}, the calls interleaved (one of each per round) so that every mode meets the
    same machine: on a shared CPU the speed drifts over a run, and timing one mode after another would put
    that drift into the ratios."""
    for fn in fns.values():
        fn()
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: 1000 * np.asarray(ts) for name, ts in times.items()}


def head_flops(model, cond: torch.Tensor, schedule: CacheSchedule | None) -> int:
    """FLOPs of one head call (matrix products and attention, as torch's FlopCounterMode counts them)."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:  # the counter's module tracker needs grad-free leaves under no_grad
        p.requires_grad_(False)
    try:
        with FlopCounterMode(display=False) as counter:
            model.sample_actions(cond, torch.Generator().manual_seed(0), CachedBlocks(schedule) if schedule else None)
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    return counter.get_total_flops()


@torch.no_grad()
def noise_spread(model, batches: list) -> float:
    """Mean |a - a'| between uncached action chunks sampled from two different noises."""
    diffs = []
    for batch in batches:
        cond = model.features(batch)["action"]
        a = model.sample_actions(cond, torch.Generator().manual_seed(1))
        b = model.sample_actions(cond, torch.Generator().manual_seed(2))
        diffs.append((a - b).abs().mean().item())
    return float(np.mean(diffs))


def step_latency_ms(policy: DreamPolicy, schedule: CacheSchedule | None, steps: int) -> np.ndarray:
    """Whole ``step()`` (history preprocessing, backbone, head), sampling a chunk at every step."""
    from sim.env import PlayTableEnv
    from sim.state_sampler import default_robot_obs, sample_scene_obs

    policy.set_schedule(schedule)
    policy.action_horizon = 1
    env = PlayTableEnv("D", render=True)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(options={"robot_obs": default_robot_obs(), "scene_obs": sample_scene_obs(rng, env.cfg)})
    policy.reset()
    times = []
    for i in range(steps + 3):
        t = time.perf_counter()
        action = policy.step(obs, "open the drawer")
        if i >= 3:
            times.append(time.perf_counter() - t)
        obs, *_ = env.step(action)
    env.close()
    policy.set_schedule(None)
    return 1000 * np.asarray(times)


def closed_loop(ckpt: Path, schedule: CacheSchedule | None, chains: int, workers: int, out: Path,
                ddim_steps: int | None = None, first: int = 0) -> dict:
    from sim.evaluate import evaluate, select_chains

    path = out / "schedule.json"
    cache = "none"
    if schedule is not None:
        schedule.save(path)  # names a distilled head where it lies
        cache = str(path.resolve())
    options = {"ckpt": str(ckpt.resolve()), "cache": cache}
    if ddim_steps is not None:
        options["ddim_steps"] = ddim_steps
    return evaluate(select_chains(chains, None, first=first), "checkpoint", options, workers=workers, out_dir=out)


def load_bac_schedule(path: Path, budget: int, reuse: str, depth: int, width: int, num_steps: int) -> CacheSchedule:
    """A stored bac schedule (e.g. the shipped one) to bench in place of one calibrated here; it must be a bac
    schedule of the bench's ``budget`` and ``reuse`` for this DiT."""
    schedule = CacheSchedule.load(path)
    schedule.check_matches(depth, width, num_steps, str(path))
    found = (schedule.mode, schedule.budget, schedule.reuse)
    if found != ("bac", budget, reuse):
        raise ValueError(f"{path} is a {found[0]} schedule of budget {found[1]} with {found[2]} reuse; "
                         f"--bac-schedule needs bac, budget {budget} (--budget), {reuse} reuse (--reuse)")
    return schedule


def shipped_setting(ckpt: Path, bac_schedule: str, budget: int | None) -> tuple[Path | None, int]:
    """(stored bac schedule to bench or None, the budget of the bac row): ``auto`` is the checkpoint's
    ``cache_schedule.json`` if it has one at ``budget`` (any budget when None), ``none`` calibrates here;
    the budget defaults to the stored schedule's, else 3."""
    if bac_schedule == "none":
        path = None
    elif bac_schedule == "auto":
        path = ckpt / SCHEDULE_FILE if (ckpt / SCHEDULE_FILE).is_file() else None
        if path is not None and budget is not None and CacheSchedule.load(path).budget != budget:
            path = None  # another budget was asked for: calibrate it here
    else:
        path = Path(bac_schedule)
        if not path.is_file():
            raise ValueError(f"--bac-schedule {bac_schedule}: no such file (auto, none or a schedule JSON)")
    if budget is None:
        budget = 3 if path is None else int(CacheSchedule.load(path).budget)
    return path, budget


def load_search_schedule(path: Path, reuse: str, depth: int, width: int, num_steps: int) -> CacheSchedule:
    """A stored search schedule (e.g. one searched on closed-loop states) to bench as the search row at its
    own budget; it must be a search schedule with the bench's ``reuse`` for this DiT."""
    schedule = CacheSchedule.load(path)
    schedule.check_matches(depth, width, num_steps, str(path))
    if (schedule.mode, schedule.reuse) != ("search", reuse) or not schedule.budget:
        raise ValueError(f"{path} is a {schedule.mode} schedule of budget {schedule.budget} with {schedule.reuse} "
                         f"reuse; --search-schedule needs a search schedule with a budget and {reuse} reuse (--reuse)")
    return schedule


def collect_small(out: Path) -> Path:
    from sim.collect import CollectConfig, collect

    collect(CollectConfig(scene="D", num_episodes=3, episode_len=300, out=str(out), workers=1, window=32,
                          validation_fraction=0.34))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, default=Path("checkpoints/tiny_D"))
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--budgets", type=int, nargs="+", default=[2, 3, 4, 5])
    parser.add_argument("--budget", type=int, default=None,
                        help="the shipped budget (closed loop, head_speedup); default: the stored bac schedule's, else 3")
    parser.add_argument("--bubbling-blocks", type=int, default=3)
    parser.add_argument("--search-budget", type=float, default=2.6,
                        help="FLOPs budget of the search schedule, in updates per sub-block (0: skip it)")
    parser.add_argument("--ddim-steps", type=int, default=None, help="override the checkpoint's DDIM steps")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--steps", type=int, default=100, help="step() calls timed per mode")
    parser.add_argument("--chains", type=int, default=0, help="closed-loop chains per mode (0: skip)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--closed-loop-modes", nargs="+", default=["none", "uniform", "bac"],
                        choices=["none", "uniform", "adaptive", "bac", "search"])
    parser.add_argument("--reuse", choices=["regate", "increment"], default="regate")
    parser.add_argument("--bac-schedule", default="auto",
                        help="bench this stored schedule as bac at --budget instead of one calibrated here; auto "
                             "(default): CKPT/cache_schedule.json if there is one; none: calibrate here")
    parser.add_argument("--search-schedule", type=Path, default=None,
                        help="bench this stored search schedule (e.g. calibrate-cache states=rollouts mode=search) "
                             "as the search row at its own budget instead of searching here")
    parser.add_argument("--first-chain", type=int, default=0, help="closed loop on CALVIN's chains from this one")
    parser.add_argument("--out", type=Path, default=Path("runs/cache_bench"))
    args = parser.parse_args()
    if "search" in args.closed_loop_modes and not args.search_budget:
        parser.error("--closed-loop-modes search needs a --search-budget")
    try:
        args.bac_schedule, args.budget = shipped_setting(args.ckpt, args.bac_schedule, args.budget)
    except ValueError as e:
        parser.error(str(e))
    if args.budget not in args.budgets:
        args.budgets = sorted([*args.budgets, args.budget])
    torch.set_num_threads(1)
    policy = DreamPolicy.from_checkpoint(args.ckpt, cache="none", ddim_steps=args.ddim_steps)
    model, cfg = policy.model, policy.model.config
    print(f"# BAC bench, {datetime.date.today()}, {platform.processor() or platform.machine()}, torch "
          f"{torch.__version__}, 1 thread, {args.ckpt}, DiT depth {cfg.dit.depth} x 3 sub-blocks, "
          f"{cfg.ddim_steps} DDIM steps, guidance {cfg.guidance}, noise_scale {cfg.noise_scale:g}, reuse {args.reuse}")
    other = "increment" if args.reuse == "regate" else "regate"
    stored = None
    if args.bac_schedule:
        try:
            stored = load_bac_schedule(args.bac_schedule, args.budget, args.reuse, cfg.dit.depth, cfg.dit.width,
                                       cfg.ddim_steps)
        except ValueError as e:
            parser.error(str(e))
        print(f"# bac at budget {args.budget}: {args.bac_schedule} (calibrated on "
              f"{stored.info.get('calibration', 'unrecorded data')}), not recalibrated here")
        if stored.head is not None:
            print(f"# its bac rows run the distilled head {stored.head_path()} (dream-policy distill-cache); "
                  "none and the other modes the checkpoint's")
    searched = None
    if args.search_schedule:
        try:
            searched = load_search_schedule(args.search_schedule, args.reuse, cfg.dit.depth, cfg.dit.width,
                                            cfg.ddim_steps)
        except ValueError as e:
            parser.error(str(e))
        args.search_budget = float(searched.budget)
        print(f"# search at budget {args.search_budget:g}: {args.search_schedule} (calibrated on "
              f"{searched.info.get('calibration', 'unrecorded data')}), not searched here")
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or collect_small(Path(tmp) / "data")
        batches = calibration_batches(data, "validation", policy, args.samples, 16)
    stats = block_statistics(record(model, batches))
    cond = model.features(_first(batches[0]))["action"]  # (1, A, D): one observation, as at run time
    schedules: dict[tuple[str, float], CacheSchedule] = {
        (mode, budget): build_schedule(mode, stats, cfg.ddim_steps, budget, args.bubbling_blocks, cfg.dit.depth,
                                       cfg.dit.width, args.reuse)
        for budget in args.budgets for mode in MODES}
    if stored is not None:
        schedules[("bac", args.budget)] = stored
    rows = [(mode, budget) for budget in args.budgets for mode in MODES]
    if args.search_budget:
        schedules[("search", args.search_budget)] = searched or search_schedule(
            model, batches, args.search_budget, seed=0, reuse=args.reuse)
        rows.append(("search", args.search_budget))
    heads = {key: load_head(model, schedule) for key, schedule in schedules.items()}  # distilled DiTs, or None
    # Timed with the checkpoint's DiT even where a schedule names a distilled one: the weights' values do not
    # change the work, and a second copy of the weights, timed interleaved with the others, would run from
    # colder caches than the runtime ever does (it swaps a distilled head into the one DiT in place).
    calls = {key: (lambda s=schedule: model.sample_actions(cond, None, CachedBlocks(s)))
             for key, schedule in schedules.items()}
    latencies = latency_ms({"none": lambda: model.sample_actions(cond), **calls}, args.repeats)
    base = latencies["none"]
    base_flops = head_flops(model, cond, None)
    print(f"{'mode':9s} {'budget':>6s} {'evals':>6s} {'head p50':>9s} {'p95':>7s} {'speedup':>7s} "
          f"{'MFLOP':>7s} {'FLOPx':>6s} {'|da|':>7s} {'|da| ' + other[:3]:>8s}")
    print(f"{'none':9s} {'-':>6s} {1:6.0%} {np.percentile(base, 50):8.2f}ms {np.percentile(base, 95):6.2f}ms "
          f"{1:7.2f} {base_flops / 1e6:7.2f} {1:6.2f} {0:7.4f} {0:8.4f}")
    print(f"(for scale: two uncached samples from different noise differ by |da| = {noise_spread(model, batches):.4f}"
          f" at the checkpoint's noise_scale {cfg.noise_scale:g})")
    speedups = {}
    for mode, budget in rows:
        schedule = schedules[(mode, budget)]
        ms = latencies[(mode, budget)]
        flops = head_flops(model, cond, schedule)
        err = action_error(model, batches, schedule, seed=1, head=heads[(mode, budget)])
        err_other = action_error(model, batches, dataclasses.replace(schedule, reuse=other), seed=1,
                                 head=heads[(mode, budget)])
        speedups[(mode, budget)] = np.percentile(base, 50) / np.percentile(ms, 50)
        print(f"{mode:9s} {budget:6g} {schedule.fraction():6.0%} {np.percentile(ms, 50):8.2f}ms "
              f"{np.percentile(ms, 95):6.2f}ms {speedups[(mode, budget)]:7.2f} {flops / 1e6:7.2f} "
              f"{base_flops / flops:6.2f} {err:7.4f} {err_other:8.4f}")
    if heads[("bac", args.budget)] is not None:
        print(f"(bac {args.budget:g} with the checkpoint's own head instead of the distilled one: |da| = "
              f"{action_error(model, batches, schedules[('bac', args.budget)], seed=1):.4f})")
    budget_of = {mode: args.search_budget if mode == "search" else args.budget for mode in (*MODES, "search")}
    print(f"\nwhole step() (chunk sampled every step), budget {args.budget} (search {args.search_budget:g}):")
    for mode in ("none", "uniform", "bac", *(("search",) if args.search_budget else ())):
        ms = step_latency_ms(policy, None if mode == "none" else schedules[(mode, budget_of[mode])], args.steps)
        print(f"  {mode:8s} p50 {np.percentile(ms, 50):6.2f} ms  p95 {np.percentile(ms, 95):6.2f} ms")
    if args.chains:
        print(f"\nclosed loop, CALVIN's chains {args.first_chain}-{args.first_chain + args.chains - 1} of scene D, "
              f"budget {args.budget}:")
        results = {}
        for mode in args.closed_loop_modes:
            out = args.out / f"{mode}_{budget_of.get(mode, args.budget):g}"
            out.mkdir(parents=True, exist_ok=True)
            r = closed_loop(args.ckpt, None if mode == "none" else schedules[(mode, budget_of[mode])], args.chains,
                            args.workers, out, args.ddim_steps, args.first_chain)
            results[mode] = r
            print(f"  {mode:8s} avg_seq_len {r['avg_seq_len']:.2f}  chain_sr "
                  + " ".join(f"{x:.2f}" for x in r["chain_sr"]))
        (args.out / f"closed_loop_{args.budget}.json").write_text(json.dumps(results, indent=1, default=str))
    if args.search_budget:
        print(f"search_head_speedup={speedups[('search', args.search_budget)]:.2f}")
    print(f"head_speedup={speedups[('bac', args.budget)]:.2f}")


def _first(batch: dict) -> dict:
    """The first sample of a collated batch, as a batch of one."""
    return {k: _first(v) if isinstance(v, dict) else v[:1] for k, v in batch.items()}


if __name__ == "__main__":
    main()
