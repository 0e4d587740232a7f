"""Tests for dream_policy.data.normalization: streaming statistics and the Normalizer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_data_loader import EPISODES, make_split

from dream_policy.data.features import FrameError
from dream_policy.data.normalization import (
    STATS_FILE,
    Normalizer,
    RunningStats,
    clip_actions,
    compute_statistics,
    load_or_compute_statistics,
    wrap_angle,
)
from sim.calvin_dataset import STATISTICS_FILE, frame_file


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_split(tmp_path_factory.mktemp("calvin") / "training", drop=("rgb_static", "depth_static"))


def all_values(root: Path, key: str, stride: int = 1) -> np.ndarray:
    ids = [i for s, e in EPISODES for i in range(s, e + 1)][::stride]
    return np.stack([np.load(frame_file(root, i))[key] for i in ids])


def test_running_stats_equal_numpy() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(5.0, 3.0, (1000, 4))
    stats = RunningStats(4)
    for part in np.split(data, [1, 7, 300, 301, 999]):
        stats.update(part)
    d = stats.to_dict()
    np.testing.assert_allclose(d["mean"], data.mean(0), rtol=1e-12)
    np.testing.assert_allclose(d["std"], data.std(0), rtol=1e-12)
    assert d["min"] == data.min(0).tolist() and d["max"] == data.max(0).tolist() and d["count"] == 1000
    with pytest.raises(ValueError, match="no frames"):
        RunningStats(2).to_dict()


@pytest.mark.parametrize("stride", [1, 3])
def test_split_statistics_equal_numpy(split: Path, stride: int) -> None:
    stats = compute_statistics(split, stride=stride, batch=7)  # batches smaller than an episode
    for key in ("robot_obs", "rel_actions"):
        values = all_values(split, key, stride)
        np.testing.assert_allclose(stats[key]["mean"], values.mean(0), rtol=1e-10)
        np.testing.assert_allclose(stats[key]["std"], values.std(0), rtol=1e-10)
        assert stats[key]["min"] == values.min(0).tolist() and stats[key]["max"] == values.max(0).tolist()
        assert stats[key]["count"] == len(values) and stats[key]["stride"] == stride


def test_statistics_are_saved_beside_the_split_and_reused(tmp_path: Path) -> None:
    root = make_split(tmp_path / "training", drop=("rgb_static", "depth_static"))
    (root / STATISTICS_FILE).write_text(yaml.safe_dump({"robot_obs": {"mean": [0.0] * 15, "std": [1.0] * 15}}))
    stats = load_or_compute_statistics(root)  # the collector's yaml lacks min/max: computed
    saved = json.loads((root / STATS_FILE).read_text())
    assert saved == stats and stats["robot_obs"]["count"] == sum(e - s + 1 for s, e in EPISODES)
    saved["robot_obs"]["mean"] = [9.0] * 15
    (root / STATS_FILE).write_text(json.dumps(saved))
    assert load_or_compute_statistics(root)["robot_obs"]["mean"] == [9.0] * 15  # read, not recomputed
    elsewhere = tmp_path / "ckpt_stats.json"
    assert load_or_compute_statistics(root, elsewhere, stride=2)["rel_actions"]["stride"] == 2
    assert elsewhere.is_file()


def test_complete_statistics_yaml_is_reused(tmp_path: Path) -> None:
    root = make_split(tmp_path / "training", drop=("rgb_static", "depth_static"))
    entry = {"mean": [0.5] * 15, "std": [2.0] * 15, "min": [-1.0] * 15, "max": [1.0] * 15}
    action = {"mean": [0.0] * 7, "std": [1.0] * 7, "min": [-1.0] * 7, "max": [1.0] * 7}
    (root / STATISTICS_FILE).write_text(yaml.safe_dump({"robot_obs": entry, "rel_actions": action}))
    assert load_or_compute_statistics(root)["robot_obs"] == entry
    (root / STATS_FILE).write_text(json.dumps({"robot_obs": entry}))
    with pytest.raises(ValueError, match=f"{STATS_FILE}: expected mean/std/min/max"):
        load_or_compute_statistics(root)


def test_statistics_name_a_bad_frame(tmp_path: Path) -> None:
    root = make_split(tmp_path / "training", drop=("rgb_static", "depth_static"))
    path = frame_file(root, 60)
    np.savez(path, robot_obs=np.zeros(14), rel_actions=np.zeros(7))
    with pytest.raises(FrameError, match=rf"{re.escape(str(path))}: key 'robot_obs' .*\(15,\)"):
        compute_statistics(root)


def test_normalizer_round_trip(split: Path) -> None:
    norm = Normalizer.from_statistics(compute_statistics(split))
    assert norm.angle_dims == (3, 4, 5)
    obs = all_values(split, "robot_obs")
    z = norm.normalize_obs(obs)
    linear = [d for d in range(15) if d not in norm.angle_dims]
    np.testing.assert_allclose(z[:, linear].mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(z[:, linear].std(0), 1, rtol=1e-9)
    assert np.all(np.abs(z[:, 3:6] * norm.obs_std[3:6]) <= np.pi)  # wrapped difference from the circular mean
    np.testing.assert_allclose(norm.unnormalize_obs(z), obs, rtol=1e-12)
    tensor = torch.from_numpy(obs).float()
    back = norm.unnormalize_obs(norm.normalize_obs(tensor))
    assert back.dtype == torch.float32 and torch.allclose(back, tensor, atol=1e-5)
    restored = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    np.testing.assert_array_equal(restored.normalize_obs(obs), z)
    with pytest.raises(KeyError, match="obs_std"):
        Normalizer.from_dict({"obs_mean": [0.0], "min_std": 1e-4})


def test_constant_dimensions_are_only_centred() -> None:
    norm = Normalizer(np.array([1.0, 2.0]), np.array([0.0, 4.0]))
    np.testing.assert_allclose(norm.normalize_obs(np.array([3.0, 6.0])), [2.0, 1.0])


def test_actions_are_clipped_and_the_gripper_is_binary() -> None:
    norm = Normalizer(np.zeros(15), np.ones(15))
    a = np.array([[0.5, -2.0, 1.5, 0.0, 0.2, -0.3, 0.3], [0, 0, 0, 0, 0, 0, -0.2]])
    want = np.array([[0.5, -1.0, 1.0, 0.0, 0.2, -0.3, 1.0], [0, 0, 0, 0, 0, 0, -1.0]])
    np.testing.assert_array_equal(norm.normalize_actions(a), want)
    np.testing.assert_array_equal(norm.unnormalize_actions(torch.from_numpy(a)).numpy(), want)
    assert a[0, 1] == -2.0  # the input is not modified
    calvin = np.array([0.3, -0.9, 1.0, -1.0, 0.0, 0.7, -1.0])  # dataset actions pass unchanged
    np.testing.assert_array_equal(clip_actions(calvin), calvin)


def test_actions_outside_the_calvin_range_warn() -> None:
    stats = {"robot_obs": {"mean": [0.0], "std": [1.0]},
             "rel_actions": {"min": [-1.0, -3.0], "max": [1.0, 0.5]}}
    with pytest.warns(UserWarning, match=r"rel_actions dims \[1\] exceed"):
        Normalizer.from_statistics(stats)


def gripper_down_rolls(n: int = 4000, spread: float = 0.05, seed: int = 0) -> np.ndarray:
    """(n, 15) proprio whose roll sits at the wrap, as a gripper pointing down does (+3.13, -3.14, ...)."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, 15))
    obs[:, 3] = wrap_angle(np.pi + rng.normal(0, spread, n))
    obs[:, 4] = rng.normal(0.0, 0.1, n)
    obs[:, 5] = wrap_angle(1.5 + rng.normal(0, 0.2, n))
    return obs


