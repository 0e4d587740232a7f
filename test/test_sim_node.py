"""SimNode: the contract's topics with sim-time stamps, pose commands followed, over an in-memory
transport; and one end-to-end run of the node's entry point over DDS in another process."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ros_nodes.contract import (
    ARM_JOINT_POSITIONS,
    COMPRESSED_IMAGE,
    GRIPPER_WIDTH,
    HEADERLESS_TYPES,
    IMAGE_FEATURES,
    JOINT_STATE,
    SCENE_OBS,
    TCP_POSE,
    ImageSpec,
    load_contract,
)
from ros_nodes.convert import (
    TYPESTORE,
    command_to_gripper,
    command_to_pose,
    compressed_to_rgb,
    finger_width,
    image_to_rgb,
    joint_positions,
    pose_to_tcp,
    robot_obs_from,
    stamp_seconds,
)
from ros_nodes.sim_node import CLOCK_TOPIC, SimNode
from ros_nodes.sim_robot import SimRobot
from ros_nodes.transport.base import DEFAULT, SENSOR, QosProfile
from ros_nodes.types import Command

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = load_contract(ROOT / "configs" / "contract" / "playtable.yaml")
DT = 1 / 30


class _Endpoint:
    def __init__(self, topic: str) -> None:
        self.topic = topic


class FakeTransport:
    """In-memory transport: publish calls the topic's callbacks at once and records the message."""

    def __init__(self) -> None:
        self.callbacks: dict[str, list[Callable[[Any], None]]] = defaultdict(list)
        self.sent: dict[str, list[Any]] = defaultdict(list)
        self.types: dict[str, str] = {}
        self.qos: dict[str, QosProfile] = {}

    def create_publisher(self, topic: str, msg_type: str, qos: QosProfile = DEFAULT) -> Any:
        self.types[topic], self.qos[topic] = msg_type, qos
        publisher = _Endpoint(topic)
        publisher.publish = lambda msg: self.publish(topic, msg)
        publisher.subscription_count = lambda: len(self.callbacks[topic])
        return publisher

    def create_subscription(self, topic: str, msg_type: str, callback: Callable[[Any], None],
                            qos: QosProfile = DEFAULT) -> Any:
        self.types[topic], self.qos[topic] = msg_type, qos
        self.callbacks[topic].append(callback)
        return _Endpoint(topic)

    def publish(self, topic: str, msg: Any) -> None:
        self.sent[topic].append(msg)
        for callback in self.callbacks[topic]:
            callback(msg)

    def close(self) -> None:
        self.callbacks.clear()


@pytest.fixture
def robot() -> Iterator[SimRobot]:
    robot = SimRobot("D", seed=1)
    yield robot
    robot.close()


@pytest.fixture
def transport() -> FakeTransport:
    return FakeTransport()


def _send(transport: FakeTransport, command: Command, frame_id: str = "world") -> None:
    actions = CONTRACT.actions
    transport.publish(actions.target.topic, command_to_pose(command, frame_id))
    transport.publish(actions.gripper.topic, command_to_gripper(command, actions.gripper.open,
                                                                actions.gripper.closed))


def test_one_step_publishes_every_contract_topic_once_at_sim_time(transport: FakeTransport, robot: SimRobot):
    SimNode(transport, CONTRACT, robot).step()
    for stream in CONTRACT.observations:
        [msg] = transport.sent[stream.topic]
        assert msg.__msgtype__ == stream.type == transport.types[stream.topic]
        assert transport.qos[stream.topic] == (SENSOR if stream.feature in IMAGE_FEATURES else DEFAULT)
        if stream.type not in HEADERLESS_TYPES:
            assert stamp_seconds(msg.header) == pytest.approx(DT, abs=1e-9)
        if stream.feature in IMAGE_FEATURES:
            rgb = image_to_rgb(msg, (stream.image.height, stream.image.width), stream.topic)
            assert np.array_equal(rgb, robot.images()[stream.feature])
    [clock] = transport.sent[CLOCK_TOPIC]
    assert clock.clock.sec == 0 and clock.clock.nanosec == round(1e9 / 30)
    assert len(transport.sent) == len(CONTRACT.observations) + 1


