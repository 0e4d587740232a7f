"""``dream-policy train`` end to end on a tiny synthetic CALVIN-layout data set: it trains the tiny
model, writes checkpoints, metrics and the plot, and resumes from its latest checkpoint."""

from __future__ import annotations

import csv

import pytest
import torch
from test_data_loader import make_split

from dream_policy.checkpoint import load_config, load_normalization, load_tensors, load_weights
from dream_policy.cli import main
from dream_policy.data.normalization import Normalizer
from dream_policy.model import DreamVLA, load_model_config
from dream_policy.train_command import initial_model


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


@pytest.mark.slow
def test_init_fine_tunes_from_a_checkpoint(tmp_path):
    """init=: the new run starts from the checkpoint's EMA weights, with its model config (not the
    'model' group) and its normalisation (not the new data's statistics)."""
    data, new_data = tmp_path / "data", tmp_path / "new"
    make_split(data / "training")
    make_split(new_data / "training", seed=2)
    assert train(data, tmp_path / "base", 2, "model.dit.depth=1") == 0
    base = tmp_path / "base" / "checkpoints" / "step_00000002"
    # a vanishing learning rate: the fine-tuned weights stay the initial ones
    assert train(new_data, tmp_path / "ft", 2, f"init={base}", "trainer.lr=1e-12") == 0
    tuned = tmp_path / "ft" / "checkpoints" / "step_00000002"
    assert load_config(tuned)["model_config"] == load_config(base)["model_config"]
    assert load_config(tuned)["model_config"]["dit"]["depth"] == 1
    assert load_normalization(tuned) == load_normalization(base)
    start, end = load_tensors(base, "ema.safetensors"), load_tensors(tuned, "model.safetensors")
    assert start.keys() == end.keys()
    for name in start:
        torch.testing.assert_close(end[name], start[name], atol=1e-8, rtol=0)
    # init_model: change a field of the checkpoint's model config; the enlarged latents keep the saved ones
    assert train(new_data, tmp_path / "grown", 2, f"init={base}", "+init_model.vision.num_latents=6",
                 "trainer.lr=1e-12") == 0
    grown = tmp_path / "grown" / "checkpoints" / "step_00000002"
    expected = load_config(base)["model_config"]
    expected["vision"]["num_latents"] = 6  # the other vision fields stay the checkpoint's
    assert load_config(grown)["model_config"] == expected
    end = load_tensors(grown, "model.safetensors")
    latents = "vision.encoders.shared.resampler.latents"
    assert end[latents].shape[0] == 6 and start[latents].shape[0] == 4
    torch.testing.assert_close(end[latents][:4], start[latents], atol=1e-8, rtol=0)
    for name in start.keys() - {latents}:
        torch.testing.assert_close(end[name], start[name], atol=1e-8, rtol=0)
    # a change that adds parameters (lang_film): they start from their (zero) initialisation, the rest is loaded
    network, _ = initial_model(base, {"lang_film": True})
    assert sorted(network.fresh) == ["film.bias", "film.weight"]
    assert not network.film.weight.any()
    torch.testing.assert_close(network.lang_proj.weight, start["lang_proj.weight"])
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        initial_model(tmp_path / "missing")


def test_train_without_data_is_a_usage_error(capsys):
    assert main(["train"]) == 2
    assert "needs a value for data" in capsys.readouterr().err


@pytest.mark.slow
def test_wrap_angles_upgrades_an_older_checkpoints_normalisation(tmp_path):
    """A checkpoint saved before angles were measured circularly keeps its normalisation when fine-tuned,
    unless wrap_angles=true: then its Euler angles take the new data's circular statistics, the rest stays."""
    import json

    data = tmp_path / "data"
    make_split(data / "training")
    assert train(data, tmp_path / "base", 2, "model.dit.depth=1") == 0
    base = tmp_path / "base" / "checkpoints" / "step_00000002"
    assert load_normalization(base)["angle_dims"] == [3, 4, 5]  # new runs measure angles circularly
    old = {**load_normalization(base), "obs_mean": [0.5] * 15, "obs_std": [2.0] * 15}
    del old["angle_dims"]  # as saved before
    (base / "normalization.json").write_text(json.dumps(old))
    assert train(data, tmp_path / "kept", 2, f"init={base}", "trainer.lr=1e-12") == 0
    kept = load_normalization(tmp_path / "kept" / "checkpoints" / "step_00000002")
    assert kept["angle_dims"] == [] and kept["obs_mean"] == old["obs_mean"]
    assert train(data, tmp_path / "wrapped", 2, f"init={base}", "wrap_angles=true", "trainer.lr=1e-12") == 0
    wrapped = load_normalization(tmp_path / "wrapped" / "checkpoints" / "step_00000002")
    assert wrapped["angle_dims"] == [3, 4, 5]
    assert [wrapped["obs_mean"][d] for d in (0, 1, 2, *range(6, 15))] == [0.5] * 12
    assert all(wrapped["obs_mean"][d] != 0.5 and wrapped["obs_std"][d] != 2.0 for d in (3, 4, 5))
