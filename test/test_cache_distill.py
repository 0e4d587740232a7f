"""Cache-aware distillation of the DiT head (``dream-policy distill-cache``) and a schedule that names a
distilled head: the runtime swaps it in while that schedule is on and puts the checkpoint's back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_calibrate_cache import checkpoint  # noqa: F401  (fixture)
from test_runtime import FakeText, obs

from dream_policy.bac import CacheSchedule, uniform_steps
from dream_policy.cache_distill import distill_head, head_error, read_conditions, sample
from dream_policy.checkpoint import CheckpointError, save_tensors
from dream_policy.cli import main
from dream_policy.runtime import DreamPolicy

BLOCKS = [(i, kind) for i in range(4) for kind in ("attn", "cross", "ff")]


def coarse_schedule(budget: int = 2) -> CacheSchedule:
    return CacheSchedule("uniform", 10, 4, 128, {key: uniform_steps(10, budget) for key in BLOCKS}, budget)


def conditions(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 128, generator=torch.Generator().manual_seed(seed))


@pytest.fixture()
def model(checkpoint):  # noqa: F811
    return DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), cache="none").model


def test_sampling_keeps_no_graph_unless_asked(model):
    cond = conditions(2, 0)
    assert any(p.requires_grad for p in model.dit.parameters())
    assert not sample(model, model.dit, cond, 0, None).requires_grad
    out = sample(model, model.dit, cond, 0, coarse_schedule(), grad=True)
    out.sum().backward()
    assert model.dit.final.out.weight.grad is not None and model.dit.final.out.weight.grad.abs().sum() > 0


def test_distillation_brings_the_cached_head_closer_to_the_uncached_one(model):
    schedule = coarse_schedule()
    teacher = {k: v.clone() for k, v in model.dit.state_dict().items()}
    states = conditions(16, 1)
    before = head_error(model, model.dit, schedule, states)  # on noise the training never drew
    student, losses = distill_head(model, schedule, states, iters=30, batch_size=16, lr=1e-3, warmup=3,
                                   show_progress=False)
    after = head_error(model, student, schedule, states)
    assert len(losses) == 30 and np.mean(losses[-10:]) < 0.5 * np.mean(losses[:3]), losses
    assert after["chunk"] < 0.8 * before["chunk"], (before, after)
    # the checkpoint's head is left as it was, trainable as before
    assert all(torch.equal(v, teacher[k]) for k, v in model.dit.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    assert not any(p.requires_grad for p in student.parameters())


def test_distillation_refuses_bad_settings(model):
    with pytest.raises(ValueError, match="iters=0"):
        distill_head(model, coarse_schedule(), conditions(4, 0), iters=0, batch_size=2, lr=1e-3)


def test_read_conditions_names_what_is_wrong(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"cond": conditions(5, 0)}, good)
    assert read_conditions(good, 3, 128).shape == (5, 3, 128)
    torch.save(conditions(5, 0)[:, :2], tmp_path / "short.pt")
    with pytest.raises(ValueError, match=r"must be \(N, 3, 128\).*got \(5, 2, 128\)"):
        read_conditions(tmp_path / "short.pt", 3, 128)
    nan = conditions(5, 0)
    nan[2, 1, 7] = float("nan")
    torch.save(nan, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match="NaN"):
        read_conditions(tmp_path / "nan.pt", 3, 128)
    (tmp_path / "junk.pt").write_bytes(good.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable torch file"):
        read_conditions(tmp_path / "junk.pt", 3, 128)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        read_conditions(tmp_path / "missing.pt", 3, 128)


def test_a_schedule_naming_a_head_swaps_it_in_and_back(tmp_path, checkpoint):  # noqa: F811
    policy = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), cache="none")
    own = {k: v.clone() for k, v in policy.model.dit.state_dict().items()}
    other = {k: v + 0.01 * torch.randn_like(v) for k, v in own.items()}
    save_tensors(other, tmp_path / "s_head.safetensors")
    schedule = coarse_schedule()
    schedule.head = "s_head.safetensors"
    schedule.save(tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text())["head"] == "s_head.safetensors"
    loaded = CacheSchedule.load(tmp_path / "s.json")
    assert loaded.head_path() == tmp_path / "s_head.safetensors"

    cached = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), cache=str(tmp_path / "s.json"))
    assert all(torch.equal(v, other[k]) for k, v in cached.model.dit.state_dict().items())
    assert cached.step(obs(np.random.default_rng(0)), "open the drawer").shape == (7,)
    cached.set_schedule(None)  # uncached: the checkpoint's own head, bit for bit
    assert all(torch.equal(v, own[k]) for k, v in cached.model.dit.state_dict().items())
    cached.set_schedule(loaded)
    assert all(torch.equal(v, other[k]) for k, v in cached.model.dit.state_dict().items())
    cached.set_schedule(coarse_schedule())  # a schedule without a head runs the checkpoint's
    assert all(torch.equal(v, own[k]) for k, v in cached.model.dit.state_dict().items())


def test_a_missing_or_misfit_head_is_a_clear_error_that_keeps_the_checkpoints(tmp_path, checkpoint):  # noqa: F811
    policy = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), cache="none")
    own = {k: v.clone() for k, v in policy.model.dit.state_dict().items()}
    schedule = coarse_schedule()
    schedule.head = "gone.safetensors"
    schedule.save(tmp_path / "gone.json")
    with pytest.raises(FileNotFoundError, match="gone.safetensors"):
        policy.set_schedule(CacheSchedule.load(tmp_path / "gone.json"))
    save_tensors({k: v for k, v in own.items() if not k.startswith("final.")}, tmp_path / "part.safetensors")
    schedule.head = "part.safetensors"
    schedule.save(tmp_path / "part.json")
    with pytest.raises(CheckpointError, match="final.out.weight"):
        policy.set_schedule(CacheSchedule.load(tmp_path / "part.json"))
    assert all(torch.equal(v, own[k]) for k, v in policy.model.dit.state_dict().items())
    assert policy.schedule is None
    with pytest.raises(ValueError, match="not loaded from a file"):
        policy.set_schedule(schedule)


def test_distill_command_writes_a_head_and_a_schedule_naming_it(tmp_path, checkpoint, capsys):  # noqa: F811
    coarse_schedule().save(tmp_path / "u2.json")
    torch.save({"cond": conditions(40, 3)}, tmp_path / "states.pt")
    assert main(["distill-cache", f"ckpt={checkpoint}", f"schedule={tmp_path / 'u2.json'}",
                 f"conditions={tmp_path / 'states.pt'}", "iters=3", "batch_size=8", "held_out_fraction=0.25"]) == 0
    out = capsys.readouterr().out
    assert "distilled head ->" in out
    saved = json.loads((tmp_path / "u2_distilled.json").read_text())
    assert saved["head"] == "u2_distilled_head.safetensors" and saved["steps"] == json.loads(
        (tmp_path / "u2.json").read_text())["steps"]
    info = saved["info"]["distill"]
    assert info["train_states"] == 30 and info["held_out_states"] == 10 and info["iters"] == 3
    assert set(info["error_after"]) == {"first_action", "chunk", "gripper_flips"}
    policy = DreamPolicy.from_checkpoint(checkpoint, text_encoder=FakeText(), cache=str(tmp_path / "u2_distilled.json"))
    assert policy.schedule.head == "u2_distilled_head.safetensors"

    # a schedule naming a head continues from that head (not from the checkpoint's); the target stays the same
    assert main(["distill-cache", f"ckpt={checkpoint}", f"schedule={tmp_path / 'u2_distilled.json'}",
                 f"conditions={tmp_path / 'states.pt'}", "iters=2", "batch_size=8", "held_out_fraction=0.25",
                 f"out={tmp_path / 'more.json'}"]) == 0
    assert "continuing from its distilled head" in capsys.readouterr().out
    more = json.loads((tmp_path / "more.json").read_text())["info"]["distill"]
    assert more["continued_from"]["head"] == "u2_distilled_head.safetensors"
    assert more["continued_from"]["error"] == info["error_after"]  # the same held-out states and noise
    assert more["continued_from"]["distill"]["iters"] == 3 and more["error_before"] == info["error_before"]


def test_distill_command_refuses_a_schedule_of_another_model(tmp_path, checkpoint):  # noqa: F811
    CacheSchedule("uniform", 20, 4, 128, {(0, "attn"): [0, 10]}, 2).save(tmp_path / "bad.json")
    torch.save(conditions(4, 0), tmp_path / "states.pt")
    with pytest.raises(ValueError, match="denoising steps 20 != model's 10"):
        main(["distill-cache", f"ckpt={checkpoint}", f"schedule={tmp_path / 'bad.json'}",
              f"conditions={tmp_path / 'states.pt'}", "iters=1"])


def test_a_schedule_saved_elsewhere_still_finds_its_head(tmp_path):
    (tmp_path / "ckpt").mkdir()
    save_tensors({"w": torch.zeros(2)}, tmp_path / "ckpt" / "h.safetensors")
    schedule = coarse_schedule()
    schedule.head = "h.safetensors"
    schedule.save(tmp_path / "ckpt" / "s.json")
    loaded = CacheSchedule.load(tmp_path / "ckpt" / "s.json")
    (tmp_path / "runs" / "bac").mkdir(parents=True)
    loaded.save(tmp_path / "runs" / "bac" / "schedule.json")  # as bench/cache_speed.py does for its eval runs
    moved = CacheSchedule.load(tmp_path / "runs" / "bac" / "schedule.json")
    assert moved.head == "../../ckpt/h.safetensors"
    assert moved.head_path().resolve() == (tmp_path / "ckpt" / "h.safetensors").resolve()
    assert moved.steps == schedule.steps
