"""bench/grasp_probe.py: which block a task names, closing events against the blocks, the summary, and a
probe run of the scripted expert on the first lift of CALVIN's chains (it closes on the named block)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

spec = importlib.util.spec_from_file_location("grasp_probe", Path(__file__).parents[1] / "bench" / "grasp_probe.py")
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)


def test_named_block():
    assert probe.named_block("lift_red_block_table") == "block_red"
    assert probe.named_block("rotate_pink_block_left") == "block_pink"
    assert probe.named_block("open_drawer") is None
    assert probe.named_block("stack_block") is None


def test_close_events_mark_each_open_to_close_switch():
    gripper = np.array([-1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0, -1.0])  # closes at 0 (open before), 4 and 7
    tcp = np.zeros((8, 3))
    tcp[:, 0] = np.arange(8) * 0.1
    blocks = {"block_red": np.tile([0.4, 0.0, 0.0], (8, 1)), "block_blue": np.tile([0.0, 0.05, 0.0], (8, 1))}
    events = probe.close_events(gripper, tcp, blocks, "block_red")
    assert [e["step"] for e in events] == [0, 4, 7]
    assert events[0]["offset"] == [0.4, 0.0, 0.0] and events[0]["nearest"] == "block_blue"
    assert events[1]["offset"] == pytest.approx([0.0, 0.0, 0.0]) and events[1]["nearest"] == "block_red"
    assert events[2]["offset"] == pytest.approx([-0.3, 0.0, 0.0])
    assert events[1]["tcp"] == pytest.approx([0.4, 0.0, 0.0]) and events[1]["block"] == [0.4, 0.0, 0.0]
    with pytest.raises(KeyError, match="block_pink"):
        probe.close_events(gripper, tcp, blocks, "block_pink")


def test_summary_counts_first_closings_only():
    attempts = [
        {"named": "block_red", "success": True, "closes": [{"offset": [0.0, 0.03, 0.04], "nearest": "block_red"},
                                                            {"offset": [1.0, 1.0, 1.0], "nearest": "block_blue"}]},
        {"named": "block_red", "success": False, "closes": [{"offset": [0.0, -0.01, 0.0], "nearest": "block_blue"}]},
        {"named": "block_red", "success": False, "closes": []},
    ]
    s = probe.summarise(attempts)
    assert s["attempts"] == 3 and s["closed"] == 2 and s["success"] == pytest.approx(1 / 3)
    assert s["first_close_on_named"] == 0.5
    assert s["first_close_median_dist"] == pytest.approx((0.05 + 0.01) / 2)
    assert s["first_close_mean_offset"] == pytest.approx([0.0, 0.01, 0.02])
    assert s["closes_per_attempt"] == 1.0
    with pytest.raises(ValueError, match="no attempts"):
        probe.summarise([])


@pytest.mark.slow
def test_the_expert_closes_on_the_named_block(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MUJOCO_GL", "egl")
    out, png = tmp_path / "probe.json", tmp_path / "probe.png"
    probe.main(["--policy", "expert", "--family", "lift", "--attempts", "2", "--workers", "1",
                "--out", str(out), "--plot", str(png)])
    result = json.loads(out.read_text())
    assert result["summary"]["attempts"] == 2 and result["summary"]["success"] == 1.0
    assert result["summary"]["first_close_on_named"] == 1.0
    assert result["summary"]["first_close_median_dist"] < 0.01
    assert all(a["task"].startswith("lift_") for a in result["attempts"])
    assert png.stat().st_size > 0 and "first_close_on_named" in capsys.readouterr().out


def test_tracking_is_the_slope_of_the_tcp_on_the_block():
    block = [[0.1, 0.0, 0.5], [0.2, 0.1, 0.5], [0.3, -0.1, 0.5], [0.0, 0.05, 0.5]]
    follows = [[x + 0.03, y - 0.07, z] for x, y, z in block]  # a constant offset: slope 1
    fixed = [[0.2, 0.0, 0.5]] * 4  # one place whatever the block: slope 0
    half = [[0.5 * x, 0.5 * y, z] for x, y, z in block]
    assert probe.tracking(follows, block) == pytest.approx([1.0, 1.0])
    assert probe.tracking(fixed, block) == pytest.approx([0.0, 0.0])
    assert probe.tracking(half, block) == pytest.approx([0.5, 0.5])
    assert np.isnan(probe.tracking(follows[:2], block[:2])).all()
    assert np.isnan(probe.tracking(follows, [[0.1, 0.0, 0.5]] * 4)).all()
