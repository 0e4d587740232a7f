"""The ROS 2 sim node: a SimRobot behind the topics of a contract, so a policy node sees a robot.

Each tick (30 Hz of simulated time) applies the newest target pose and gripper command received since
the last tick (none: the robot holds its target), steps the physics, then publishes every observation
stream of the contract stamped with the simulated time, and that time on ``/clock`` (rosgraph_msgs), so
nodes running with ``use_sim_time`` share the sim's clock. A ``scene_obs`` stream in the contract gets the
simulator's privileged scene state (sim only), which the scripted expert plans from and tests judge
success with. Commands arrive on the transport's dispatch
thread; the tick reads them under a lock. Only ``actions.mode: pose`` is followed.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ros_nodes import contract as C
from ros_nodes.convert import TYPESTORE, header, pose_to_tcp, rgb_to_compressed, rgb_to_image, stamp_seconds
from ros_nodes.lifecycle import parse_node_args, stop_on_signals
from ros_nodes.sim_robot import FINGER_NAMES, IMAGE_SHAPES, JOINT_NAMES, SimRobot
from ros_nodes.transport.base import (
    TRANSPORT_KINDS,
    Publisher,
    Transport,
    make_transport,
    transport_qos,
)
from ros_nodes.types import Command
from sim.scene_config import SCENES

log = logging.getLogger(__name__)
_T = TYPESTORE.types
CLOCK_TOPIC = "/clock"
CAMERA_FRAMES = {"rgb_static": "static_camera", "rgb_gripper": "gripper_camera"}
DEFAULT_CONTRACT = Path(__file__).resolve().parents[1] / "configs" / "contract" / "playtable.yaml"
Builder = Callable[[SimRobot, float], Any]


# ---- messages of the robot's state --------------------------------------------------------------

def _pose_stamped(position: np.ndarray, quat_wxyz: np.ndarray, stamp: float, frame_id: str) -> Any:
    px, py, pz = (float(v) for v in position)
    w, x, y, z = (float(v) for v in quat_wxyz)
    pose = _T["geometry_msgs/msg/Pose"](position=_T["geometry_msgs/msg/Point"](x=px, y=py, z=pz),
                                        orientation=_T["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w))
    return _T["geometry_msgs/msg/PoseStamped"](header=header(stamp, frame_id), pose=pose)


def _float_array(values: np.ndarray) -> Any:
    """A Float64MultiArray of a flat vector (no dimension labels, as the forward controllers send)."""
    layout = _T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    return _T[C.FLOAT64_ARRAY](layout=layout, data=np.asarray(values, dtype=np.float64))


def _joint_state(names: Sequence[str], position: np.ndarray, velocity: np.ndarray, stamp: float) -> Any:
    return _T["sensor_msgs/msg/JointState"](header=header(stamp, ""), name=list(names),
                                            position=np.asarray(position, dtype=np.float64),
                                            velocity=np.asarray(velocity, dtype=np.float64),
                                            effort=np.zeros(0, dtype=np.float64))


def _image_builder(stream: C.Stream) -> Builder:
    """Images at the sim's own size: raw rgb8 or compressed (jpeg/png)."""
    spec, expected = stream.image, IMAGE_SHAPES[stream.feature]
    if (spec.height, spec.width) != expected[:2]:
        raise ValueError(f"{stream.topic}: the sim renders {stream.feature} at {expected[0]}x{expected[1]} "
                         f"(HxW); the contract asks for {spec.height}x{spec.width}")
    frame = CAMERA_FRAMES[stream.feature]
    if stream.type == C.COMPRESSED_IMAGE:
        return lambda robot, t: rgb_to_compressed(robot.images()[stream.feature], t, frame, spec.encoding)
    if spec.encoding != "rgb8":
        raise ValueError(f"{stream.topic}: the sim publishes raw images as rgb8, not {spec.encoding}")
    return lambda robot, t: rgb_to_image(robot.images()[stream.feature], t, frame)


def _joint_builder(stream: C.Stream, sim_names: Sequence[str], positions: Callable[[SimRobot], np.ndarray],
                   velocities: Callable[[SimRobot], np.ndarray] | None) -> Builder:
    """A JointState under the contract's names, which stand for the sim's joints in order."""
    if len(stream.joint_names) != len(sim_names):
        raise ValueError(f"{stream.topic}: the sim has {len(sim_names)} joints here ({list(sim_names)}), "
                         f"the contract names {list(stream.joint_names)}")

    def build(robot: SimRobot, t: float) -> Any:
        position = positions(robot)
        velocity = velocities(robot) if velocities else np.zeros(0)
        return _joint_state(stream.joint_names, position, velocity, t)

    return build


