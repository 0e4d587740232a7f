"""bench/compare_evals.py: evaluations side by side (table, plot, refusing unlike runs)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("compare_evals",
                                              Path(__file__).resolve().parent.parent / "bench" / "compare_evals.py")
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def write_run(folder: Path, chain_sr: list[float], chains: int = 10) -> Path:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"avg_seq_len": sum(chain_sr), "chain_sr": chain_sr,
                                                     "num_chains": chains}))
    return folder


def test_table_and_plot_of_two_runs(tmp_path, monkeypatch, capsys):
    a = write_run(tmp_path / "eval_a", [0.5, 0.2, 0.1, 0.0, 0.0])
    b = write_run(tmp_path / "eval_b", [0.4, 0.1, 0.0, 0.0, 0.0])
    png = tmp_path / "cmp.png"
    monkeypatch.setattr(sys, "argv", ["compare_evals.py", f"shipped={a}", str(b), "--plot", str(png)])
    compare.main()
    out = capsys.readouterr().out
    assert "| shipped | 10 | 0.80 | 0.50 / 0.20 / 0.10 / 0.00 / 0.00 |" in out
    assert "| eval_b | 10 | 0.50 |" in out  # a bare folder is labelled by its name
    assert png.is_file() and png.stat().st_size > 1000


def test_unlike_runs_and_missing_results_are_refused(tmp_path, monkeypatch):
    a = write_run(tmp_path / "a", [0.5, 0, 0, 0, 0], chains=10)
    b = write_run(tmp_path / "b", [0.5, 0, 0, 0, 0], chains=100)
    monkeypatch.setattr(sys, "argv", ["compare_evals.py", str(a), str(b)])
    with pytest.raises(SystemExit, match="different numbers of chains"):
        compare.main()
    monkeypatch.setattr(sys, "argv", ["compare_evals.py", str(tmp_path / "nothing")])
    with pytest.raises(SystemExit, match="no such file"):
        compare.main()


def test_runs_over_the_same_chains_are_compared_chain_by_chain(tmp_path, monkeypatch, capsys):
    def run(name, successes, tasks=("open_drawer", "lift_red_block_table")):
        folder = write_run(tmp_path / name, [0.5, 0, 0, 0, 0], chains=len(successes))
        results = json.loads((folder / "results.json").read_text())
        results["chains"] = [{"index": i, "tasks": list(tasks), "num_successes": n} for i, n in enumerate(successes)]
        (folder / "results.json").write_text(json.dumps(results))
        return folder

    base, other = run("base", [0, 1, 2, 1]), run("other", [1, 1, 0, 2])
    monkeypatch.setattr(sys, "argv", ["compare_evals.py", f"base={base}", f"new={other}"])
    compare.main()
    # differences 1, 0, -2, 1: mean 0, sample std sqrt(2), se sqrt(2)/2
    assert "new - base, paired: +0.000 +- 0.707 (2 chains better, 1 worse)" in capsys.readouterr().out
    elsewhere = run("elsewhere", [1, 1, 0, 2], tasks=("close_drawer",))
    assert compare.paired(json.loads((base / "results.json").read_text()),
                          json.loads((elsewhere / "results.json").read_text())) is None  # other chains
    assert compare.paired({"chain_sr": []}, {"chain_sr": []}) is None  # no per-chain records


def test_every_calvin_task_has_a_family_and_families_sum_per_run(tmp_path, monkeypatch, capsys):
    from sim.task_oracle import TASK_NAMES

    assert {compare.family(t) for t in TASK_NAMES} <= set(compare.FAMILIES)
    assert compare.family("lift_red_block_table") == "table lifts"
    assert compare.family("push_into_drawer") == "place, stack, push_into"
    assert compare.family("push_red_block_left") == "pushes"
    with pytest.raises(ValueError, match="unknown CALVIN task 'fly'"):
        compare.family("fly")
    with pytest.raises(ValueError, match="unknown CALVIN task"):
        compare.family("lift_red_block_moon")

    def run(name, per_task):
        folder = write_run(tmp_path / name, [0.5, 0, 0, 0, 0])
        results = json.loads((folder / "results.json").read_text())
        results["per_task"] = per_task
        (folder / "results.json").write_text(json.dumps(results))
        return folder

    a = run("a", {"lift_red_block_table": [1, 4], "lift_blue_block_table": [0, 3], "open_drawer": [2, 2]})
    b = run("b", {"lift_red_block_table": [2, 5], "rotate_red_block_left": [1, 2]})
    monkeypatch.setattr(sys, "argv", ["compare_evals.py", f"a={a}", f"b={b}"])
    compare.main()
    out = capsys.readouterr().out
    assert "| run | table lifts | rotations | open_drawer |" in out
    assert "| a | 1/7 | - | 2/2 |" in out
    assert "| b | 2/5 | 1/2 | - |" in out
