"""Observation-to-command latency through DDS and the policy node's control-loop jitter at 30 Hz.

This process plays the robot: it publishes every stream of the play-table contract at 30 Hz (wall-clock
stamps) over loopback DDS and flips the published gripper width every ``--flip-every`` frames. The policy
node runs in a child process (``--serve``: a real PolicyNode on its DDS transport, wall clock) with a probe
policy that takes no compute time: through observe() / sample_chunk() it asks to close the gripper when
the newest frame's width is small and to open it otherwise. The latency of a flip is the time from
publishing the frame that carries it to receiving the first gripper command that follows it: DDS both ways,
alignment, the wait for the next control tick and the chunk that becomes due one tick later. Jitter: the
periods between the gripper commands received here, and the node's own loop statistics (diagnostics).

    MUJOCO_GL=egl python bench/ros_latency.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import threading
import time
from typing import Any

import numpy as np

from ros_nodes.contract import FLOAT64, FLOAT64_ARRAY, IMAGE_FEATURES, SCENE_OBS, STRING, load_contract
from ros_nodes.convert import TYPESTORE, command_to_pose, header, rgb_to_image
from ros_nodes.launcher import NodeProcess, node_env
from ros_nodes.policy_node import DEFAULT_CONTRACT, PolicyNode, PolicyNodeConfig, serve, transport_qos
from ros_nodes.types import Command

CONTRACT = load_contract(DEFAULT_CONTRACT)
PERIOD = CONTRACT.actions.period_s
T = TYPESTORE.types
NARROW, WIDE = 0.02, 0.07  # gripper widths (m) that make the probe close / open


class ProbePolicy:
    """Zero motion; the gripper closes when the newest observed width is below 0.04 m. Chunks of 3 (as the
    shipped checkpoint's): an inference is due every tick that has a new frame, and one late frame does not
    leave a tick without a command."""

    def __init__(self) -> None:
        self._width = WIDE

    def reset(self) -> None:
        pass

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        self._width = float(obs["robot_obs"][6])

    def sample_chunk(self, instruction: str) -> np.ndarray:
        chunk = np.zeros((3, 7))
        chunk[:, 6] = -1.0 if self._width < 0.04 else 1.0
        return chunk


def run_node() -> None:
    from ros_nodes.transport.dds import DdsTransport

    node = PolicyNode(DdsTransport("dream_policy"), CONTRACT, ProbePolicy, PolicyNodeConfig(use_sim_time=False))
    serve(node)


class Robot:
    """Publishes the contract's streams at 30 Hz of wall-clock time; ``flips``: (monotonic time, width)."""

    def __init__(self, transport: Any, flip_every: int) -> None:
        self.pubs = {s.feature: transport.create_publisher(s.topic, s.type, transport_qos(s.qos, s.topic))
                     for s in CONTRACT.observations}
        self.flip_every, self.flips = flip_every, []
        rng = np.random.default_rng(0)
        self.images = {f: rng.integers(0, 256, (s.image.height, s.image.width, 3), dtype=np.uint8)
                       for f in IMAGE_FEATURES for s in [CONTRACT.stream(f)]}
        self.halt = threading.Event()

    def run(self) -> None:
        position, euler = np.array([0.026, -0.231, 0.571]), np.array([3.09, -0.03, 1.50])
        joints = np.array([-1.218, 1.040, 2.120, -2.342, -0.870, 1.641, 0.553])
        names = CONTRACT.stream("robot_obs.arm_joints").joint_names
        layout = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
        deadline, frame, width = time.monotonic(), 0, WIDE
        while not self.halt.wait(max(0.0, deadline - time.monotonic())):
            deadline += PERIOD
            frame += 1
            if frame % self.flip_every == 0:
                width = NARROW if width == WIDE else WIDE
                self.flips.append((time.monotonic(), width))
            t = time.time()
            self.pubs["robot_obs.gripper_width"].publish(T[FLOAT64](data=width))
            self.pubs["robot_obs.tcp_pose"].publish(command_to_pose(Command(t, position, euler, 1.0), "world"))
            self.pubs["robot_obs.arm_joints"].publish(T["sensor_msgs/msg/JointState"](
                header=header(t, ""), name=list(names), position=joints, velocity=np.zeros(0), effort=np.zeros(0)))
            self.pubs[SCENE_OBS].publish(T[FLOAT64_ARRAY](layout=layout, data=np.zeros(24)))
            for feature, image in self.images.items():  # the reference stream last: the frame is complete
                self.pubs[feature].publish(rgb_to_image(image, t, "camera"))


def percentiles(values: list[float]) -> str:
    v = np.asarray(values) * 1e3
    return f"p50 {np.percentile(v, 50):6.1f} ms, p99 {np.percentile(v, 99):6.1f} ms, max {v.max():6.1f} ms (n={v.size})"


def measure(seconds: float, flip_every: int) -> None:
    env = node_env(random.SystemRandom().randint(100, 230))
    os.environ.update({k: env[k] for k in ("CYCLONEDDS_URI", "ROS_DOMAIN_ID")})
    from ros_nodes.transport.dds import DdsTransport

    transport = DdsTransport("latency_bench")
    commands: list[tuple[float, float]] = []  # (monotonic receipt time, gripper command)
    diagnostics: list[dict] = []
    transport.create_subscription(CONTRACT.actions.gripper.topic, FLOAT64,
                                  lambda m: commands.append((time.monotonic(), m.data)))
    transport.create_subscription("/dream_policy/diagnostics", STRING, lambda m: diagnostics.append(json.loads(m.data)))
    node = NodeProcess("policy", "bench.ros_latency", ["--serve"], env, sink=lambda line: None)
    robot = Robot(transport, flip_every)
    thread = threading.Thread(target=robot.run, daemon=True)
    thread.start()
    instruction = CONTRACT.instruction
    text = transport.create_publisher(instruction.topic, STRING, transport_qos(instruction.qos, instruction.topic))
    text.publish(T[STRING](data="probe the gripper"))
    deadline = time.monotonic() + 30
    while not commands and time.monotonic() < deadline:
        time.sleep(0.1)
    if not commands:
        raise SystemExit(f"no command from the policy node in 30 s; its output: {list(node.tail)}")
    start = time.monotonic()
    time.sleep(seconds)
    robot.halt.set()
    thread.join()
    node.stop()
    transport.close()

    latencies = []
    for flipped_at, width in robot.flips:
        wanted = -1.0 if width == NARROW else 1.0
        later = [t for t, g in commands if t >= flipped_at and np.sign(g) == wanted]
        if flipped_at >= start and later:
            latencies.append(later[0] - flipped_at)
    arrivals = np.array([t for t, _ in commands if t >= start])
    periods = np.diff(arrivals)
    loop = diagnostics[-1]["loop"]
    print(f"# ROS latency bench: policy node in a child process, loopback DDS, {seconds:.0f} s, "
          f"{os.cpu_count()} cores, probe policy (no compute)")
    print(f"observation -> command (gripper flip): {percentiles(latencies)}")
    print(f"command arrivals here, 30 Hz: period mean {periods.mean() * 1e3:.2f} ms, std {periods.std() * 1e3:.2f} ms, "
          f"|period - 33.33 ms| p99 {np.percentile(np.abs(periods - PERIOD), 99) * 1e3:.2f} ms (n={periods.size})")
    print(f"node control loop (its diagnostics): period mean {loop['period_mean_s'] * 1e3:.2f} ms, "
          f"jitter std {loop['jitter_std_s'] * 1e3:.2f} ms, jitter p99 {loop['jitter_p99_s'] * 1e3:.2f} ms, "
          f"ticks {loop['ticks']}, inferences {loop['inferences']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement time after the first command")
    parser.add_argument("--flip-every", type=int, default=15, help="frames between gripper-width flips")
    parser.add_argument("--serve", action="store_true", help="(internal) be the policy node")
    args = parser.parse_args()
    if args.serve:
        run_node()
    else:
        measure(args.seconds, args.flip_every)


if __name__ == "__main__":
    main()
