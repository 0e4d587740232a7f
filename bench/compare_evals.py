"""Several closed-loop evaluations side by side: a table of avg_seq_len and chain success, and one plot.

    python bench/compare_evals.py shipped=runs/eval_a dagger=runs/eval_b --plot bench/x.png

Each argument is ``label=DIR`` (or a bare DIR, labelled by its name), ``DIR/results.json`` being
``dream-policy eval``'s output. The runs should share their chains (same ``num_sequences`` and
``chains_file``): the script refuses runs over different numbers of chains.
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
    if args.plot:
        plot(runs, Path(args.plot))
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
