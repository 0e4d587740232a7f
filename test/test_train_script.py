"""scripts/train_shipped.sh, the recipe the GPU runs use (collect -> pack -> train), and
scripts/train_variants.sh (both kinds of start, variants side by side), end to end at toy size on the CPU: the
model and training options they are given reach the checkpoints, and the runtime loads them."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).parents[1]


@pytest.mark.slow
def test_recipe_collects_packs_and_trains_the_requested_model(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"),
               DATA=str(tmp_path / "data"), EPISODE_LEN="200", WORKERS="2", STEPS="4", BATCH="4",
               MODEL="tiny_pool", WINDOW="160", LABEL="attempt",
               EXTRA="model.block_weight=0.1 pad_history=true start_repeat=2 start_frames=5 trainer.eval_every=4")
    run = tmp_path / "run"
    done = subprocess.run(["bash", "scripts/train_shipped.sh", str(run), "2", "2"], check=False, cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "training 4 steps" in done.stdout
    assert (tmp_path / "data_packed" / "training" / "packed.json").is_file()

    checkpoint = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    config = yaml.safe_load((checkpoint / "config.yaml").read_text())
    model = config["model_config"]
    assert model["vision"]["readout"] == "pool" and model["block_weight"] == 0.1
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert max(int(r["step"]) for r in rows) == 4
    metrics = {(r["split"], r["metric"]) for r in rows}
    assert ("val", "block") in metrics  # the named-block head is trained and validated

    from dream_policy.runtime import DreamPolicy
    from sim.language import precomputed
    policy = DreamPolicy.from_checkpoint(checkpoint, "cpu")
    assert policy.model.config.vision.readout == "pool"
    rng = np.random.default_rng(0)
    sentence = next(s for s in precomputed() if "drawer" in s)
    for _ in range(3):
        action = policy.step({"rgb_static": rng.integers(0, 255, (200, 200, 3), dtype=np.uint8),
                              "rgb_gripper": rng.integers(0, 255, (84, 84, 3), dtype=np.uint8),
                              "robot_obs": rng.normal(size=15)}, sentence)
        assert action.shape == (7,) and np.all(np.isfinite(action)) and action[6] in (-1.0, 1.0)


@pytest.mark.slow
def test_variants_train_side_by_side_on_data_from_both_kinds_of_start(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"),
               DATA=str(tmp_path / "data"), EPISODES="1", EPISODE_LEN="200", WORKERS="2", STEPS="3", BATCH="4")
    run = tmp_path / "run"
    done = subprocess.run(["bash", "scripts/train_variants.sh", str(run), "600", "base=model.lang_query=0",
                           "query=trainer.seed=1"], check=False, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for kind in ("random", "calvin"):
        settings = json.loads((tmp_path / "data" / kind / ".episodes" / "settings.json").read_text())
        assert settings.get("starts", "random") == kind
        assert (tmp_path / "data" / f"{kind}_packed" / "training" / "packed.json").is_file()
    configs = {}
    for name in ("base", "query"):
        unpacked = tmp_path / name
        with tarfile.open(run / f"{name}.tar.gz") as tar:
            assert sorted(tar.getnames()) == ["config.yaml", "ema.safetensors", "metrics.csv", "normalization.json"]
            tar.extractall(unpacked, filter="data")
        configs[name] = yaml.safe_load((unpacked / "config.yaml").read_text())
        with open(unpacked / "metrics.csv") as f:
            assert max(int(r["step"]) for r in csv.DictReader(f)) == 3
    assert configs["base"]["model_config"]["lang_query"] == 0 and configs["query"]["model_config"]["lang_query"] == 4
    assert configs["query"]["trainer"]["seed"] == 1 and configs["base"]["pad_history"] is True  # EXTRA's recipe

    from dream_policy.runtime import DreamPolicy
    from sim.language import precomputed
    policy = DreamPolicy.from_checkpoint(tmp_path / "query", "cpu")
    assert policy.model.lang_query is not None
    rng = np.random.default_rng(0)
    sentence = next(s for s in precomputed() if "red block" in s)
    action = policy.step({"rgb_static": rng.integers(0, 255, (200, 200, 3), dtype=np.uint8),
                          "rgb_gripper": rng.integers(0, 255, (84, 84, 3), dtype=np.uint8),
                          "robot_obs": rng.normal(size=15)}, sentence)
    assert action.shape == (7,) and np.all(np.isfinite(action))
