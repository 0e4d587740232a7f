"""Tests for dream_policy.trainer and dream_policy.schedule with a toy regression model.

The toy model, datasets and ``toy_config`` are imported by test_checkpoint.py and test_ddp.py too.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, IterableDataset

from dream_policy.checkpoint import (
    CONFIG,
    EMA_WEIGHTS,
    NORMALIZATION,
    TRAINER_STATE,
    WEIGHTS,
    load_config,
    load_normalization,
    load_tensors,
    load_trainer_state,
)
from dream_policy.schedule import lr_at
from dream_policy.trainer import EMA, NonFiniteLossError, Trainer, TrainerConfig, param_groups

# ---- toys --------------------------------------------------------------------------------------


def toy_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n, 4), y = x @ w + sin(x0), the same function for every seed."""
    x = torch.from_numpy(np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32))
    w = torch.tensor([1.0, -2.0, 0.5, 3.0])
    return x, x @ w + torch.sin(x[:, 0])


class ToyRegressor(nn.Module):
    """MLP regression; input noise in training draws from the global RNG, so resume must restore it.
    ``nan_at``: the training forward call with this (1-based) number returns a NaN loss."""

    def __init__(self, hidden: int = 16, nan_at: int | None = None) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.LayerNorm(hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.nan_at, self.calls = nan_at, 0

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        x = batch["x"]
        if self.training:
            self.calls += 1
            x = x + 0.05 * torch.randn_like(x)
        pred = self.net(x).squeeze(-1)  # (B,)
        loss = F.mse_loss(pred, batch["y"])
        if self.training and self.calls == self.nan_at:
            loss = loss * float("nan")
        return loss, {"mae": (pred - batch["y"]).abs().mean().detach()}


class ToyStream(IterableDataset):
    """Samples in a per-(seed, epoch) shuffled order, sharded by rank; records set_epoch/set_rank calls."""

    def __init__(self, n: int = 64, seed: int = 0) -> None:
        self.x, self.y = toy_data(n, seed)
        self.seed, self.epoch, self.rank, self.world_size = seed, 0, 0, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_rank(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = np.random.default_rng((self.seed, self.epoch)).permutation(len(self.x))
        per_rank = len(order) // self.world_size
        for i in order[self.rank * per_rank:(self.rank + 1) * per_rank]:
            yield {"x": self.x[i], "y": self.y[i]}


class ToyMap(Dataset):
    def __init__(self, n: int = 32, seed: int = 1) -> None:
        self.x, self.y = toy_data(n, seed)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


def toy_config(out_dir: Path, **changes: Any) -> TrainerConfig:
    values: dict[str, Any] = {
        "out_dir": str(out_dir), "lr": 5e-2, "weight_decay": 0.01, "warmup_steps": 5, "total_steps": 40,
        "min_lr_ratio": 0.1, "grad_clip": 1.0, "ema_decay": 0.9, "batch_size": 8, "eval_every": 10,
        "save_every": 10, "log_every": 1, "keep_last": 2, "seed": 0}
    return TrainerConfig(**{**values, **changes})


def toy_trainer(out_dir: Path, model_seed: int = 0, train: Dataset | None = None, model: nn.Module | None = None,
                resume: str | None = None, **changes: Any) -> Trainer:
    torch.manual_seed(model_seed)
    return Trainer(model or ToyRegressor(), train if train is not None else ToyStream(), ToyMap(),
                   toy_config(out_dir, **changes), normalization={"mean": [0.0], "std": [1.0]}, resume=resume)


def losses(out_dir: Path, split: str = "train") -> dict[int, str]:
    """step -> loss as written (repr of the float, so equal strings mean equal floats)."""
    with (Path(out_dir) / "metrics.csv").open() as f:
        return {int(r["step"]): r["value"] for r in csv.DictReader(f) if r["split"] == split and r["metric"] == "loss"}


# ---- schedule ----------------------------------------------------------------------------------


def test_lr_at_key_points() -> None:
    base, warmup, total = 1.0, 10, 110
    assert lr_at(0, base, warmup, total, 0.1) == pytest.approx(0.1)
    assert lr_at(4, base, warmup, total, 0.1) == pytest.approx(0.5)
    assert lr_at(9, base, warmup, total, 0.1) == pytest.approx(1.0)
    assert lr_at(10, base, warmup, total, 0.1) == pytest.approx(1.0)
    assert lr_at(60, base, warmup, total, 0.1) == pytest.approx(0.55)  # half-way: (1 + min) / 2
    assert lr_at(110, base, warmup, total, 0.1) == pytest.approx(0.1)
    assert lr_at(500, base, warmup, total, 0.1) == pytest.approx(0.1)
    assert lr_at(0, 2.0, 0, 100) == pytest.approx(2.0)
    lrs = [lr_at(s, base, warmup, total, 0.0) for s in range(warmup, total + 1)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    assert lr_at(35, base, warmup, total) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


@pytest.mark.parametrize("args", [(-1, 1.0, 0, 10), (0, 1.0, 20, 10), (0, 1.0, -1, 10)])
def test_lr_at_rejects_bad_input(args: tuple) -> None:
    with pytest.raises(ValueError):
        lr_at(*args)


# ---- config and pieces -------------------------------------------------------------------------


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"lr=-1.*precision='fp16'"):
        TrainerConfig(lr=-1, precision="fp16")
    with pytest.raises(ValueError, match="warmup_steps=50"):
        TrainerConfig(warmup_steps=50, total_steps=10)
    with pytest.raises(ValueError, match=r"unknown TrainerConfig key\(s\) \['lrr'\]"):
        TrainerConfig.from_dict({"lrr": 1.0})
    assert TrainerConfig.from_dict({"betas": [0.9, 0.99]}).betas == (0.9, 0.99)


def test_param_groups_exempt_biases_norms_embeddings() -> None:
    model = nn.ModuleDict({"emb": nn.Embedding(5, 3), "lin": nn.Linear(3, 3), "norm": nn.LayerNorm(3)})
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model["lin"].weight)}
    assert len(no_decay["params"]) == 4  # embedding, linear bias, norm weight and bias


