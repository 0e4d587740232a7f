"""Tests for sim.physics: CALVIN observation layouts, exact state setting, contacts, lights."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from sim import snapshot as S
from sim.physics import (
    BULB_OFF,
    BULB_ON,
    LED_OFF,
    LED_ON,
    PlayTablePhysics,
    euler_to_quat,
    quat_to_euler,
)
from sim.scene_config import SceneConfig
from sim.scene_xml import BUTTON_RANGE, SWITCH_RANGE
from sim.state_sampler import default_robot_obs

NEUTRAL_JOINTS = np.array([-1.21779, 1.03988, 2.11978, -2.34205, -0.87016, 1.64119, 0.55345])
NEUTRAL_TCP = np.array([0.02587, -0.23131, 0.57128])
NEUTRAL_EULER = np.array([3.09045, -0.02909, 1.50014])
TABLE_Z, FIVE_CM_UP = 0.46, 0.51
SHELF_XY = (-0.24085, 0.09240)  # CALVIN's slider_left slot


@pytest.fixture(scope="module")
def physics() -> PlayTablePhysics:
    return PlayTablePhysics(SceneConfig(name="D", render=False))


def scene_obs(**blocks) -> np.ndarray:
    """Articulations at 0, lights off; blocks apart on the table unless given (x, y, z, yaw)."""
    out = np.zeros(24)
    poses = {"block_red": (0.05, -0.10, TABLE_Z, 0.0), "block_blue": (0.17, -0.10, TABLE_Z, 0.3),
             "block_pink": (0.30, -0.08, TABLE_Z, 1.2)}
    poses.update(blocks)
    for b, (x, y, z, yaw) in poses.items():
        out[S.BLOCK_SLICES[b]] = [x, y, z, 0.0, 0.0, yaw]
    return out


def hold(p: PlayTablePhysics, steps: int) -> None:
    """Control steps with the arm held where it is and the gripper open."""
    q = p.arm_joints()
    for _ in range(steps):
        p.step(q, True)


def test_euler_quat_round_trip():
    rng = np.random.default_rng(0)
    for euler in rng.uniform([-3, -1.5, -3], [3, 1.5, 3], (20, 3)):
        q = euler_to_quat(euler)
        assert np.linalg.norm(q) == pytest.approx(1.0)
        np.testing.assert_allclose(quat_to_euler(q), euler, atol=1e-9)
    np.testing.assert_allclose(euler_to_quat([0, 0, 0]), [1, 0, 0, 0])  # MuJoCo order w, x, y, z


def test_control_period_is_one_thirtieth_second(physics):
    assert physics.substeps * physics.model.opt.timestep == pytest.approx(1 / 30)


def test_forward_kinematics_of_calvin_neutral_pose(physics):
    robot = np.concatenate([np.zeros(6), [0.08], NEUTRAL_JOINTS, [1.0]])
    physics.set_state(robot, scene_obs())
    pos, euler = physics.tcp_pose()
    np.testing.assert_allclose(pos, NEUTRAL_TCP, atol=1e-3)
    np.testing.assert_allclose(euler, NEUTRAL_EULER, atol=1e-3)
    obs = physics.robot_obs()
    assert obs.shape == (15,)
    np.testing.assert_allclose(obs[:3], NEUTRAL_TCP, atol=1e-3)
    np.testing.assert_allclose(obs[3:6], NEUTRAL_EULER, atol=1e-3)


def test_set_state_round_trips_robot_obs(physics):
    robot = default_robot_obs()
    physics.set_state(robot, scene_obs())
    np.testing.assert_allclose(physics.robot_obs(), robot, atol=1e-5)

    closed = robot.copy()
    closed[7:14] += [0.1, -0.05, 0.02, 0.1, 0.0, -0.1, 0.3]
    closed[6], closed[14] = 0.03, -1.0
    physics.set_state(closed, scene_obs())
    obs = physics.robot_obs()
    np.testing.assert_allclose(obs[7:14], closed[7:14], atol=1e-12)  # joints
    assert obs[6] == pytest.approx(0.03)  # gripper width
    assert obs[14] == -1.0  # last gripper action
    # the TCP fields are derived from the joints, so they moved with them
    assert np.linalg.norm(obs[:3] - robot[:3]) > 0.01


def test_set_state_round_trips_scene_obs(physics):
    scene = scene_obs(block_blue=(SHELF_XY[0], SHELF_XY[1], TABLE_Z, -2.5))
    scene[:6] = [0.12, 0.07, 0.0, 0.06, 1, 1]  # slider, drawer, button, switch, lightbulb, led
    physics.set_state(default_robot_obs(), scene)
    obs = physics.scene_obs()
    assert obs.shape == (24,)
    np.testing.assert_allclose(obs, scene, atol=1e-9)


def test_lightbulb_is_derived_from_the_switch_not_copied(physics):
    scene = scene_obs()
    scene[S.SWITCH_IDX], scene[S.LIGHTBULB_IDX] = SWITCH_RANGE, 0
    physics.set_state(default_robot_obs(), scene)
    assert physics.scene_obs()[S.LIGHTBULB_IDX] == 1
    scene[S.SWITCH_IDX], scene[S.LIGHTBULB_IDX] = 0.0, 1
    physics.set_state(default_robot_obs(), scene)
    assert physics.scene_obs()[S.LIGHTBULB_IDX] == 0


def test_set_state_shows_lights_in_their_colours(physics):
    scene = scene_obs()
    scene[S.SWITCH_IDX], scene[S.LED_IDX] = SWITCH_RANGE, 1
    physics.set_state(default_robot_obs(), scene)
    np.testing.assert_allclose(physics.model.geom_rgba[physics.led_geom], LED_ON)
    np.testing.assert_allclose(physics.model.geom_rgba[physics.bulb_geom], BULB_ON)
    physics.set_state(default_robot_obs(), scene_obs())
    np.testing.assert_allclose(physics.model.geom_rgba[physics.led_geom], LED_OFF)
    np.testing.assert_allclose(physics.model.geom_rgba[physics.bulb_geom], BULB_OFF)


@pytest.mark.parametrize(
    ("robot", "scene", "match"),
    [
        (np.zeros(14), np.zeros(24), r"robot_obs must have shape \(15,\)"),
        (np.zeros((1, 15)), np.zeros(24), r"robot_obs must have shape \(15,\)"),
        (default_robot_obs(), np.zeros(23), r"scene_obs must have shape \(24,\)"),
        (np.r_[np.nan, default_robot_obs()[1:]], np.zeros(24), "robot_obs contains non-finite"),
        (default_robot_obs(), np.r_[np.zeros(23), np.inf], "scene_obs contains non-finite"),
    ],
)
def test_set_state_rejects_bad_inputs_by_name(physics, robot, scene, match):
    with pytest.raises(ValueError, match=match):
        physics.set_state(robot, scene)


def test_block_resting_on_the_table_touches_the_table_top(physics):
    physics.set_state(default_robot_obs(), scene_obs())
    contacts = physics.contacts()
    assert set(contacts) == set(S.BLOCKS)
    for block in S.BLOCKS:
        assert contacts[block] == {S.TABLE_TOP}


def test_block_on_the_shelf_touches_the_plank(physics):
    physics.set_state(default_robot_obs(), scene_obs(block_blue=(*SHELF_XY, TABLE_Z, 0.0)))
    assert physics.contacts()["block_blue"] == {S.PLANK}
    hold(physics, 10)  # still so after settling
    assert physics.contacts()["block_blue"] == {S.PLANK}


def test_block_five_cm_above_the_table_touches_nothing(physics):
    physics.set_state(default_robot_obs(), scene_obs(block_red=(0.05, -0.10, FIVE_CM_UP, 0.0)))
    assert physics.contacts()["block_red"] == frozenset()
    hold(physics, 15)  # it falls and lands
    assert physics.contacts()["block_red"] == {S.TABLE_TOP}
    assert physics.scene_obs()[S.BLOCK_SLICES["block_red"]][2] == pytest.approx(TABLE_Z, abs=2e-3)


def test_stacked_blocks_touch_each_other(physics):
    physics.set_state(default_robot_obs(), scene_obs(block_blue=(0.05, -0.10, TABLE_Z + 0.04, 0.0)))
    contacts = physics.contacts()
    assert contacts["block_blue"] == {"block_red"}
    assert contacts["block_red"] == {S.TABLE_TOP, "block_blue"}


def test_contacts_do_not_disturb_the_simulation(physics):
    physics.set_state(default_robot_obs(), scene_obs())
    qpos = physics.data.qpos.copy()
    physics.contacts()
    np.testing.assert_array_equal(physics.data.qpos, qpos)


def test_block_velocities_are_world_frame(physics):
    physics.set_state(default_robot_obs(), scene_obs(block_red=(0.05, -0.10, TABLE_Z, np.pi / 2)))
    dof = physics.block_dof["block_red"]
    physics.data.qvel[dof:dof + 6] = [0.1, 0.2, 0.3, 1.0, 0.0, 0.0]  # free joint: angular in body frame
    mujoco.mj_forward(physics.model, physics.data)
    vel = physics.block_velocities()
    np.testing.assert_allclose(vel["block_red"], [0.1, 0.2, 0.3, 0.0, 1.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(vel["block_blue"], np.zeros(6))


def test_resting_blocks_are_at_rest_and_falling_ones_are_not(physics):
    physics.set_state(default_robot_obs(), scene_obs(block_pink=(0.30, -0.08, FIVE_CM_UP, 1.2)))
    hold(physics, 2)
    vel = physics.block_velocities()
    assert np.abs(vel["block_red"]).max() < 0.01
    assert vel["block_pink"][2] < -0.3


def test_snapshot_bundles_observations_contacts_velocities(physics):
    physics.set_state(default_robot_obs(), scene_obs())
    snap = physics.snapshot()
    np.testing.assert_allclose(snap.robot_obs, physics.robot_obs())
    np.testing.assert_allclose(snap.scene_obs, physics.scene_obs())
    assert snap.touching("block_pink") == {S.TABLE_TOP}
    assert set(snap.velocities) == set(S.BLOCKS)


# ---- button / LED ---------------------------------------------------------------------------
def _press_with_block(p: PlayTablePhysics, steps: int = 15) -> None:
    """Put the blue block on the button cap so its weight presses it; then let it act."""
    a = p.block_qpos["block_blue"]
    x, y, _ = p.cfg.layout.button
    p.data.qpos[a:a + 7] = [x, y, 0.4975, 1, 0, 0, 0]
    p.data.qvel[:] = 0
    hold(p, steps)


def _lift_block(p: PlayTablePhysics, steps: int = 15) -> None:
    a = p.block_qpos["block_blue"]
    p.data.qpos[a:a + 7] = [0.20, -0.05, TABLE_Z, 1, 0, 0, 0]
    p.data.qvel[:] = 0
    hold(p, steps)


def test_block_weight_presses_button_and_toggles_led_once_per_press(physics):
    p = physics
    p.set_state(default_robot_obs(), scene_obs())
    history = []
    for _ in range(2):
        _press_with_block(p)
        assert p.scene_obs()[S.BUTTON_IDX] > BUTTON_RANGE / 2
        assert S.BUTTON in p.contacts()["block_blue"]
        history.append(p.led)
        _lift_block(p)
        assert p.scene_obs()[S.BUTTON_IDX] < BUTTON_RANGE / 4  # the spring brings it back up
        history.append(p.led)
    assert history == [1, 1, 0, 0]
    np.testing.assert_allclose(p.model.geom_rgba[p.led_geom], LED_OFF)


def test_led_toggles_on_the_rising_edge_only(physics):
    p = physics
    p.set_state(default_robot_obs(), scene_obs())
    leds = []
    for _ in range(3):
        p.data.qpos[p.art_qpos["button"]] = 0.75 * BUTTON_RANGE  # pushed past the middle
        for _ in range(10):
            p.step(p.arm_joints(), True)
            leds.append(p.led)
    # one toggle at the start of each press, none while it springs back or stays released
    assert leds == [1] * 10 + [0] * 10 + [1] * 10
    assert p.scene_obs()[S.LED_IDX] == 1
    np.testing.assert_allclose(p.model.geom_rgba[p.led_geom], LED_ON)


def test_set_state_with_button_held_down_is_not_a_press(physics):
    scene = scene_obs()
    scene[S.BUTTON_IDX] = 0.75 * BUTTON_RANGE
    physics.set_state(default_robot_obs(), scene)
    hold(physics, 10)
    assert physics.led == 0


def test_shallow_button_push_below_the_middle_does_not_toggle(physics):
    physics.set_state(default_robot_obs(), scene_obs())
    physics.data.qpos[physics.art_qpos["button"]] = 0.3 * BUTTON_RANGE
    hold(physics, 10)
    assert physics.led == 0


def test_button_can_travel_its_full_range(physics):
    # scene_xml: cap bottom sits at TABLE_TOP_Z + 0.005 + 0.005 - 0.012 - q = 0.453 - q, so it meets the
    # table top (0.44) at q = 0.013 and two stacked blocks (>2x the spring force at 0.02) stop there.
    physics.set_state(default_robot_obs(), scene_obs())
    x, y, _ = physics.cfg.layout.button
    for block, z in (("block_blue", 0.4975), ("block_red", 0.5375)):
        a = physics.block_qpos[block]
        physics.data.qpos[a:a + 7] = [x, y, z, 1, 0, 0, 0]
    hold(physics, 20)
    assert physics.scene_obs()[S.BUTTON_IDX] > 0.95 * BUTTON_RANGE


# ---- switch / lightbulb, drawer, slider -----------------------------------------------------
@pytest.mark.parametrize(("switch", "bulb"), [(0.0, 0), (0.03, 0), (0.046, 1), (0.07, 1), (SWITCH_RANGE, 1)])
def test_switch_position_sets_lightbulb(physics, switch, bulb):
    scene = scene_obs()
    scene[S.SWITCH_IDX] = switch
    physics.set_state(default_robot_obs(), scene)
    assert physics.lightbulb() == bulb
    hold(physics, 5)
    assert physics.scene_obs()[S.LIGHTBULB_IDX] == bulb
    np.testing.assert_allclose(physics.model.geom_rgba[physics.bulb_geom], BULB_ON if bulb else BULB_OFF)


@pytest.mark.parametrize("switch", [0.02, 0.044, 0.07, SWITCH_RANGE])
def test_switch_does_not_creep(physics, switch):
    scene = scene_obs()
    scene[S.SWITCH_IDX] = switch
    physics.set_state(default_robot_obs(), scene)
    hold(physics, 60)
    assert abs(physics.scene_obs()[S.SWITCH_IDX] - switch) < 0.002


@pytest.mark.parametrize(("slider", "drawer"), [(0.0, 0.0), (0.14, 0.1), (0.28, 0.22)])
def test_drawer_and_slider_stay_put_when_untouched(physics, slider, drawer):
    scene = scene_obs()
    scene[S.SLIDER_IDX], scene[S.DRAWER_IDX] = slider, drawer
    physics.set_state(default_robot_obs(), scene)
    hold(physics, 60)
    obs = physics.scene_obs()
    assert abs(obs[S.SLIDER_IDX] - slider) < 1e-3
    assert abs(obs[S.DRAWER_IDX] - drawer) < 1e-3


def test_held_arm_stays_at_its_pose(physics):
    physics.set_state(default_robot_obs(), scene_obs())
    hold(physics, 60)
    obs = physics.robot_obs()
    np.testing.assert_allclose(obs[:3], NEUTRAL_TCP, atol=2e-3)
    np.testing.assert_allclose(obs[7:14], NEUTRAL_JOINTS, atol=5e-3)
    assert obs[6] == pytest.approx(0.08, abs=2e-3)  # open fingers stay open
