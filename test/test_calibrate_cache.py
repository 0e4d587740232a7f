"""``dream-policy calibrate-cache`` end to end on a synthetic CALVIN-layout split, and the runtime
picking the schedule up from the checkpoint folder (or refusing one that does not fit)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_data_loader import make_split
from test_runtime import FakeText, obs

from dream_policy.bac import SCHEDULE_FILE, CacheSchedule
from dream_policy.checkpoint import save_checkpoint
from dream_policy.cli import main
from dream_policy.data.normalization import Normalizer
from dream_policy.model import DreamVLA, load_model_config
from dream_policy.runtime import DreamPolicy


@pytest.fixture()
def checkpoint(tmp_path):
    torch.manual_seed(0)
    config = load_model_config("tiny")
    model = DreamVLA(config)
    for p in model.dit.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    normalizer = Normalizer(obs_mean=np.zeros(15), obs_std=np.ones(15))
    return save_checkpoint(tmp_path / "ckpt", 1, model.state_dict(), config={"model_config": config.to_dict()},
                           normalization=normalizer.to_dict())


def test_calibrate_writes_a_schedule_the_runtime_uses(tmp_path, checkpoint, capsys):
    data = tmp_path / "data"
    make_split(data / "validation")
    assert main(["calibrate-cache", f"ckpt={checkpoint}", f"data={data}", "budget=3", "bubbling_blocks=2",
                 "samples=4", "batch_size=2"]) == 0
    assert "bac schedule, budget 3 of 10 steps" in capsys.readouterr().out
    saved = json.loads((checkpoint / SCHEDULE_FILE).read_text())
    assert saved["mode"] == "bac" and saved["budget"] == 3 and saved["info"]["calibration"]["samples"] == 4
    assert saved["info"]["action_error"] >= 0
    schedule = CacheSchedule.load(checkpoint / SCHEDULE_FILE)
    assert len(schedule.steps) == 12 and all(len(v) >= 3 for v in schedule.steps.values())

    policy = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText())
    assert policy.schedule is not None and policy.schedule.steps == schedule.steps
    assert DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), cache="none").schedule is None
    rng = np.random.default_rng(0)
    assert policy.step(obs(rng), "open the drawer").shape == (7,)


def test_a_schedule_for_another_model_is_a_clear_error(tmp_path, checkpoint):
    CacheSchedule("uniform", 20, 4, 128, {(0, "attn"): [0, 10]}, 2).save(checkpoint / SCHEDULE_FILE)
    with pytest.raises(ValueError, match="denoising steps 20 != model's 10"):
        DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText())
    with pytest.raises(FileNotFoundError, match="nope.json"):
        DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), cache=str(tmp_path / "nope.json"))


def test_calibrate_needs_ckpt_and_data(capsys):
    assert main(["calibrate-cache"]) == 2
    assert "ckpt" in capsys.readouterr().err


def test_calibrate_search_mode_takes_a_fractional_budget(tmp_path, checkpoint, capsys):
    data = tmp_path / "data"
    make_split(data / "validation")
    out = tmp_path / "search.json"
    assert main(["calibrate-cache", f"ckpt={checkpoint}", f"data={data}", "mode=search", "budget=2.5",
                 "samples=4", "batch_size=2", f"out={out}"]) == 0
    assert "search schedule, budget 2.5 of 10 steps" in capsys.readouterr().out
    schedule = CacheSchedule.load(out)
    assert schedule.mode == "search" and schedule.budget == 2.5 and schedule.info["flops_fraction"] <= 0.25
    policy = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), cache=str(out))
    assert policy.schedule.steps == schedule.steps
    assert policy.step(obs(np.random.default_rng(0)), "open the drawer").shape == (7,)


def test_windows_need_data(checkpoint, capsys):
    assert main(["calibrate-cache", f"ckpt={checkpoint}"]) == 2
    assert "data=DIR" in capsys.readouterr().err


@pytest.mark.slow
def test_calibrate_on_the_policys_own_closed_loop_states(tmp_path, checkpoint, capsys):
    """``states=rollouts``: the uncached policy runs CALVIN's chain 300 on the play-table (2 control steps
    per subtask here) and the schedule is searched on the conditions it sampled from."""
    out = tmp_path / "rollouts.json"
    assert main(["calibrate-cache", f"ckpt={checkpoint}", "states=rollouts", "rollout_chains=1", "ep_len=2",
                 "mode=search", "budget=3", "noise_seeds=2", "batch_size=1", f"out={out}"]) == 0
    schedule = CacheSchedule.load(out)
    calibration = schedule.info["calibration"]
    assert calibration["states"] == "rollouts" and calibration["chains"] == [300, 300]
    policy = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), cache=str(out))
    chunks = -(-2 // policy.action_horizon)  # a failed first subtask: 2 control steps
    assert calibration["recorded"] == calibration["samples"] == chunks
    assert schedule.mode == "search" and schedule.info["noise_seeds"] == 2
    assert policy.schedule.steps == schedule.steps