def test_circular_statistics_of_a_roll_at_the_wrap() -> None:
    obs = gripper_down_rolls()
    stats = RunningStats(15, angle_dims=(3, 4, 5))
    for batch in np.array_split(obs, 7):  # merged batch by batch like the streaming pass
        stats.update(batch)
    d = stats.to_dict()
    assert d["angle_dims"] == [3, 4, 5]
    assert abs(wrap_angle(d["circ_mean"][0] - np.pi)) < 0.005 and abs(d["circ_std"][0] - 0.05) < 0.005
    assert abs(d["circ_mean"][2] - 1.5) < 0.01 and abs(d["circ_std"][2] - 0.2) < 0.01
    assert d["std"][3] > 2.5  # the linear std sees two clusters at +-pi
    with pytest.raises(ValueError, match="angle_dims"):
        RunningStats(4, angle_dims=(4,))


def test_a_turn_across_the_wrap_is_a_small_change_of_the_input() -> None:
    obs = gripper_down_rolls()
    stats = RunningStats(15, angle_dims=(3, 4, 5))
    stats.update(obs)
    circular = Normalizer.from_statistics({"robot_obs": stats.to_dict()})
    plain = {k: v for k, v in stats.to_dict().items() if not k.startswith(("circ", "angle"))}
    linear = Normalizer.from_statistics({"robot_obs": plain})  # statistics without the circular ones
    assert linear.angle_dims == ()
    a, b = np.zeros(15), np.zeros(15)
    a[3], b[3] = np.pi - 0.01, -np.pi + 0.01  # 0.02 rad apart, on both sides of the wrap
    assert abs(circular.normalize_obs(a)[3] - circular.normalize_obs(b)[3]) < 0.5  # 0.02 / 0.05
    assert abs(linear.normalize_obs(a)[3] - linear.normalize_obs(b)[3]) > 1.5  # 2 pi / ~3
    t = torch.from_numpy(np.stack([a, b]))  # torch inputs take the same path
    np.testing.assert_allclose(circular.normalize_obs(t).numpy(), circular.normalize_obs(np.stack([a, b])))
    z = circular.normalize_obs(obs)
    assert abs(z[:, 3].mean()) < 0.05 and abs(z[:, 3].std() - 1) < 0.05
    np.testing.assert_allclose(circular.unnormalize_obs(z), obs, atol=1e-9)


