"""Several closed-loop evaluations side by side: a table of avg_seq_len and chain success, and one plot.

    python bench/compare_evals.py shipped=runs/eval_a dagger=runs/eval_b --plot bench/x.png

Each argument is ``label=DIR`` (or a bare DIR, labelled by its name), ``DIR/results.json`` being
``dream-policy eval``'s output. The runs should share their chains (same ``num_sequences``, ``first``
and ``chains_file``): the script refuses runs over different numbers of chains. When the runs keep their
per-chain records (``chains``) over the same chains, each run after the first is also compared with the
first chain by chain: the mean paired difference of completed subtasks with its standard error, and how
many chains it completed more or fewer subtasks of (evaluations are seeded per chain, so a runtime option
that changes nothing on a chain leaves that chain's rollout as it was). When the runs keep their per-task
counts (``per_task``), a second table gives the successes of each task family (table lifts, rotations, ...).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def read_run(arg: str) -> tuple[str, dict[str, Any]]:
    """(label, results) of one ``label=DIR`` or ``DIR`` argument."""
    label, _, folder = arg.rpartition("=")
    path = Path(folder) / "results.json"
    if not path.is_file():
        raise SystemExit(f"{path}: no such file (run dream-policy eval ... out_dir={folder} first)")
    results = json.loads(path.read_text(encoding="utf-8"))
    return label or Path(folder).name, results


def table(runs: list[tuple[str, dict[str, Any]]]) -> str:
    """Markdown rows: label, avg_seq_len, chain_sr per length."""
    lines = ["| run | chains | avg_seq_len | chain_sr (1..5) |", "|---|---|---|---|"]
    for label, r in runs:
        rates = " / ".join(f"{x:.2f}" for x in r["chain_sr"])
        lines.append(f"| {label} | {r['num_chains']} | {r['avg_seq_len']:.2f} | {rates} |")
    return "\n".join(lines)


FAMILIES = ("table lifts", "slider lifts", "drawer lifts", "rotations", "pushes", "move_slider", "lightbulb on",
            "lightbulb off", "LED", "open_drawer", "close_drawer", "place, stack, push_into")


def family(task: str) -> str:
    """The family of one of CALVIN's 34 task names, as the result tables of bench/RESULTS.md group them."""
    lifts = {"table": "table lifts", "slider": "slider lifts", "drawer": "drawer lifts"}
    if task.startswith("lift_") and task.rsplit("_", 1)[1] in lifts:
        return lifts[task.rsplit("_", 1)[1]]
    if task.startswith("rotate_"):
        return "rotations"
    if task.startswith(("place_", "stack_", "unstack_", "push_into")):
        return "place, stack, push_into"
    if task.startswith("push_"):
        return "pushes"
    if task.startswith("move_slider"):
        return "move_slider"
    if task.endswith("_led"):
        return "LED"
    named = {"turn_on_lightbulb": "lightbulb on", "turn_off_lightbulb": "lightbulb off", "open_drawer": "open_drawer",
             "close_drawer": "close_drawer"}
    if task in named:
        return named[task]
    raise ValueError(f"unknown CALVIN task {task!r}")


def family_counts(per_task: dict[str, list[int]]) -> dict[str, tuple[int, int]]:
    """{family: (successes, attempts)} summed over ``per_task``'s {task: [successes, attempts]}."""
    counts: dict[str, tuple[int, int]] = {}
    for task, (succ, n) in per_task.items():
        name = family(task)
        s, t = counts.get(name, (0, 0))
        counts[name] = (s + int(succ), t + int(n))
    return counts


def family_table(runs: list[tuple[str, dict[str, Any]]]) -> str | None:
    """Markdown rows: successes / attempts of each task family per run; None when a run lacks ``per_task``."""
    if any("per_task" not in r for _, r in runs):
        return None
    counts = [family_counts(r["per_task"]) for _, r in runs]
    present = [f for f in FAMILIES if any(f in c for c in counts)]
    lines = ["| run | " + " | ".join(present) + " |", "|---" * (len(present) + 1) + "|"]
    for (label, _), c in zip(runs, counts):
        cells = [f"{c[f][0]}/{c[f][1]}" if f in c else "-" for f in present]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chain_diffs(base: dict[str, Any], other: dict[str, Any]):
    """Completed subtasks of ``other`` minus ``base``, chain by chain (a float array); None when either run
    lacks per-chain records or their chains differ."""
    import numpy as np

    a, b = base.get("chains"), other.get("chains")
    if not a or not b or len(a) != len(b) or any(x["tasks"] != y["tasks"] for x, y in zip(a, b)):
        return None
    return np.array([y["num_successes"] - x["num_successes"] for x, y in zip(a, b)], np.float64)


def summarise(diff) -> dict[str, float]:
    """Mean paired difference, its standard error, and how many chains were better and worse."""
    import numpy as np

    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
    return {"mean": float(diff.mean()), "se": se, "better": int((diff > 0).sum()), "worse": int((diff < 0).sum())}


def paired(base: dict[str, Any], other: dict[str, Any]) -> dict[str, float] | None:
    """Chain-by-chain difference of completed subtasks (other - base): mean, standard error, number of
    chains better and worse; None when either run lacks per-chain records or their chains differ."""
    diff = chain_diffs(base, other)
    return None if diff is None else summarise(diff)


def paired_lines(runs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """One line per run after the first that can be paired with it."""
    lines = []
    for label, r in runs[1:]:
        d = paired(runs[0][1], r)
        if d is not None:
            lines.append(f"{label} - {runs[0][0]}, paired: {d['mean']:+.3f} +- {d['se']:.3f} "
                         f"({d['better']} chains better, {d['worse']} worse)")
    return lines


def plot(runs: list[tuple[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    lengths = np.arange(1, len(runs[0][1]["chain_sr"]) + 1)
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for k, (label, r) in enumerate(runs):
        ax.bar(lengths + (k - (len(runs) - 1) / 2) * width, r["chain_sr"], width,
               label=f"{label} ({r['avg_seq_len']:.2f})")
    ax.set_xlabel("tasks completed in a row")
    ax.set_ylabel("share of chains")
    ax.set_xticks(lengths)
    ax.set_ylim(0, 1)
    ax.legend(title="run (avg_seq_len)", fontsize=8)
    ax.set_title(f"CALVIN chains, {runs[0][1]['num_chains']} per run")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="label=DIR or DIR of a dream-policy eval output")
    parser.add_argument("--plot", default=None, metavar="PNG", help="also draw chain success per run")
    args = parser.parse_args()
    runs = [read_run(a) for a in args.runs]
    counts = {r["num_chains"] for _, r in runs}
    if len(counts) != 1:
        raise SystemExit(f"the runs cover different numbers of chains {sorted(counts)}: compare like with like")
    print(table(runs))
    for line in paired_lines(runs):
        print(line)
    families = family_table(runs)
    if families is not None:
        print()
        print(families)
    if args.plot:
        plot(runs, Path(args.plot))
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