def _stream_builder(stream: C.Stream, frame_id: str) -> Builder:
    """The message of ``stream`` for the robot's current state at time t."""
    if stream.feature in C.IMAGE_FEATURES:
        return _image_builder(stream)
    if stream.feature == C.TCP_POSE:
        return lambda robot, t: _pose_stamped(*robot.tcp_pose(), t, frame_id)
    if stream.feature == C.ARM_JOINT_POSITIONS:
        return _joint_builder(stream, JOINT_NAMES, SimRobot.joint_positions, SimRobot.joint_velocities)
    if stream.type == C.JOINT_STATE:  # gripper width as finger joints
        return _joint_builder(stream, FINGER_NAMES, SimRobot.finger_positions, None)
    if stream.feature == C.SCENE_OBS:
        return lambda robot, t: _float_array(robot.scene_obs())
    return lambda robot, t: _T["std_msgs/msg/Float64"](data=robot.gripper_width())


# ---- the node -----------------------------------------------------------------------------------

class SimNode:
    """Publishes the contract's observation streams of ``robot`` and follows its pose commands."""

    def __init__(self, transport: Transport, contract: C.Contract, robot: SimRobot,
                 camera_rate_hz: float | None = None, clock_topic: str | None = CLOCK_TOPIC) -> None:
        actions = contract.actions
        if actions.mode != "pose":
            raise ValueError(f"{contract.source}: actions.mode is {actions.mode!r}; the sim node follows "
                             f"'pose' commands (PoseStamped target + Float64 gripper) only")
        self.contract, self.robot = contract, robot
        self.camera_every = self._camera_every(camera_rate_hz)
        self._streams: list[tuple[str, Publisher, Builder]] = [
            (s.feature, transport.create_publisher(s.topic, s.type, transport_qos(s.qos, s.topic)),
             _stream_builder(s, actions.frame_id))
            for s in contract.observations]
        self._clock = (transport.create_publisher(clock_topic, "rosgraph_msgs/msg/Clock")
                       if clock_topic else None)
        self._lock = threading.Lock()
        self._pose: tuple[float, np.ndarray, np.ndarray] | None = None  # newest unapplied (stamp, pos, euler)
        self._gripper: float | None = None  # newest unapplied gripper command, as -1 / 1
        self.rejected = 0  # commands dropped: wrong frame, not finite, or no rotation
        target, gripper = actions.target, actions.gripper
        transport.create_subscription(target.topic, C.POSE_STAMPED, self._on_pose,
                                      transport_qos(target.qos, target.topic))
        transport.create_subscription(gripper.topic, C.FLOAT64, self._on_gripper,
                                      transport_qos(gripper.qos, gripper.topic))

    def _camera_every(self, camera_rate_hz: float | None) -> int:
        """Ticks between camera frames: the tick rate over the camera rate, a whole number."""
        if camera_rate_hz is None:
            return 1
        ratio = 1.0 / (self.robot.period * camera_rate_hz) if camera_rate_hz > 0 else 0.0
        if ratio < 1 or abs(ratio - round(ratio)) > 1e-6:
            raise ValueError(f"camera_rate_hz must divide the sim's {1 / self.robot.period:g} Hz into whole "
                             f"ticks (e.g. 30, 15, 10), got {camera_rate_hz}")
        return round(ratio)

    # ---- commands (dispatch thread) --------------------------------------------------------------
    def _on_pose(self, msg: Any) -> None:
        frame_id = self.contract.actions.frame_id
        if msg.header.frame_id != frame_id:
            return self._reject(f"target pose in frame {msg.header.frame_id!r}; expected {frame_id!r}")
        try:
            position, euler = pose_to_tcp(msg)
        except ValueError as error:
            return self._reject(f"target pose: {error}")
        if not np.all(np.isfinite(position)):
            return self._reject(f"target position is not finite: {position.tolist()}")
        stamp = stamp_seconds(msg.header)
        with self._lock:
            self._pose = (stamp, position, euler)

    def _on_gripper(self, msg: Any) -> None:
        gripper = self.contract.actions.gripper
        if not np.isfinite(msg.data):
            return self._reject(f"gripper command is not finite: {msg.data}")
        opens = abs(msg.data - gripper.open) < abs(msg.data - gripper.closed)
        with self._lock:
            self._gripper = 1.0 if opens else -1.0

    def _reject(self, reason: str) -> None:
        self.rejected += 1
        if self.rejected == 1 or self.rejected % 100 == 0:  # a misconfigured peer sends 30 a second
            log.warning("ignored command (%d so far): %s", self.rejected, reason)

    def _take_command(self) -> Command | None:
        """The newest pose and gripper commands merged onto the current target; None if none came."""
        with self._lock:
            pose, gripper = self._pose, self._gripper
            self._pose = self._gripper = None
        if pose is None and gripper is None:
            return None
        target = self.robot.target
        stamp, position, euler = pose if pose is not None else (target.stamp, target.position, target.euler)
        return Command(stamp, position, euler, target.gripper if gripper is None else gripper)

    # ---- ticks -----------------------------------------------------------------------------------
    def publish(self) -> None:
        """Every stream of the robot's current state (images every ``camera_every`` ticks) and the clock."""
        t = self.robot.time
        with_images = self.robot.steps % self.camera_every == 0
        for feature, publisher, build in self._streams:
            if with_images or feature not in C.IMAGE_FEATURES:
                publisher.publish(build(self.robot, t))
        if self._clock is not None:
            self._clock.publish(_T["rosgraph_msgs/msg/Clock"](clock=header(t, "").stamp))

    def step(self) -> None:
        """One tick: apply the newest command (or hold), step the physics, publish the new state."""
        self.robot.apply(self._take_command())
        self.robot.step()
        self.publish()

    def run(self, steps: int) -> None:
        """``steps`` ticks as fast as possible."""
        for _ in range(steps):
            self.step()

    def spin(self, rate_hz: float | None = None, stop_event: threading.Event | None = None,
             max_steps: int | None = None) -> int:
        """Publish the current state, then tick until ``stop_event`` is set (or ``max_steps`` ticks).

        Ticks are paced at ``rate_hz`` per wall-clock second (1 / period: real time; None: no pacing).
        A tick that runs late restarts the schedule instead of bursting to catch up. Returns ticks.
        """
        if rate_hz is not None and rate_hz <= 0:
            raise ValueError(f"rate_hz must be > 0 (or None for no pacing), got {rate_hz}")
        if max_steps is not None and max_steps < 0:
            raise ValueError(f"max_steps must be >= 0 (or None to run until stopped), got {max_steps}")
        stop_event = stop_event or threading.Event()
        self.publish()
        ticks, deadline = 0, time.monotonic()
        while not stop_event.is_set() and (max_steps is None or ticks < max_steps):
            if rate_hz is not None:
                deadline += 1.0 / rate_hz
                delay = deadline - time.monotonic()
                if delay < 0:
                    deadline -= delay
                elif stop_event.wait(delay):
                    break
            self.step()
            ticks += 1
        return ticks