def test_published_state_assembles_to_the_sims_robot_obs(transport: FakeTransport, robot: SimRobot):
    SimNode(transport, CONTRACT, robot).step()
    pose = transport.sent[CONTRACT.stream(TCP_POSE).topic][0]
    joints_stream = CONTRACT.stream(ARM_JOINT_POSITIONS)
    joints = transport.sent[joints_stream.topic][0]
    width = transport.sent[CONTRACT.stream(GRIPPER_WIDTH).topic][0].data
    assert pose.header.frame_id == CONTRACT.actions.frame_id
    assert list(joints.name) == list(joints_stream.joint_names)
    assert np.array_equal(joint_positions(joints, joints_stream.joint_names), robot.joint_positions())
    obs = robot_obs_from(pose, joints, joints_stream.joint_names, width, robot.target.gripper)
    assert np.allclose(obs, robot.robot_obs(), atol=1e-9)
    scene = transport.sent[CONTRACT.stream(SCENE_OBS).topic][0]  # the sim-only privileged state
    assert np.array_equal(scene.data, robot.scene_obs()) and scene.data.shape == (24,)


def test_a_pose_command_is_applied_at_the_next_step(transport: FakeTransport, robot: SimRobot):
    node = SimNode(transport, CONTRACT, robot)
    start = robot.target
    goal = Command(0.5, start.position + [0.0, 0.05, 0.0], start.euler, -1.0)
    _send(transport, goal)
    assert np.array_equal(robot.target.position, start.position)  # not before the tick
    node.step()
    assert np.allclose(robot.target.as_array(), goal.as_array())
    node.run(15)  # no more commands: the robot keeps tracking the goal
    position, euler = pose_to_tcp(transport.sent[CONTRACT.stream(TCP_POSE).topic][-1])
    assert np.linalg.norm(position - goal.position) < 0.002
    assert np.allclose(euler, goal.euler, atol=0.02)
    assert robot.robot_obs()[14] == -1.0


def test_pose_and_gripper_commands_merge_onto_the_current_target(transport: FakeTransport, robot: SimRobot):
    node = SimNode(transport, CONTRACT, robot)
    start = robot.target
    closing = TYPESTORE.types["std_msgs/msg/Float64"](data=CONTRACT.actions.gripper.closed)
    transport.publish(CONTRACT.actions.gripper.topic, closing)
    node.step()
    assert np.array_equal(robot.target.position, start.position) and robot.target.gripper == -1.0
    moved = Command(1.0, start.position + 0.01, start.euler, 1.0)
    transport.publish(CONTRACT.actions.target.topic, command_to_pose(moved, "world"))
    node.step()
    assert np.allclose(robot.target.position, moved.position) and robot.target.gripper == -1.0


def test_commands_in_another_frame_or_not_finite_are_ignored(transport: FakeTransport, robot: SimRobot):
    node = SimNode(transport, CONTRACT, robot)
    start = robot.target
    _send(transport, Command(0.0, start.position + 0.05, start.euler, 1.0), frame_id="base_link")
    bad = command_to_gripper(start)
    bad.data = float("nan")
    transport.publish(CONTRACT.actions.gripper.topic, bad)
    node.step()
    assert node.rejected == 2
    assert np.array_equal(robot.target.as_array(), start.as_array())


def test_cameras_at_a_lower_rate(transport: FakeTransport, robot: SimRobot):
    SimNode(transport, CONTRACT, robot, camera_rate_hz=10).run(6)
    for stream in CONTRACT.observations:
        assert len(transport.sent[stream.topic]) == (2 if stream.feature in IMAGE_FEATURES else 6)
    stamps = [stamp_seconds(m.header) for m in transport.sent[CONTRACT.stream("rgb_static").topic]]
    assert stamps == pytest.approx([3 * DT, 6 * DT])
    for rate in (7, 60, 0):
        with pytest.raises(ValueError, match="camera_rate_hz"):
            SimNode(FakeTransport(), CONTRACT, robot, camera_rate_hz=rate)


def _with_streams(**changes: dict[str, Any]) -> Any:
    """The playtable contract with fields of some streams (by feature) replaced."""
    streams = tuple(replace(s, **changes.get(s.feature, {})) for s in CONTRACT.observations)
    return replace(CONTRACT, observations=streams)


