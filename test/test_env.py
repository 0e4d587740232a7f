"""Tests for sim.env.PlayTableEnv: exact resets, relative/absolute control, gripper, rendering."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from sim import snapshot as S
from sim.env import SEGMENT_NAMES, PlayTableEnv
from sim.snapshot import Snapshot
from sim.state_sampler import default_robot_obs

STILL_OPEN = np.r_[np.zeros(6), 1.0]


@pytest.fixture(scope="module")
def env() -> PlayTableEnv:
    e = PlayTableEnv("D", render=False)
    yield e
    e.close()


def given_scene() -> np.ndarray:
    scene = np.zeros(24)
    scene[:6] = [0.2, 0.1, 0.0, 0.07, 1, 0]  # slider, drawer, button, switch, lightbulb, led
    scene[S.BLOCK_SLICES["block_red"]] = [0.05, -0.12, 0.46, 0, 0, 1.6]
    scene[S.BLOCK_SLICES["block_blue"]] = [0.07034, 0.0924, 0.46, 0, 0, -0.4]
    scene[S.BLOCK_SLICES["block_pink"]] = [0.23, -0.12, 0.46, 0, 0, 2.0]
    return scene


def orientation_change(euler_a: np.ndarray, euler_b: np.ndarray) -> float:
    return (Rotation.from_euler("xyz", euler_a) * Rotation.from_euler("xyz", euler_b).inv()).magnitude()


def test_spaces_and_bad_action_type():
    e = PlayTableEnv("D", render=False)
    assert e.action_space.shape == (7,)
    assert e.observation_space["robot_obs"].shape == (15,)
    assert e.observation_space["scene_obs"].shape == (24,)
    with pytest.raises(ValueError, match="action_type"):
        PlayTableEnv("D", action_type="joint", render=False)
    with pytest.raises(ValueError, match="not one of"):
        PlayTableEnv("E", render=False)


def test_reset_with_options_sets_the_exact_state(env):
    robot, scene = default_robot_obs(), given_scene()
    obs, info = env.reset(options={"robot_obs": robot, "scene_obs": scene})
    assert set(obs) == {"robot_obs", "scene_obs"}
    np.testing.assert_allclose(obs["robot_obs"], robot, atol=1e-5)  # tcp fields are recomputed by FK
    np.testing.assert_allclose(obs["robot_obs"][6:], robot[6:], atol=1e-6)
    np.testing.assert_allclose(obs["scene_obs"], scene, atol=1e-6)
    assert isinstance(info["snapshot"], Snapshot)
    np.testing.assert_allclose(env.target_pos, obs["robot_obs"][:3])  # the stored target is the real TCP


def test_reset_is_seeded(env):
    a, _ = env.reset(seed=3)
    b, _ = env.reset(seed=3)
    c, _ = env.reset(seed=4)
    np.testing.assert_array_equal(a["scene_obs"], b["scene_obs"])
    assert not np.allclose(a["scene_obs"], c["scene_obs"])
    np.testing.assert_allclose(a["robot_obs"], default_robot_obs(), atol=1e-5)


def test_relative_plus_x_moves_tcp_along_x_and_keeps_orientation(env):
    obs, _ = env.reset(options={"robot_obs": default_robot_obs(), "scene_obs": given_scene()})
    start = obs["robot_obs"]
    for _ in range(20):
        obs, reward, terminated, truncated, info = env.step(np.array([1.0, 0, 0, 0, 0, 0, 1.0]))
    end = obs["robot_obs"]
    assert end[0] - start[0] > 0.25  # 20 x 0.02 m commanded; tracking lags behind
    assert end[0] - start[0] < 0.42
    assert np.abs(end[1:3] - start[1:3]).max() < 0.02
    assert orientation_change(end[3:6], start[3:6]) < 0.05
    np.testing.assert_allclose(env.target_pos, start[:3] + [0.4, 0, 0], atol=1e-9)
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert isinstance(info["snapshot"], Snapshot)


def test_relative_rotation_turns_about_z(env):
    obs, _ = env.reset(options={"robot_obs": default_robot_obs(), "scene_obs": given_scene()})
    start = obs["robot_obs"]
    for _ in range(6):
        obs, *_ = env.step(np.array([0, 0, 0, 0, 0, 1.0, 1.0]))
    for _ in range(4):
        obs, *_ = env.step(STILL_OPEN)
    end = obs["robot_obs"]
    assert orientation_change(end[3:6], start[3:6]) == pytest.approx(0.3, abs=0.05)
    assert np.linalg.norm(end[:3] - start[:3]) < 0.01


def test_absolute_action_reaches_target():
    e = PlayTableEnv("D", action_type="abs", render=False)
    obs, _ = e.reset(options={"robot_obs": default_robot_obs(), "scene_obs": given_scene()})
    start = obs["robot_obs"]
    target = np.r_[start[:3] + [0.08, 0.05, -0.1], start[3:6] + [0, 0, 0.3], 1.0]
    for _ in range(30):
        obs, *_ = e.step(target)
    end = obs["robot_obs"]
    assert np.linalg.norm(end[:3] - target[:3]) < 0.005
    assert orientation_change(end[3:6], target[3:6]) < 0.02


def test_gripper_closes_on_minus_one_and_opens_on_plus_one(env):
    obs, _ = env.reset(options={"robot_obs": default_robot_obs(), "scene_obs": given_scene()})
    assert obs["robot_obs"][6] == pytest.approx(0.08, abs=1e-3)
    for _ in range(10):
        obs, *_ = env.step(np.r_[np.zeros(6), -1.0])
    assert obs["robot_obs"][6] < 0.005
    assert obs["robot_obs"][14] == -1.0
    for _ in range(10):
        obs, *_ = env.step(STILL_OPEN)
    assert obs["robot_obs"][6] == pytest.approx(0.08, abs=3e-3)
    assert obs["robot_obs"][14] == 1.0


@pytest.mark.parametrize(
    ("action", "match"),
    [(np.zeros(6), r"shape \(7,\)"), (np.r_[np.zeros(6), np.nan], "non-finite"), (np.zeros((2, 7)), "shape")],
)
def test_bad_action_raises_and_leaves_state_alone(env, action, match):
    obs, _ = env.reset(options={"robot_obs": default_robot_obs(), "scene_obs": given_scene()})
    with pytest.raises(ValueError, match=match):
        env.step(action)
    np.testing.assert_array_equal(env.physics.robot_obs(), obs["robot_obs"])
    np.testing.assert_allclose(env.target_pos, obs["robot_obs"][:3])


def test_render_is_refused_without_cameras(env):
    with pytest.raises(RuntimeError, match="render"):
        env.render()


def test_rendered_observations_and_views():
    e = PlayTableEnv("D", render=True, segmentation=True)
    obs, _ = e.reset(options={"robot_obs": default_robot_obs(), "scene_obs": given_scene()})
    assert obs["rgb_static"].shape == (200, 200, 3) and obs["rgb_static"].dtype == np.uint8
    assert obs["rgb_gripper"].shape == (84, 84, 3) and obs["rgb_gripper"].dtype == np.uint8
    for name, shape in (("depth_static", (200, 200)), ("depth_gripper", (84, 84))):
        depth = obs[name]
        assert depth.shape == shape and depth.dtype == np.float32
        assert np.all(depth > 0) and np.all(np.isfinite(depth))
    assert obs["rgb_static"].std() > 5  # a picture, not a blank frame
    # the static camera sees all three blocks; the gripper camera looks down at the table
    seg = obs["seg_static"]
    for block in S.BLOCKS:
        assert (seg == SEGMENT_NAMES.index(block)).sum() > 5
    assert np.median(obs["depth_gripper"]) < 0.8
    obs, *_ = e.step(STILL_OPEN)
    assert obs["rgb_static"].shape == (200, 200, 3)
    assert e.render("static", 320).shape == (320, 320, 3)
    assert e.render("gripper", 128).shape == (128, 128, 3)
    e.close()
    e.close()  # closing twice is fine