def main(argv: Sequence[str] | None = None) -> None:
    """``ros2 run dream_policy sim_node``: the play-table on the contract's topics until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="sim_node", description=__doc__.splitlines()[0])
    parser.add_argument("--contract", type=Path, default=DEFAULT_CONTRACT, help="contract YAML (topics, QoS)")
    parser.add_argument("--scene", choices=SCENES, default="D", help="CALVIN scene variant")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random start scene")
    parser.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=True,
                        help="pace ticks at 30 Hz of wall-clock time (--no-realtime: as fast as possible)")
    parser.add_argument("--real-time-factor", type=float, default=1.0,
                        help="with --realtime: simulated seconds per wall-clock second (0.5: half "
                             "speed, like Gazebo's real-time factor; nodes on /clock see 30 Hz of sim time)")
    parser.add_argument("--camera-rate", type=float, default=None, help="camera Hz (divides 30; default 30)")
    parser.add_argument("--steps", type=int, default=None, help="stop after this many ticks")
    parser.add_argument("--transport", choices=TRANSPORT_KINDS, default="auto")
    parser.add_argument("--node-name", default="sim_node")
    args, remappings = parse_node_args(parser, argv)
    if not args.real_time_factor > 0:
        parser.error(f"--real-time-factor must be > 0, got {args.real_time_factor}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    contract = C.load_contract(args.contract)
    robot = SimRobot(args.scene, seed=args.seed)
    transport = make_transport(args.transport, node_name=args.node_name,
                               remappings=remappings)
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        node = SimNode(transport, contract, robot, camera_rate_hz=args.camera_rate)
        log.info("sim node: scene %s, contract %s, %s", args.scene, contract.source,
                 f"real-time factor {args.real_time_factor:g}" if args.realtime else "as fast as possible")
        ticks = node.spin(args.real_time_factor / robot.period if args.realtime else None, stop, args.steps)
        log.info("sim node: stopped after %d ticks (%.2f s simulated)", ticks, robot.time)
    finally:
        transport.close()
        robot.close()


if __name__ == "__main__":
    main()
