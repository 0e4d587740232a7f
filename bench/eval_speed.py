"""Evaluation speed: the CALVIN evaluator on the same chains one chain at a time per worker (``batch=1``)
and in lockstep (``batch=E``: E chains per worker, one batched policy call per step), in one run.

Prints each run's wall time, control steps per second and avg_seq_len, the speed ratio, and how many chains
gave the same record both ways (the rest parted after batched rounding sent their closed loops apart).

Usage: MUJOCO_GL=egl python bench/eval_speed.py [--ckpt checkpoints/tiny_D_query] [--chains 48]
       [--batch 8] [--workers 2] [--cache none] [--out runs/eval_speed]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from pathlib import Path

import torch

from sim.evaluate import evaluate, select_chains


def timed_eval(args: argparse.Namespace, batch: int) -> tuple[dict, float]:
    chains = select_chains(args.chains, None)
    start = time.perf_counter()
    results = evaluate(chains, "checkpoint", {"ckpt": args.ckpt, "cache": args.cache}, "D", args.workers,
                       args.ep_len, args.seed, 0, Path(args.out) / f"batch{batch}", True, batch=batch)
    return results, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default="checkpoints/tiny_D_query")
    parser.add_argument("--chains", type=int, default=48, help="CALVIN's chains 0..N-1")
    parser.add_argument("--batch", type=int, default=8, help="chains per worker in lockstep")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", default="none", help="the policy's DiT cache (auto, none or a schedule)")
    parser.add_argument("--ep-len", type=int, default=360)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/eval_speed")
    args = parser.parse_args()
    runs = {batch: timed_eval(args, batch) for batch in (1, args.batch)}
    print(f"# eval speed, {datetime.date.today()}, {platform.machine()}, torch {torch.__version__}, "
          f"checkpoint {args.ckpt}, cache={args.cache}, {args.workers} workers, chains 0-{args.chains - 1}, "
          f"seed {args.seed}")
    for batch, (results, wall) in runs.items():
        steps = sum(sum(c["steps"]) for c in results["chains"])
        print(f"batch={batch}: {wall:7.1f} s wall, {steps} control steps, {steps / wall:6.1f} steps/s, "
              f"avg_seq_len {results['avg_seq_len']:.3f}")
    (one, wall_one), (many, wall_many) = runs[1], runs[args.batch]
    same = sum(a == b for a, b in zip(one["chains"], many["chains"], strict=True))
    rate = {b: sum(sum(c["steps"]) for c in r["chains"]) / w for b, (r, w) in runs.items()}
    print(f"speedup (steps/s): {rate[args.batch] / rate[1]:.2f}x; wall {wall_one / wall_many:.2f}x; "
          f"identical chain records {same}/{args.chains}")


if __name__ == "__main__":
    main()
