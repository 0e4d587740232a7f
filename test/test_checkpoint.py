"""Tests for dream_policy.checkpoint: layout, latest/keep-last, atomic saves, clear load errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_trainer import losses, toy_trainer
from torch import nn

import dream_policy.checkpoint as ckpt
from dream_policy.checkpoint import (
    CheckpointError,
    checkpoint_folder,
    grow_tensor,
    latest_checkpoint,
    load_config,
    load_normalization,
    load_tensors,
    load_trainer_state,
    load_weights,
    resolve_checkpoint,
    save_checkpoint,
)


def _model(hidden: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 1))


def _save(root: Path, step: int, model: nn.Module, keep_last: int = 3) -> Path:
    return save_checkpoint(root, step, model.state_dict(), ema_state=model.state_dict(),
                           config={"trainer": {"lr": 0.1, "betas": (0.9, 0.95)}}, normalization={"std": [1.0]},
                           trainer_state={"global_step": step}, keep_last=keep_last)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = _model()
    path = _save(tmp_path, 7, model)
    assert path == tmp_path / "step_00000007" == latest_checkpoint(tmp_path) == resolve_checkpoint("latest", tmp_path)
    fresh = _model()
    nn.init.zeros_(fresh[0].weight)
    report = load_weights(path, fresh)
    assert not (report.missing or report.unexpected or report.mismatched)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    assert load_config(path) == {"trainer": {"lr": 0.1, "betas": [0.9, 0.95]}}
    assert load_normalization(path) == {"std": [1.0]}
    assert load_trainer_state(path) == {"global_step": 7}
    assert load_tensors(path, ckpt.EMA_WEIGHTS).keys() == model.state_dict().keys()


def test_keep_last_and_latest(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, _model(), keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000003", "step_00000004"]
    assert latest_checkpoint(tmp_path).name == "step_00000004"
    _save(tmp_path, 4, _model(hidden=5), keep_last=2)  # the same step again replaces it
    assert load_tensors(latest_checkpoint(tmp_path))["0.weight"].shape == (5, 2)


def test_checkpoint_folder_follows_the_latest_pointer_of_a_run(tmp_path: Path) -> None:
    root = tmp_path / "run" / "checkpoints"
    for step in (1, 2):
        _save(root, step, _model())
    newest = root / "step_00000002"
    assert checkpoint_folder(newest) == newest
    assert checkpoint_folder(root / "step_00000001") == root / "step_00000001"
    assert checkpoint_folder(root / "latest") == newest
    assert checkpoint_folder(root) == newest
    assert checkpoint_folder(tmp_path / "run") == newest
    assert checkpoint_folder(tmp_path / "nowhere") == tmp_path / "nowhere"  # the loader names what is missing
    assert checkpoint_folder(tmp_path) == tmp_path  # no pointer anywhere: left as given
    (root / "latest").write_text("step_00000009\n")
    with pytest.raises(CheckpointError, match="step_00000009"):
        checkpoint_folder(tmp_path / "run")


def test_nothing_saved_is_a_clear_error(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(CheckpointError, match="latest.*does not exist"):
        resolve_checkpoint("latest", tmp_path)
    with pytest.raises(CheckpointError, match="nowhere"):
        resolve_checkpoint(tmp_path / "nowhere", tmp_path)


@pytest.mark.parametrize("failing", ["save_file", "torch.save"])
def test_crash_during_save_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          failing: str) -> None:
    good = _save(tmp_path, 1, _model())

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    if failing == "save_file":
        monkeypatch.setattr(ckpt, "save_file", crash)
    else:
        monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, 2, _model(hidden=5))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000001"]  # no half-written folder
    assert latest_checkpoint(tmp_path) == good
    load_weights(resolve_checkpoint("latest", tmp_path), _model())


def test_killed_save_leftovers_are_ignored_and_cleaned(tmp_path: Path) -> None:
    _save(tmp_path, 1, _model())
    stale = tmp_path / ".tmp-step_00000002-dead"
    stale.mkdir()
    (stale / ckpt.WEIGHTS).write_bytes(b"half")
    assert latest_checkpoint(tmp_path).name == "step_00000001"
    _save(tmp_path, 2, _model())
    assert not stale.exists()


def test_trainer_crash_during_save_resumes_from_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real_save_file = ckpt.save_file

    def crash_second_checkpoint(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # the second checkpoint's model.safetensors (the first wrote model + ema)
            raise OSError("killed")
        real_save_file(*args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", crash_second_checkpoint)
    with pytest.raises(OSError, match="killed"):
        toy_trainer(tmp_path, total_steps=20, eval_every=0).fit()
    monkeypatch.undo()
    resumed = toy_trainer(tmp_path, total_steps=20, eval_every=0, resume="latest")
    assert resumed.global_step == 10
    resumed.fit()
    assert sorted(losses(tmp_path)) == list(range(1, 21))


def test_weight_mismatches_are_named(tmp_path: Path) -> None:
    path = _save(tmp_path, 1, _model(hidden=3))
    wider = _model(hidden=4)
    with pytest.raises(CheckpointError, match=r"shape mismatch for '0.weight': file \(3, 2\) vs model \(4, 2\)"):
        load_weights(path, wider)
    deeper = nn.Sequential(*_model(), nn.Linear(1, 1))
    with pytest.raises(CheckpointError, match=r"missing keys .*\['3.bias', '3.weight'\]"):
        load_weights(path, deeper)
    shallower = nn.Sequential(nn.Linear(2, 3))
    with pytest.raises(CheckpointError, match=r"unexpected keys .*\['2.bias', '2.weight'\]"):
        load_weights(path, shallower)
    report = load_weights(path, shallower, strict=False)
    assert report.unexpected == ["2.bias", "2.weight"]
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_weights(path, wider, strict=False)


def test_grow_tensor_keeps_the_saved_block() -> None:
    saved, initial = torch.arange(6.0).view(3, 2), torch.full((4, 3), -1.0)
    grown = grow_tensor(saved, initial)
    torch.testing.assert_close(grown[:3, :2], saved)
    assert (grown[3] == -1).all() and (grown[:, 2] == -1).all()
    assert (initial == -1).all()  # not modified in place
    assert grow_tensor(initial, saved) is None  # larger than the model's: cannot grow
    assert grow_tensor(saved, torch.zeros(3, 2, 1)) is None  # other number of dimensions


def test_grow_loads_a_smaller_checkpoint_into_a_wider_model(tmp_path: Path) -> None:
    narrow = _model(hidden=3)
    path = _save(tmp_path, 1, narrow)
    wider = _model(hidden=4)
    fresh_row = wider[0].weight[3].detach().clone()
    report = load_weights(path, wider, grow=True)
    assert [key for key, _, _ in report.grown] == ["0.weight", "0.bias", "2.weight"]
    assert "grown '0.weight': file (3, 2) -> model (4, 2)" in report.describe()
    torch.testing.assert_close(wider[0].weight[:3], narrow[0].weight)
    torch.testing.assert_close(wider[0].weight[3], fresh_row)  # the new row keeps its initialisation
    torch.testing.assert_close(wider[2].bias, narrow[2].bias)  # unchanged shapes load as usual
    with pytest.raises(CheckpointError, match=r"shape mismatch for '0.weight': file \(3, 2\) vs model \(2, 2\)"):
        load_weights(path, _model(hidden=2), grow=True)  # shrinking is still an error


@pytest.mark.parametrize("content", [b"not a safetensors file", b""])
def test_corrupt_or_missing_files_are_named(tmp_path: Path, content: bytes) -> None:
    path = _save(tmp_path, 1, _model())
    (path / ckpt.WEIGHTS).write_bytes(content)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        load_weights(path, _model())
    (path / ckpt.TRAINER_STATE).write_bytes(content)
    with pytest.raises(CheckpointError, match=r"trainer_state\.pt: unreadable trainer state"):
        load_trainer_state(path)
    (path / ckpt.NORMALIZATION).unlink()
    with pytest.raises(CheckpointError, match=r"normalization\.json does not exist"):
        load_normalization(path)