def test_saved_normalisers_without_angles_stay_linear_and_can_be_upgraded() -> None:
    obs = gripper_down_rolls()
    stats = RunningStats(15, angle_dims=(3, 4, 5))
    stats.update(obs)
    old = Normalizer(np.asarray(stats.to_dict()["mean"]), np.asarray(stats.to_dict()["std"]))
    saved = old.to_dict()
    del saved["angle_dims"]  # as checkpoints saved before angles were wrapped
    restored = Normalizer.from_dict(saved)
    assert restored.angle_dims == ()
    np.testing.assert_array_equal(restored.normalize_obs(obs), (obs - old.obs_mean) / old.obs_std)
    upgraded = restored.with_angles({"robot_obs": stats.to_dict()})
    assert upgraded.angle_dims == (3, 4, 5)
    keep = [0, 1, 2, *range(6, 15)]
    np.testing.assert_array_equal(upgraded.normalize_obs(obs)[:, keep], restored.normalize_obs(obs)[:, keep])
    assert upgraded.normalize_obs(obs)[:, 3].std() < 1.5  # no longer two clusters
    with pytest.raises(ValueError, match="circ_mean"):
        restored.with_angles({"robot_obs": {"mean": [0.0] * 15}})
    with pytest.raises(ValueError, match="angle_dims"):
        Normalizer(np.zeros(3), np.ones(3), angle_dims=(3,))


def test_statistics_saved_before_the_angles_were_kept_are_recomputed(tmp_path: Path) -> None:
    root = make_split(tmp_path / "training", drop=("rgb_static", "depth_static"))
    stats = load_or_compute_statistics(root)
    for key in ("circ_mean", "circ_std", "angle_dims"):
        del stats["robot_obs"][key]
    (root / STATS_FILE).write_text(json.dumps(stats))
    with pytest.warns(UserWarning, match="predates the circular statistics"):
        again = load_or_compute_statistics(root)
    assert len(again["robot_obs"]["circ_mean"]) == 3
    assert "circ_mean" in json.loads((root / STATS_FILE).read_text())["robot_obs"]
