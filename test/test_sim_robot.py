"""SimRobot: the play-table tracking absolute targets, holding without commands, and its observations."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ros_nodes.contract import ARM_JOINT_POSITIONS, IMAGE_FEATURES, load_contract
from ros_nodes.sim_robot import FINGER_NAMES, JOINT_NAMES, SimRobot, chain_start
from ros_nodes.types import Command
from sim.chains import Chain
from sim.rotations import quat_to_euler
from sim.snapshot import DRAWER_IDX

CONTRACT = load_contract(Path(__file__).resolve().parents[1] / "configs" / "contract" / "playtable.yaml")
DT = 1 / 30


@pytest.fixture
def robot() -> Iterator[SimRobot]:
    robot = SimRobot("D", seed=3)
    yield robot
    robot.close()


def _moved(robot: SimRobot, offset: tuple[float, float, float]) -> Command:
    target = robot.target
    return Command(robot.time, target.position + np.asarray(offset), target.euler, target.gripper)


def test_reaches_an_absolute_target_5cm_away(robot: SimRobot):
    command = _moved(robot, (0.05, 0.0, 0.0))
    robot.apply(command)
    for _ in range(15):
        robot.step()
    assert np.linalg.norm(robot.tcp_pose()[0] - command.position) < 0.002
    assert np.allclose(robot.robot_obs()[3:6], command.euler, atol=0.02)


def test_holds_the_last_target_when_commands_stop(robot: SimRobot):
    start = robot.tcp_pose()[0]
    for _ in range(10):  # no command yet: the reset pose, never zeros
        robot.apply(None)
        robot.step()
    assert np.linalg.norm(robot.tcp_pose()[0] - start) < 0.001
    robot.apply(_moved(robot, (0.0, 0.03, -0.03)))
    for _ in range(20):
        robot.step()
    reached = robot.tcp_pose()[0]
    for _ in range(30):
        robot.apply(None)
        robot.step()
    assert np.linalg.norm(robot.tcp_pose()[0] - reached) < 0.001


def test_gripper_command_closes_and_opens(robot: SimRobot):
    opened = robot.gripper_width()
    robot.apply(Command.from_array(0.0, np.r_[robot.target.as_array()[:6], -1.0]))
    for _ in range(15):
        robot.step()
    assert robot.gripper_width() < opened - 0.05
    assert robot.robot_obs()[14] == -1.0


def test_images_have_the_contract_shapes_and_render_once_per_tick(robot: SimRobot):
    images = robot.images()
    for feature in IMAGE_FEATURES:
        spec = CONTRACT.stream(feature).image
        assert images[feature].shape == (spec.height, spec.width, 3)
        assert images[feature].dtype == np.uint8
    assert robot.images() is images
    robot.step()
    assert robot.images() is not images
    blind = SimRobot("D", render=False)
    with pytest.raises(RuntimeError, match="render=False"):
        blind.images()
    blind.close()


def test_joint_names_order_and_robot_obs(robot: SimRobot):
    assert JOINT_NAMES == CONTRACT.stream(ARM_JOINT_POSITIONS).joint_names
    assert FINGER_NAMES == ("finger_left", "finger_right")
    obs = robot.robot_obs()
    assert np.array_equal(robot.joint_positions(), obs[7:14])
    assert robot.joint_velocities().shape == (7,)
    assert robot.gripper_width() == pytest.approx(obs[6])
    assert robot.finger_positions().sum() == pytest.approx(obs[6])
    position, quat = robot.tcp_pose()
    assert np.allclose(position, obs[:3])
    assert np.allclose(quat_to_euler(quat), obs[3:6], atol=1e-9)


def test_time_starts_at_zero_and_advances_one_thirtieth_per_tick(robot: SimRobot):
    assert robot.time == 0.0
    robot.step()
    assert robot.time == pytest.approx(DT)
    assert robot.advance(4 * DT) == 3
    assert robot.steps == 4
    assert robot.advance(robot.time) == 0
    assert robot.advance(robot.time + 0.5 * DT) == 0
    robot.reset()
    assert robot.time == 0.0 and robot.steps == 0


def test_seeded_scenes_and_reset_states(robot: SimRobot):
    twin = SimRobot("D", seed=3, render=False)
    assert np.array_equal(twin.snapshot().scene_obs, robot.snapshot().scene_obs)
    twin.close()
    chain = Chain({"led": 1, "lightbulb": 0, "slider": "left", "drawer": "open", "red_block": "table",
                   "blue_block": "slider_left", "pink_block": "table", "grasped": 0},
                  ("close_drawer", "turn_off_led", "move_slider_right", "lift_red_block_table", "stack_block"))
    state = chain_start(chain)
    robot.reset(state)
    assert np.allclose(robot.snapshot().scene_obs[:6], state["scene_obs"][:6])
    assert np.allclose(robot.robot_obs()[7:14], state["robot_obs"][7:14])
    with pytest.raises(ValueError, match="unknown keys \\['scene'\\]"):
        robot.reset({"scene": np.zeros(24)})


def test_task_oracle_hook(robot: SimRobot):
    closed = robot.snapshot().scene_obs.copy()
    closed[DRAWER_IDX] = 0.0
    robot.reset({"scene_obs": closed})
    since = robot.snapshot()
    assert not robot.succeeded("open_drawer", since)
    opened = closed.copy()
    opened[DRAWER_IDX] = 0.2
    robot.reset({"scene_obs": opened})
    assert robot.succeeded("open_drawer", since)
    with pytest.raises(ValueError, match="unknown task 'fly'"):
        robot.succeeded("fly", since)


def test_apply_rejects_non_finite_targets(robot: SimRobot):
    target = robot.target
    bad = Command(0.0, np.array([0.1, np.nan, 0.5]), target.euler, 1.0)
    with pytest.raises(ValueError, match="finite"):
        robot.apply(bad)
    assert np.array_equal(robot.target.position, target.position)
