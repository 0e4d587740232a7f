"""bench/pool_paired.py: paired differences pooled over draws, the margin verdict, refusing unpaired runs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
spec = importlib.util.spec_from_file_location("pool_paired", BENCH / "pool_paired.py")
pool_paired = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pool_paired)


def write_run(folder: Path, successes: list[int], per_task: dict | None = None,
              tasks=("open_drawer", "turn_on_led")) -> Path:
    folder.mkdir(parents=True)
    results = {"avg_seq_len": sum(successes) / len(successes), "chain_sr": [0.0] * 5,
               "num_chains": len(successes), "per_task": per_task or {},
               "chains": [{"index": i, "tasks": list(tasks), "num_successes": n} for i, n in enumerate(successes)]}
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_differences_of_all_pairs_are_pooled_chain_by_chain(tmp_path, monkeypatch, capsys):
    a0 = write_run(tmp_path / "a0", [0, 1, 2, 1], {"open_drawer": [3, 4]})
    b0 = write_run(tmp_path / "b0", [1, 1, 0, 2], {"open_drawer": [2, 4]})
    a1 = write_run(tmp_path / "a1", [1, 1], {"open_drawer": [1, 2]})
    b1 = write_run(tmp_path / "b1", [1, 2], {"open_drawer": [2, 2], "turn_on_led": [1, 1]})
    png = tmp_path / "pool.png"
    monkeypatch.setattr(sys, "argv", ["pool_paired.py", f"first={a0}:{b0}", f"{a1}:{b1}", "--margin", "0.5",
                                      "--plot", str(png)])
    pool_paired.main()
    out = capsys.readouterr().out
    assert "| first | 4 | 1.00 | 1.00 | +0.000 +- 0.707 (2 better, 1 worse) |" in out
    assert "| a1:b1 | 2 | 1.00 | 1.50 | +0.500 +- 0.500 (1 better, 0 worse) |" in out
    # pooled differences 1, 0, -2, 1, 0, 1: mean 1/6, sample variance (7 - 6/36)/5 = 41/30
    se = (41 / 30) ** 0.5 / 6 ** 0.5
    assert f"pooled over 6 paired rollouts: +0.167 +- {se:.3f}" in out
    assert "95 % interval [-0.769, +1.102]" in out
    assert "undecided (the 95 % interval straddles -0.5)" in out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ")}
    assert lines["open_drawer"] == ["4/6", "4/6"]  # other 2 + 2, base 3 + 1
    assert lines["turn_on_led"] == ["1/1", "0/0"]  # a task only one run met
    assert png.is_file() and png.stat().st_size > 1000


def test_the_verdict_reads_the_whole_interval():
    assert pool_paired.verdict(-0.03, 0.03, 0.1).startswith("within")  # [-0.089, 0.029]
    assert pool_paired.verdict(-0.05, 0.03, 0.1).startswith("undecided")  # [-0.109, 0.009]
    assert pool_paired.verdict(-0.2, 0.04, 0.1).startswith("more than")  # [-0.278, -0.122]


def test_runs_that_cannot_be_paired_are_refused(tmp_path, monkeypatch):
    a = write_run(tmp_path / "a", [0, 1])
    b = write_run(tmp_path / "b", [1, 1], tasks=("close_drawer",))
    monkeypatch.setattr(sys, "argv", ["pool_paired.py", f"x={a}:{b}"])
    with pytest.raises(SystemExit, match="x: the two runs do not share per-chain records"):
        pool_paired.main()
    monkeypatch.setattr(sys, "argv", ["pool_paired.py", f"x={a}"])
    with pytest.raises(SystemExit, match="expected label=BASE_DIR:OTHER_DIR"):
        pool_paired.main()
    monkeypatch.setattr(sys, "argv", ["pool_paired.py", f"{a}:{tmp_path / 'none'}"])
    with pytest.raises(SystemExit, match="no such file"):
        pool_paired.main()