def test_ema_tracks_and_swaps_weights() -> None:
    model = nn.Linear(2, 1)
    ema = EMA(model, decay=0.5)
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # decay min(0.5, 2/11)
    assert torch.allclose(ema.shadow["weight"], before + 9 / 11)
    with ema.applied(model):
        assert torch.equal(model.weight, ema.shadow["weight"])
    assert torch.equal(model.weight, before + 1.0)


def test_bf16_on_cpu_falls_back_to_fp32_with_a_note(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="bf16.*CPU.*fp32"):
        toy_trainer(tmp_path, precision="bf16")


# ---- training ----------------------------------------------------------------------------------


def test_fit_learns_and_writes_everything(tmp_path: Path) -> None:
    trainer = toy_trainer(tmp_path)
    metrics = trainer.fit()
    train = [float(v) for v in losses(tmp_path).values()]
    assert len(train) == 40 and np.mean(train[-5:]) < 0.5 * np.mean(train[:5])
    assert sorted(losses(tmp_path, "val")) == [10, 20, 30, 40]
    assert {"loss", "lr", "grad_norm", "mae"} <= metrics.keys()
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000030", "step_00000040"]  # keep_last 2
    assert (ckpts / "latest").read_text() == "step_00000040"
    last = ckpts / "step_00000040"
    assert sorted(p.name for p in last.iterdir()) == sorted([WEIGHTS, EMA_WEIGHTS, CONFIG, NORMALIZATION,
                                                             TRAINER_STATE])
    assert load_config(last)["trainer"]["lr"] == 5e-2
    assert load_normalization(last) == {"mean": [0.0], "std": [1.0]}
    state = load_trainer_state(last)
    assert state["global_step"] == 40 and state["epoch"] == 4 and state["batches_in_epoch"] == 8
    assert {"python", "numpy", "torch"} <= state["rng"][0].keys()


