"""The evaluation's log of finished chains: written through, read back, refused when it is another run's."""

from __future__ import annotations

import json

import pytest

from sim.eval_progress import append_record, open_progress, read_progress

SETTINGS = {"policy": "checkpoint", "policy_options": {"ckpt": "c", "cache": "none"}, "scene": "D", "ep_len": 360,
            "seed": 0, "shard": None}
A, B = ["open_drawer", "turn_on_led"], ["move_slider_left", "close_drawer"]


def record(index: int, tasks: list[str], n: int) -> dict:
    return {"index": index, "tasks": tasks, "num_successes": n, "steps": [10] * n}


def test_records_are_written_through_and_read_back(tmp_path):
    path = tmp_path / "chains.jsonl"
    with open_progress(path, SETTINGS, resume=False) as log:
        append_record(log, record(3, A, 1), None)
        # flushed at once: a reader sees it while the run is still going
        assert read_progress(path, SETTINGS, [(3, A)]) == {3: (record(3, A, 1), None)}
        append_record(log, record(7, B, 0), "videos/chain_0007.mp4")
    done = read_progress(path, SETTINGS, [(3, A), (7, B), (9, A)])
    assert done == {3: (record(3, A, 1), None), 7: (record(7, B, 0), "videos/chain_0007.mp4")}
    assert read_progress(path, SETTINGS, [(7, B)]) == {7: (record(7, B, 0), "videos/chain_0007.mp4")}
    assert read_progress(tmp_path / "none.jsonl", SETTINGS, [(3, A)]) == {}


def test_a_fresh_run_starts_a_new_log_and_resume_appends(tmp_path):
    path = tmp_path / "chains.jsonl"
    with open_progress(path, SETTINGS, resume=False) as log:
        append_record(log, record(3, A, 1), None)
    with open_progress(path, SETTINGS, resume=True) as log:
        append_record(log, record(7, B, 2), None)
    assert sorted(read_progress(path, SETTINGS, [(3, A), (7, B)])) == [3, 7]
    with open_progress(path, SETTINGS, resume=False):
        pass
    assert read_progress(path, SETTINGS, [(3, A), (7, B)]) == {}


def test_a_torn_last_line_is_dropped_and_cut_on_resume(tmp_path):
    path = tmp_path / "chains.jsonl"
    with open_progress(path, SETTINGS, resume=False) as log:
        append_record(log, record(3, A, 1), None)
    with path.open("a") as f:
        f.write('{"record": {"index": 7, "tas')  # killed mid-write
    assert sorted(read_progress(path, SETTINGS, [(3, A), (7, B)])) == [3]
    with open_progress(path, SETTINGS, resume=True) as log:
        append_record(log, record(7, B, 2), None)
    assert sorted(read_progress(path, SETTINGS, [(3, A), (7, B)])) == [3, 7]
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_another_runs_log_is_refused(tmp_path):
    path = tmp_path / "chains.jsonl"
    with open_progress(path, SETTINGS, resume=False) as log:
        append_record(log, record(3, A, 1), None)
    with pytest.raises(ValueError, match="seed"):
        read_progress(path, {**SETTINGS, "seed": 2000}, [(3, A)])
    with pytest.raises(ValueError, match="policy_options"):
        read_progress(path, {**SETTINGS, "policy_options": {"ckpt": "c", "cache": "auto"}}, [(3, A)])
    with pytest.raises(ValueError, match="chain 3 was run with tasks"):
        read_progress(path, SETTINGS, [(3, B)])
    path.write_text('{"record": {}}\n')
    with pytest.raises(ValueError, match="not an evaluation log"):
        read_progress(path, SETTINGS, [(3, A)])
    path.write_text(json.dumps({"settings": SETTINGS}) + "\nnot json\n" + json.dumps({"record": record(3, A, 1)}) + "\n")
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_progress(path, SETTINGS, [(3, A)])
