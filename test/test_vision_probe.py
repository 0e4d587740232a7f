"""bench/vision_probe.py: the ridge probe recovers positions that are linear in the features and
knows nothing from noise; the feature stages have the encoder's shapes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from dream_policy.model import DreamVLA, load_model_config

spec = importlib.util.spec_from_file_location("vision_probe", Path(__file__).parents[1] / "bench" / "vision_probe.py")
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)


def test_ridge_probe_recovers_linear_positions_and_not_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 50))
    y = x @ rng.normal(size=(50, 9)) * 0.01  # positions linear in the features
    train, test = np.arange(300), np.arange(300, 400)
    assert probe.ridge_error(x, y, train, test).max() < 0.002
    noise = rng.normal(size=(400, 50))
    spread = np.linalg.norm((y[test] - y[train].mean(0)).reshape(-1, 3, 3), axis=-1).mean(0)
    assert (probe.ridge_error(noise, y, train, test) > 0.8 * spread).all()  # no better than the mean


def test_feature_stages_have_the_encoders_shapes():
    torch.manual_seed(0)
    cfg = load_model_config("tiny")
    model = DreamVLA(cfg).eval()
    images = np.random.default_rng(0).integers(0, 255, size=(3, 200, 200, 3), dtype=np.uint8)
    feats = probe.features(model, images, batch=2)
    v = cfg.vision
    assert feats["patches"].shape == (3, (v.image_size // v.patch) ** 2 * v.width)
    assert feats["resampled"].shape == (3, (v.num_latents + 1) * v.width)
    gripper = probe.features(model, images[:, :84, :84], view="gripper")  # resized to the same tokens
    assert gripper["patches"].shape == feats["patches"].shape


def test_gripper_targets_are_relative_to_the_tcp():
    scene = np.arange(24, dtype=np.float64)
    robot = np.zeros(15)
    robot[:3] = [1.0, 2.0, 3.0]
    static = probe.block_targets(scene, robot, "static")
    np.testing.assert_array_equal(static, np.r_[scene[6:9], scene[12:15], scene[18:21]])
    np.testing.assert_array_equal(probe.block_targets(scene, robot, "gripper"), static - np.tile([1.0, 2.0, 3.0], 3))


def test_near_subsets_keep_each_blocks_close_frames():
    y = np.zeros((6, 9))
    y[:, 0] = [0.05, 0.3, 0.1, 0.5, 0.02, 0.2]  # red's distance along x
    y[:, 3:6] = 1.0  # blue never near
    y[:, 6:9] = 0.01  # pink always near
    train, test = np.arange(4), np.arange(4, 6)
    (rf, rt, rc), (bf, bt, _), (pf, pt, pc) = probe.near_subsets(y, train, test, 0.15)
    assert rf.tolist() == [0, 2] and rt.tolist() == [4] and rc == slice(0, 3)
    assert len(bf) == 0 and len(bt) == 0
    assert pf.tolist() == train.tolist() and pt.tolist() == test.tolist() and pc == slice(6, 9)