def test_validation_uses_ema_weights(tmp_path: Path) -> None:
    trainer = toy_trainer(tmp_path, total_steps=15, save_every=0, eval_every=0)
    trainer.fit()
    raw = load_tensors(trainer.last_checkpoint, WEIGHTS)
    ema = load_tensors(trainer.last_checkpoint, EMA_WEIGHTS)
    assert not torch.equal(raw["net.0.weight"], ema["net.0.weight"])

    def val_loss(weights: dict[str, torch.Tensor]) -> float:
        model = ToyRegressor().eval()
        model.load_state_dict(weights)
        x, y = ToyMap().x, ToyMap().y
        with torch.no_grad():
            return np.mean([model({"x": x[i:i + 8], "y": y[i:i + 8]})[0].item() for i in range(0, 32, 8)])

    reported = trainer.evaluate()["loss"]
    assert reported == pytest.approx(val_loss(ema), rel=1e-6)
    assert reported != pytest.approx(val_loss(raw), rel=1e-3)
    assert torch.equal(trainer.module.state_dict()["net.0.weight"], raw["net.0.weight"])  # swapped back


@pytest.mark.parametrize(("dataset", "stop"), [(ToyStream, 20), (ToyMap, 23)])
def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path, dataset: type, stop: int) -> None:
    toy_trainer(tmp_path / "a", train=dataset()).fit()
    toy_trainer(tmp_path / "b", train=dataset()).fit(until_step=stop)
    assert max(losses(tmp_path / "b")) == stop
    resumed = toy_trainer(tmp_path / "b", model_seed=123, train=dataset(), resume="latest")
    assert resumed.global_step == stop
    resumed.fit()
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert len(b) == 40 and b == a  # every step's loss, bit for bit
    assert losses(tmp_path / "b", "val") == losses(tmp_path / "a", "val")
    for name in (WEIGHTS, EMA_WEIGHTS):
        wa = load_tensors(tmp_path / "a/checkpoints/step_00000040", name)
        wb = load_tensors(tmp_path / "b/checkpoints/step_00000040", name)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_nan_loss_stops_naming_the_step_and_saves_nothing(tmp_path: Path) -> None:
    trainer = toy_trainer(tmp_path, model=ToyRegressor(nan_at=8), save_every=5, eval_every=0)
    with pytest.raises(NonFiniteLossError, match=r"at step 8 .*step_00000005"):
        trainer.fit()
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000005"]
    assert (ckpts / "latest").read_text() == "step_00000005"
    assert max(losses(tmp_path)) == 7


def test_time_limit_stops_saves_and_validates(tmp_path: Path) -> None:
    trainer = toy_trainer(tmp_path, time_limit_min=1.0)
    clock = iter(range(0, 10_000, 7))  # each reading is 7 s later: the 1-minute limit passes at step 9
    trainer.clock = lambda: float(next(clock))
    metrics = trainer.fit()
    assert trainer.global_step == 9
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_00000009"
    assert "val_loss" in metrics and 9 in losses(tmp_path, "val")
    with pytest.raises(ValueError, match="time_limit_min=0"):
        TrainerConfig(time_limit_min=0)


def test_a_compiled_forward_trains_like_the_eager_one(tmp_path: Path) -> None:
    """trainer.compile (aot_eager here: the capture and autograd of the compiled path, without a C++
    toolchain) follows the eager run's loss curve and saves the plain module's weights."""
    eager = toy_trainer(tmp_path / "eager", total_steps=6, eval_every=0, save_every=0)
    eager.fit()
    compiled = toy_trainer(tmp_path / "compiled", total_steps=6, eval_every=0, save_every=0,
                           compile="default", compile_backend="aot_eager")
    compiled.fit()
    a, b = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert all(abs(float(a[s]) - float(b[s])) <= 1e-5 * max(1.0, abs(float(a[s]))) for s in a)
    saved = load_tensors(compiled.last_checkpoint / "model.safetensors")
    assert not any(k.startswith("_orig_mod") for k in saved)


def test_an_unknown_compile_mode_is_named() -> None:
    with pytest.raises(ValueError, match="compile='fast'"):
        TrainerConfig(compile="fast")
