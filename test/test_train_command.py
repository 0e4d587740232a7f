"""``dream-policy train`` end to end on a tiny synthetic CALVIN-layout data set: it trains the tiny
model, writes checkpoints, metrics and the plot, and resumes from its latest checkpoint."""

from __future__ import annotations

import csv

import pytest
from test_data_loader import make_split

from dream_policy.checkpoint import load_normalization, load_weights
from dream_policy.cli import main
from dream_policy.data.normalization import Normalizer
from dream_policy.model import DreamVLA, load_model_config


def train(data, out, steps: int, *extra: str) -> int:
    return main(["train", f"data={data}", f"trainer.out_dir={out}", f"trainer.total_steps={steps}",
                 "trainer.warmup_steps=1", "trainer.batch_size=2", "trainer.eval_every=2",
                 "trainer.save_every=2", "trainer.log_every=1", "forecast_n=1", *extra])


@pytest.mark.slow
def test_train_writes_checkpoints_and_resumes(tmp_path):
    data = tmp_path / "data"
    make_split(data / "training")
    make_split(data / "validation", seed=1)
    out = tmp_path / "run"
    assert train(data, out, 2) == 0
    first = out / "checkpoints" / "step_00000002"
    assert (first / "model.safetensors").is_file() and (out / "loss.png").is_file()
    model = DreamVLA(load_model_config("tiny"))
    load_weights(first, model)  # the checkpoint holds exactly the tiny model's parameters
    normalizer = Normalizer.from_dict(load_normalization(first))  # saved beside the weights
    assert normalizer.to_dict() == load_normalization(first)
    assert train(data, out, 4, "resume=latest") == 0
    assert (out / "checkpoints" / "step_00000004").is_dir()
    with open(out / "metrics.csv") as f:
        steps = sorted({int(row["step"]) for row in csv.DictReader(f) if row["split"] == "train"})
    assert steps == [1, 2, 3, 4]


def test_train_without_data_is_a_usage_error(capsys):
    assert main(["train"]) == 2
    assert "needs a value for data" in capsys.readouterr().err
