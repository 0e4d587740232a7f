"""Tests for sim.controller: CALVIN's relative action rule, gripper rule, action checks, IK."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from sim.controller import (
    LOWER,
    ORN_SCALE,
    POS_SCALE,
    REST_JOINTS,
    UPPER,
    IKSolver,
    gripper_open,
    relative_to_target,
    validate_action,
)
from sim.physics import PlayTablePhysics
from sim.scene_config import SceneConfig


def test_scales_are_calvins():
    assert (POS_SCALE, ORN_SCALE) == (0.02, 0.05)


def test_relative_action_scales_and_adds_onto_target():
    pos, euler = np.array([0.1, -0.2, 0.5]), np.array([3.0, 0.0, 1.5])
    new_pos, new_euler = relative_to_target(pos, euler, np.array([0.5, -0.25, 1.0, 0.2, -1.0, 0.0, 1.0]))
    np.testing.assert_allclose(new_pos, pos + [0.01, -0.005, 0.02])
    np.testing.assert_allclose(new_euler, euler + [0.01, -0.05, 0.0])
    np.testing.assert_array_equal(pos, [0.1, -0.2, 0.5])  # inputs untouched


def test_relative_action_is_clipped_to_unit_range():
    pos, euler = np.zeros(3), np.zeros(3)
    new_pos, new_euler = relative_to_target(pos, euler, np.array([3.0, -7.0, 1.0, 2.0, -1.5, 0.5, -1.0]))
    np.testing.assert_allclose(new_pos, [0.02, -0.02, 0.02])
    np.testing.assert_allclose(new_euler, [0.05, -0.05, 0.025])


def test_relative_actions_accumulate():
    pos, euler = np.zeros(3), np.zeros(3)
    for _ in range(10):
        pos, euler = relative_to_target(pos, euler, np.array([1.0, 0, 0, 0, 0, -1.0, 1.0]))
    np.testing.assert_allclose(pos, [0.2, 0, 0])
    np.testing.assert_allclose(euler, [0, 0, -0.5])


@pytest.mark.parametrize(("g", "is_open"), [(1.0, True), (0.01, True), (0.0, False), (-1.0, False), (-0.3, False)])
def test_gripper_rule_positive_opens(g, is_open):
    assert gripper_open(np.r_[np.zeros(6), g]) is is_open


def test_validate_action_returns_float_array():
    out = validate_action([0, 0, 0, 0, 0, 0, 1])
    assert out.dtype == np.float64 and out.shape == (7,)
    assert validate_action(np.zeros(5), size=5).shape == (5,)


@pytest.mark.parametrize(
    ("action", "match"),
    [
        (np.zeros(6), r"shape \(7,\), got \(6,\)"),
        (np.zeros(8), r"shape \(7,\), got \(8,\)"),
        (np.zeros((1, 7)), r"shape \(7,\), got \(1, 7\)"),
        (np.r_[np.zeros(6), np.nan], "non-finite"),
        (np.r_[np.inf, np.zeros(6)], "non-finite"),
    ],
)
def test_validate_action_names_the_problem(action, match):
    with pytest.raises(ValueError, match=match) as err:
        validate_action(action)
    assert "action" in str(err.value)


# ---- inverse kinematics ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def physics() -> PlayTablePhysics:
    return PlayTablePhysics(SceneConfig(name="D", render=False))


@pytest.fixture(scope="module")
def ik(physics) -> IKSolver:
    return IKSolver(physics.model, physics.arm_qpos, physics.arm_dof, physics.tcp_site)


def fk(physics: PlayTablePhysics, q: np.ndarray) -> tuple[np.ndarray, Rotation]:
    data = mujoco.MjData(physics.model)
    data.qpos[physics.arm_qpos] = q
    mujoco.mj_kinematics(physics.model, data)
    return data.site_xpos[physics.tcp_site].copy(), Rotation.from_matrix(
        data.site_xmat[physics.tcp_site].reshape(3, 3))


@pytest.mark.parametrize(
    ("offset", "turn"),
    [((0.05, 0.03, -0.05), (0, 0, 0)), ((-0.04, 0.0, 0.04), (0, 0, 0.3)), ((0.0, -0.05, -0.1), (0.1, -0.1, 0))],
)
def test_ik_reaches_a_reachable_pose_from_neutral(physics, ik, offset, turn):
    pos0, rot0 = fk(physics, REST_JOINTS)
    target_pos = pos0 + np.array(offset)
    target_euler = rot0.as_euler("xyz") + np.array(turn)
    q = ik.solve(REST_JOINTS, target_pos, target_euler)
    pos, rot = fk(physics, q)
    assert np.linalg.norm(pos - target_pos) < 0.002
    angle = (Rotation.from_euler("xyz", target_euler) * rot.inv()).magnitude()
    assert angle < 0.01
    assert np.all(q >= LOWER) and np.all(q <= UPPER)


def test_ik_keeps_the_rest_pose_when_already_there(physics, ik):
    pos, rot = fk(physics, REST_JOINTS)
    q = ik.solve(REST_JOINTS, pos, rot.as_euler("xyz"))
    np.testing.assert_allclose(q, REST_JOINTS, atol=1e-3)


def test_ik_respects_joint_limits_for_an_unreachable_target(physics, ik):
    _, rot0 = fk(physics, REST_JOINTS)
    for target in ([2.0, 2.0, 2.0], [-1.5, 0.5, -0.5], [0.0, -0.2, 3.0]):
        q = ik.solve(REST_JOINTS, np.array(target), rot0.as_euler("xyz"))
        assert np.all(np.isfinite(q))
        assert np.all(q >= LOWER) and np.all(q <= UPPER)


def test_ik_does_not_disturb_the_simulation(physics, ik):
    qpos = physics.data.qpos.copy()
    pos0, rot0 = fk(physics, REST_JOINTS)
    q_start = REST_JOINTS.copy()
    ik.solve(q_start, pos0 + [0.1, 0, 0], rot0.as_euler("xyz"))
    np.testing.assert_array_equal(physics.data.qpos, qpos)
    np.testing.assert_array_equal(q_start, REST_JOINTS)
