"""Paired closed-loop comparisons pooled over several draws: is a runtime option within a margin of its base?

    python bench/pool_paired.py "seed 0=runs/none_s0:runs/bac_s0" "seed 2000=runs/none_s2000:runs/bac_s2000" \
        --margin 0.1 --plot bench/x.png

Each argument is ``label=BASE_DIR:OTHER_DIR`` (or ``BASE_DIR:OTHER_DIR``), two ``dream-policy eval`` outputs
over the same chains with the same seed, one run with the base setting and one with the other. Every chain
gives one paired difference (completed subtasks of the other run minus the base's, as in
``compare_evals.py``); the differences of all pairs are pooled into one mean with its standard error and a
normal 95 % interval. The other setting is shown within ``--margin`` of the base when the whole interval lies
above ``-margin``, shown worse when the whole interval lies below it, and undecided otherwise. Per-task
successes are summed over the pairs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare_evals

Z95 = 1.959964


def read_pair(arg: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(label, base results, other results) of one ``label=BASE:OTHER`` argument."""
    label, _, dirs = arg.rpartition("=")
    base_dir, sep, other_dir = dirs.partition(":")
    if not sep or not base_dir or not other_dir:
        raise SystemExit(f"{arg!r}: expected label=BASE_DIR:OTHER_DIR (two eval output folders)")
    _, base = compare_evals.read_run(base_dir)
    _, other = compare_evals.read_run(other_dir)
    return label or f"{Path(base_dir).name}:{Path(other_dir).name}", base, other


def verdict(mean: float, se: float, margin: float) -> str:
    """Whether a pooled paired difference is within ``margin`` of the base, judged by its 95 % interval."""
    low, high = mean - Z95 * se, mean + Z95 * se
    if low > -margin:
        return f"within {margin:g} of the base (the 95 % interval lies above -{margin:g})"
    if high < -margin:
        return f"more than {margin:g} below the base (the 95 % interval lies below -{margin:g})"
    return f"undecided (the 95 % interval straddles -{margin:g})"


def pool(pairs: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> tuple[list[dict[str, Any]], Any]:
    """Per-pair summaries and all paired differences concatenated; refuses pairs without per-chain records
    or over different chains."""
    import numpy as np

    rows, diffs = [], []
    for label, base, other in pairs:
        diff = compare_evals.chain_diffs(base, other)
        if diff is None:
            raise SystemExit(f"{label}: the two runs do not share per-chain records of the same chains "
                             "(run both with the same num_sequences/first/chains_file)")
        rows.append({"label": label, "chains": len(diff), "base": base["avg_seq_len"],
                     "other": other["avg_seq_len"], **compare_evals.summarise(diff)})
        diffs.append(diff)
    return rows, np.concatenate(diffs)


def per_task(pairs: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> dict[str, list[int]]:
    """task -> [other successes, other attempts, base successes, base attempts], summed over the pairs."""
    totals: dict[str, list[int]] = {}
    for _, base, other in pairs:
        for offset, run in ((0, other), (2, base)):
            for task, (succ, n) in run.get("per_task", {}).items():
                t = totals.setdefault(task, [0, 0, 0, 0])
                t[offset] += int(succ)
                t[offset + 1] += int(n)
    return totals


def plot(rows: list[dict[str, Any]], pooled: dict[str, float], margin: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["label"] for r in rows] + [f"pooled ({sum(r['chains'] for r in rows)})"]
    stats = rows + [pooled]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(labels) + 1.2))
    for y, s in enumerate(stats):
        ax.errorbar(s["mean"], y, xerr=Z95 * s["se"], fmt="o" if y < len(rows) else "D", capsize=4,
                    color="C0" if y < len(rows) else "C3")
    ax.axvline(0, color="grey", lw=0.8)
    ax.axvline(-margin, color="C3", ls="--", lw=0.8, label=f"-{margin:g} margin")
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("other - base: completed subtasks per chain, 95 % interval")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pairs", nargs="+", help="label=BASE_DIR:OTHER_DIR of two dream-policy eval outputs")
    parser.add_argument("--margin", type=float, default=0.1, help="how far below the base still counts as within")
    parser.add_argument("--plot", default=None, metavar="PNG", help="also draw the intervals")
    args = parser.parse_args()
    pairs = [read_pair(a) for a in args.pairs]
    rows, diffs = pool(pairs)
    print("| pair | chains | base avg_seq_len | other avg_seq_len | paired (other - base) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['chains']} | {r['base']:.2f} | {r['other']:.2f} | {r['mean']:+.3f} +- "
              f"{r['se']:.3f} ({r['better']} better, {r['worse']} worse) |")
    pooled = compare_evals.summarise(diffs)
    low, high = pooled["mean"] - Z95 * pooled["se"], pooled["mean"] + Z95 * pooled["se"]
    print(f"pooled over {len(diffs)} paired rollouts: {pooled['mean']:+.3f} +- {pooled['se']:.3f}, "
          f"95 % interval [{low:+.3f}, {high:+.3f}] ({pooled['better']} better, {pooled['worse']} worse)")
    print(verdict(pooled["mean"], pooled["se"], args.margin))
    tasks = per_task(pairs)
    if tasks:
        print("per task, summed over the pairs (other / base):")
        for task, (s, n, bs, bn) in sorted(tasks.items(), key=lambda kv: (kv[1][0] - kv[1][2], kv[0])):
            print(f"  {task:32s} {s:3d}/{n:<3d}  {bs:3d}/{bn:<3d}")
    if args.plot:
        plot(rows, pooled, args.margin, Path(args.plot))
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