def test_other_stream_types_and_joint_names(transport: FakeTransport, robot: SimRobot):
    contract = _with_streams(
        rgb_static={"type": COMPRESSED_IMAGE, "image": ImageSpec(200, 200, "png")},
        **{ARM_JOINT_POSITIONS: {"joint_names": tuple(f"panda_joint{i}" for i in range(1, 8))},
           GRIPPER_WIDTH: {"type": JOINT_STATE, "joint_names": ("left", "right")}})
    SimNode(transport, contract, robot).step()
    png = transport.sent[contract.stream("rgb_static").topic][0]
    assert np.array_equal(compressed_to_rgb(png, (200, 200)), robot.images()["rgb_static"])
    joints = transport.sent[contract.stream(ARM_JOINT_POSITIONS).topic][0]
    assert np.array_equal(joint_positions(joints, [f"panda_joint{i}" for i in range(1, 8)]),
                          robot.joint_positions())
    fingers = transport.sent[contract.stream(GRIPPER_WIDTH).topic][0]
    assert finger_width(fingers, ("left", "right")) == pytest.approx(robot.gripper_width())
    for features, match in (({"rgb_gripper": {"image": ImageSpec(96, 96, "rgb8")}}, "84x84"),
                            ({"rgb_gripper": {"image": ImageSpec(84, 84, "bgr8")}}, "rgb8"),
                            ({GRIPPER_WIDTH: {"type": JOINT_STATE, "joint_names": ("f",)}}, "2 joints")):
        with pytest.raises(ValueError, match=match):
            SimNode(FakeTransport(), _with_streams(**features), robot)


def test_joint_trajectory_contracts_are_refused(transport: FakeTransport, robot: SimRobot):
    with pytest.raises(ValueError, match="follows 'pose' commands"):
        SimNode(transport, load_contract(ROOT / "configs" / "contract" / "franka_hw.yaml"), robot)


def test_spin_publishes_the_start_state_then_ticks_until_stopped(transport: FakeTransport, robot: SimRobot):
    node = SimNode(transport, CONTRACT, robot)
    assert node.spin(max_steps=3) == 3
    stamps = [stamp_seconds(m.header) for m in transport.sent[CONTRACT.stream(TCP_POSE).topic]]
    assert stamps == pytest.approx([0.0, DT, 2 * DT, 3 * DT])
    stop = threading.Event()
    stop.set()
    assert node.spin(stop_event=stop) == 0
    began = time.monotonic()
    assert node.spin(rate_hz=100, max_steps=5) == 5
    assert time.monotonic() - began >= 0.045
    with pytest.raises(ValueError, match="rate_hz"):
        node.spin(rate_hz=0)


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.slow
def test_sim_node_entry_point_over_dds(monkeypatch: pytest.MonkeyPatch):
    """The policy side in this process: images and joint states arrive, a target pose is followed."""
    from ros_nodes.transport.dds import DdsTransport, loopback_config

    env = {"CYCLONEDDS_URI": loopback_config(), "ROS_DOMAIN_ID": str(random.SystemRandom().randint(100, 230))}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    sim = subprocess.Popen([sys.executable, "-m", "ros_nodes.sim_node", "--transport", "dds", "--seed", "2"],
                           cwd=ROOT, env={**os.environ, "MUJOCO_GL": "egl"},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    policy = DdsTransport("policy_probe")
    received: dict[str, list[Any]] = defaultdict(list)
    try:
        for stream in CONTRACT.observations:
            qos = SENSOR if stream.feature in IMAGE_FEATURES else DEFAULT
            policy.create_subscription(stream.topic, stream.type, received[stream.feature].append, qos)
        target = policy.create_publisher(CONTRACT.actions.target.topic, "geometry_msgs/msg/PoseStamped")
        assert _wait_for(lambda: received["rgb_static"] and received[ARM_JOINT_POSITIONS]
                         and received[TCP_POSE] and target.subscription_count() == 1, 20), dict(received)
        image = received["rgb_static"][-1]
        assert image_to_rgb(image, (200, 200)).shape == (200, 200, 3)
        assert list(received[ARM_JOINT_POSITIONS][-1].name) == [f"joint{i}" for i in range(1, 8)]
        position, euler = pose_to_tcp(received[TCP_POSE][-1])
        goal = position + [0.03, 0.0, 0.0]
        target.publish(command_to_pose(Command(0.0, goal, euler, 1.0), "world"))

        def reached() -> bool:
            return np.linalg.norm(pose_to_tcp(received[TCP_POSE][-1])[0] - goal) < 0.003

        assert _wait_for(reached, 10)
    finally:
        policy.close()
        sim.send_signal(signal.SIGTERM)
        output = sim.communicate(timeout=20)[0]
    assert sim.returncode == 0, output
    assert "stopped after" in output
