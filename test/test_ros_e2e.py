"""The sim node and the policy node as separate processes over DDS on loopback, judged from this process
(a third DDS participant): the scripted expert and the shipped checkpoint on play-table tasks through
``dream-policy up``, the policy node's services called from here, and faults (a killed policy node, a
malformed image, a camera that stops)."""

from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ros_nodes.contract import FLOAT64, FLOAT64_ARRAY, IMAGE_FEATURES, SCENE_OBS, STRING, load_contract
from ros_nodes.convert import TYPESTORE, command_to_pose, header, pose_to_tcp, rgb_to_image
from ros_nodes.launcher import POLICY_NODE, Launch, NodeProcess, node_env, policy_args
from ros_nodes.policy_node import CLOCK, CLOCK_TOPIC, DEFAULT_CONTRACT, transport_qos
from ros_nodes.transport.base import SET_TASK, TRIGGER, service_classes
from ros_nodes.types import Command
from sim.snapshot import Snapshot
from sim.task_oracle import TaskOracle

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
CONTRACT = load_contract(DEFAULT_CONTRACT)
PERIOD = CONTRACT.actions.period_s
T = TYPESTORE.types
DIAGNOSTICS = f"/{POLICY_NODE}/diagnostics"
TCP_TOPIC = CONTRACT.stream("robot_obs.tcp_pose").topic
SCENE_TOPIC = CONTRACT.stream(SCENE_OBS).topic
ORACLE = TaskOracle()
# Start scenes of the sim node (--seed): 0 has the drawer closed and the LED off, 1 the drawer open (0.22 m).
SEED_CLOSED, SEED_OPEN = 0, 1


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if isinstance(value, np.ndarray) or value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def succeeded(task: str, start: np.ndarray, now: np.ndarray) -> bool:
    """The sim's task oracle on scene_obs alone (the articulation and light rules read nothing else)."""
    return ORACLE.succeeded(task, Snapshot(np.zeros(15), start), Snapshot(np.zeros(15), now))


class Probe:
    """This process on the domain: newest scene state, tcp poses, policy diagnostics and commands."""

    def __init__(self) -> None:
        from ros_nodes.transport.dds import DdsTransport

        self.transport = DdsTransport("e2e_probe")
        self.scene: list[np.ndarray] = []
        self.tcp: list[tuple[float, np.ndarray]] = []  # (receipt time, position)
        self.diagnostics: list[dict] = []
        self.targets: list[Any] = []
        subscribe = self.transport.create_subscription
        subscribe(SCENE_TOPIC, FLOAT64_ARRAY, lambda m: self.scene.append(np.array(m.data)))
        subscribe(TCP_TOPIC, CONTRACT.stream("robot_obs.tcp_pose").type,
                  lambda m: self.tcp.append((time.monotonic(), pose_to_tcp(m)[0])))
        subscribe(DIAGNOSTICS, STRING, lambda m: self.diagnostics.append(json.loads(m.data)))
        subscribe(CONTRACT.actions.target.topic, CONTRACT.actions.target.type, self.targets.append)

    def tcp_between(self, start: float, end: float) -> np.ndarray:
        return np.array([p for t, p in list(self.tcp) if start <= t <= end])

    def close(self) -> None:
        self.transport.close()


@pytest.fixture
def domain(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A fresh ROS_DOMAIN_ID on the loopback config for this process and the nodes it starts."""
    env = node_env(random.SystemRandom().randint(100, 230))
    for key in ("CYCLONEDDS_URI", "ROS_DOMAIN_ID"):
        monkeypatch.setenv(key, env[key])
    return env


@pytest.fixture
def probe(domain: dict[str, str]) -> Iterator[Probe]:
    probe = Probe()
    yield probe
    probe.close()


def launch(domain: dict[str, str], policy: str, seed: int, output: list[str], real_time_factor: float = 1.0
           ) -> Launch:
    ckpt = ROOT / "checkpoints" / "tiny_D" if policy == "checkpoint" else None
    return Launch(DEFAULT_CONTRACT, policy, ckpt, "D", seed, True, int(domain["ROS_DOMAIN_ID"]), output.append,
                  real_time_factor=real_time_factor)


def test_dream_policy_up_runs_the_expert_on_instructions(domain: dict[str, str], probe: Probe):
    """`dream-policy up sim instruction=...` as a user runs it; the drawer, then (a new instruction from here)
    the LED, judged by the sim's task oracle on /playtable/scene_state; Ctrl-C stops both nodes."""
    up = subprocess.Popen([sys.executable, "-m", "dream_policy", "up", "sim", "policy=expert",
                           f"seed={SEED_CLOSED}", f"domain_id={domain['ROS_DOMAIN_ID']}", "status_period_s=1",
                           "instruction=open the drawer"], cwd=ROOT, env=domain, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        start = wait_for(lambda: probe.scene[0] if probe.scene else None, 30, "the sim's scene state")
        assert start[5] == 0 and start[1] < 0.05  # the LED is off, the drawer closed
        wait_for(lambda: succeeded("open_drawer", start, probe.scene[-1]), 20, "the drawer to open")
        text = probe.transport.create_publisher(CONTRACT.instruction.topic, STRING,
                                                transport_qos(CONTRACT.instruction.qos, CONTRACT.instruction.topic))
        text.publish(T[STRING](data="turn on the led"))
        wait_for(lambda: succeeded("turn_on_led", start, probe.scene[-1]), 20, "the LED to turn on")
        assert probe.diagnostics[-1]["task"] == "turn on the led"
    finally:
        up.send_signal(signal.SIGINT)
        output = up.communicate(timeout=40)[0]
    assert up.returncode == 0, output
    assert "[sim]" in output and "[policy]" in output and "task 'open the drawer', running" in output
    assert "[up] stopped: sim exit 0, policy exit 0" in output


def close_drawer_attempt(domain: dict[str, str], probe: Probe) -> tuple[bool, str]:
    """One launch of both nodes from the open-drawer scene, "close the drawer", 40 s (600 ticks of sim time) at
    most; the pipeline's own assertions hold whether or not the policy succeeds. Returns (success, summary)."""
    output: list[str] = []
    for received in (probe.scene, probe.tcp, probe.diagnostics):  # of this launch only
        received.clear()
    nodes = launch(domain, "checkpoint", SEED_OPEN, output, real_time_factor=0.5)
    try:
        start = wait_for(lambda: probe.scene[0] if probe.scene else None, 30, "the sim's scene state")
        assert start[1] > 0.2  # the drawer is open
        nodes.instruct("close the drawer")
        wait_for(lambda: probe.diagnostics and probe.diagnostics[-1]["counts"].get("chunks", 0) > 0, 40,
                 f"the first chunk; output: {output[-10:]}")
        begun = time.monotonic()
        first_tcp = probe.tcp[-1][1]
        done = False
        while time.monotonic() - begun < 40 and not done:
            time.sleep(0.5)
            done = succeeded("close_drawer", start, probe.scene[-1])
        summary = (f"{'success' if done else 'no success'} after {time.monotonic() - begun:.1f} s, "
                   f"drawer {start[1]:.3f} -> {probe.scene[-1][1]:.3f} m")
        moved = max(np.linalg.norm(p - first_tcp) for _, p in list(probe.tcp))
        diagnostics = probe.diagnostics[-1]
        latency, chunk_s = diagnostics["loop"]["inference_p50_s"], 3 * PERIOD
        if moved < 0.02 and latency >= chunk_s:  # every action's slot has passed when its chunk lands
            pytest.skip(f"inference takes {latency * 1e3:.0f} ms of sim time, more than a chunk's "
                        f"{chunk_s * 1e3:.0f} ms: this machine is too busy to run the checkpoint in real time")
        assert moved > 0.02, f"the arm moved {moved:.3f} m only"
        assert diagnostics["running"] and not diagnostics["stopped"] and diagnostics["counts"]["chunks"] > 10
        assert not nodes.exited()
    finally:
        codes = nodes.stop()
    assert codes == [0, 0], output[-20:]
    return done, summary


def test_the_shipped_checkpoint_closes_the_drawer_over_ros(domain: dict[str, str], probe: Probe):
    """checkpoints/tiny_D on "close the drawer" from an open drawer (8/8 and 9/9 in CALVIN's chains) over
    DDS, judged by the task oracle. The sim runs at a real-time factor of 0.5 and the policy node on its
    /clock, as one would slow Gazebo on a weak machine: on these 2 shared cores an inference beside the
    rendering sim takes 30-65 ms, most of a 3-action chunk at full speed.

    A learned policy in real time does not succeed every time: the drawer sometimes stops part-way (still 0.10-0.15 m
    open). One attempt failed in 5 with a core kept busy, none in 5 on an idle machine, and the test failed two
    CI runs when it had one attempt and a re-instruction. So up to three independent attempts (both nodes
    relaunched from the same scene; timing differs between them) must give one success: a broken pipeline
    fails all three, a sound one all three about once in a hundred runs even at one failure in five."""
    attempts = []
    for _ in range(3):
        done, summary = close_drawer_attempt(domain, probe)
        attempts.append(summary)
        print(f"\ntiny_D close_drawer over ROS: {summary}")
        if done:
            break
    assert done, f"the drawer did not close in {len(attempts)} attempts: {attempts}"


def test_a_killed_policy_node_leaves_the_sim_holding_position(domain: dict[str, str], probe: Probe):
    output: list[str] = []
    nodes = launch(domain, "expert", SEED_CLOSED, output)
    try:
        nodes.instruct("open the drawer")
        wait_for(lambda: len(probe.tcp) > 2 and np.linalg.norm(probe.tcp[-1][1] - probe.tcp[0][1]) > 0.02, 30,
                 "the arm to move")
        nodes.nodes[1].process.kill()  # mid-motion, no clean shutdown
        killed = time.monotonic()
        time.sleep(2.5)
        settled = probe.tcp_between(killed + 0.5, killed + 2.5)  # the arm reaches the last target, then holds
        assert len(settled) > 30 and nodes.nodes[0].running
        drift = np.linalg.norm(settled - settled[0], axis=1).max()
        assert drift < 0.002, f"tcp drifted {drift * 1e3:.2f} mm with the policy node gone"
    finally:
        codes = nodes.stop()
    assert codes[0] == 0 and codes[1] == -signal.SIGKILL, output[-20:]


def test_a_malformed_image_is_dropped_and_the_node_stays_up(domain: dict[str, str], probe: Probe):
    output: list[str] = []
    nodes = launch(domain, "expert", SEED_CLOSED, output)
    try:
        nodes.instruct("turn on the led")
        start = wait_for(lambda: probe.scene[0] if probe.scene else None, 30, "the sim's scene state")
        static = CONTRACT.stream("rgb_static")
        camera = probe.transport.create_publisher(static.topic, static.type, transport_qos(static.qos, static.topic))
        wait_for(lambda: camera.subscription_count() >= 1, 10, "the policy node's camera subscription")
        bad = rgb_to_image(np.zeros((10, 20, 3), np.uint8), 0.0, "static_camera")  # not the contract's 200x200

        def counted() -> int:  # best effort: resent until one arrives
            camera.publish(bad)
            return probe.diagnostics[-1]["counts"].get("malformed/rgb_static", 0) if probe.diagnostics else 0

        wait_for(counted, 10, "the malformed image to be counted")
        wait_for(lambda: succeeded("turn_on_led", start, probe.scene[-1]), 20, "the LED to turn on")
        assert nodes.nodes[1].running and probe.diagnostics[-1]["last_decision"] == "command"
        assert any("dropped a message on /playtable/static/image_raw" in line for line in output)
    finally:
        codes = nodes.stop()
    assert codes == [0, 0], output[-20:]


class FakeSim:
    """The sim node's topics from this process at 30 Hz of sim time, for a robot standing still; the cameras
    can be switched off."""

    def __init__(self, transport: Any) -> None:
        self.publishers = {s.feature: transport.create_publisher(s.topic, s.type, transport_qos(s.qos, s.topic))
                           for s in CONTRACT.observations}
        self.clock = transport.create_publisher(CLOCK_TOPIC, CLOCK)
        self.cameras = True
        self.last_image_t = -math.inf
        self.t = 0.0
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        rng = np.random.default_rng(0)
        self.images = {f: rng.integers(0, 256, (s.image.height, s.image.width, 3), dtype=np.uint8)
                       for f in IMAGE_FEATURES for s in [CONTRACT.stream(f)]}
        self.scene = np.zeros(24)
        self.scene[6:24] = [0.05, -0.1, 0.46, 0, 0, 0, 0.15, -0.1, 0.46, 0, 0, 0, -0.1, -0.1, 0.46, 0, 0, 0]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        self._thread.join()

    def _run(self) -> None:
        position, euler = np.array([0.026, -0.231, 0.571]), np.array([3.09, -0.03, 1.50])
        joints = np.array([-1.218, 1.040, 2.120, -2.342, -0.870, 1.641, 0.553])
        names = CONTRACT.stream("robot_obs.arm_joints").joint_names
        while not self._halt.wait(PERIOD):
            self.t += PERIOD
            t = self.t
            if self.cameras:
                for feature, image in self.images.items():
                    self.publishers[feature].publish(rgb_to_image(image, t, "camera"))
                self.last_image_t = t
            self.publishers["robot_obs.tcp_pose"].publish(command_to_pose(Command(t, position, euler, 1.0), "world"))
            self.publishers["robot_obs.arm_joints"].publish(T["sensor_msgs/msg/JointState"](
                header=header(t, ""), name=list(names), position=joints, velocity=np.zeros(0), effort=np.zeros(0)))
            self.publishers["robot_obs.gripper_width"].publish(T[FLOAT64](data=0.08))
            self.publishers[SCENE_OBS].publish(T[FLOAT64_ARRAY](
                layout=T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0), data=self.scene))
            self.clock.publish(T[CLOCK](clock=header(t, "").stamp))


def test_a_stopped_camera_holds_and_commands_resume_when_frames_return(domain: dict[str, str], probe: Probe):
    """The policy node alone against a fake sim in this process; diagnostics every tick tell its decisions."""
    output: list[str] = []
    policy = NodeProcess("policy", "ros_nodes.policy_node",
                         policy_args(DEFAULT_CONTRACT, "expert", diagnostics_period_s=PERIOD / 2), domain,
                         output.append)
    sim = FakeSim(probe.transport)
    sim.start()
    stale_s = CONTRACT.stream("rgb_static").stale_s
    try:
        text = probe.transport.create_publisher(CONTRACT.instruction.topic, STRING,
                                                transport_qos(CONTRACT.instruction.qos, CONTRACT.instruction.topic))
        text.publish(T[STRING](data="turn on the led"))
        wait_for(lambda: probe.diagnostics and probe.diagnostics[-1]["last_decision"] == "command", 30,
                 f"commands; output: {output[-10:]}")
        sim.cameras = False
        time.sleep(0.1)
        stopped = sim.last_image_t
        time.sleep(stale_s + 0.4)
        sim.cameras = True
        resumed = wait_for(lambda: sim.last_image_t if sim.last_image_t > stopped else None, 2, "frames again")
        wait_for(lambda: any(d["time"] > resumed and d["last_decision"] == "command" for d in probe.diagnostics),
                 2, "commands after the cameras came back")
        # the frame stamped `resumed` goes out before the clock message of `resumed`: the node may act on it at
        # the tick before, so the gap ends a tick and a half before it
        gap = [d for d in list(probe.diagnostics)
               if d["time"] is not None and stopped < d["time"] < resumed - 1.5 * PERIOD]
        late = [d["last_decision"] for d in gap if d["time"] > stopped + stale_s + 1.5 * PERIOD]
        assert late and "command" not in late, late  # no command once the camera is stale ...
        first_hold = min(d["time"] for d in gap if d["last_decision"] == "hold")
        # ... and a hold within 2 control periods of the stale limit (+ half a period: the node's ticks and the
        # sim's are not phase-locked)
        assert first_hold <= stopped + stale_s + 2.5 * PERIOD
        assert policy.running
    finally:
        sim.stop()
        code = policy.stop()
    assert code == 0, output[-20:]


def test_the_policy_node_serves_stop_start_and_set_task(domain: dict[str, str], probe: Probe):
    """The contract's services of a policy node process, called from here over DDS (the policy node alone
    against the fake sim): stop holds from the next tick, set_task changes the task, start runs it."""
    output: list[str] = []
    policy = NodeProcess("policy", "ros_nodes.policy_node",
                         policy_args(DEFAULT_CONTRACT, "expert", diagnostics_period_s=PERIOD / 2), domain,
                         output.append)
    sim = FakeSim(probe.transport)
    sim.start()
    services = CONTRACT.services
    clients = {name: probe.transport.create_client(getattr(services, name), srv_type)
               for name, srv_type in [("start", TRIGGER), ("stop", TRIGGER), ("set_task", SET_TASK)]}
    trigger, set_task = service_classes(TRIGGER)[0](), service_classes(SET_TASK)[0]
    try:
        text = probe.transport.create_publisher(CONTRACT.instruction.topic, STRING,
                                                transport_qos(CONTRACT.instruction.qos, CONTRACT.instruction.topic))
        text.publish(T[STRING](data="turn on the led"))
        wait_for(lambda: probe.diagnostics and probe.diagnostics[-1]["last_decision"] == "command", 30,
                 f"commands; output: {output[-10:]}")
        stopped = clients["stop"].call(trigger, timeout=10)
        stopped_at = sim.t  # the node's time is at most this when it answered
        assert stopped.success and stopped.message == "stopped: holding the last command until start"

        def after_stop() -> list[dict]:  # ticks a period after the answer, at the latest (the clock's lag)
            return [d for d in list(probe.diagnostics) if d["time"] is not None and d["time"] > stopped_at + PERIOD]

        wait_for(lambda: len(after_stop()) >= 6, 10, "diagnostics after the stop")
        assert {d["last_decision"] for d in after_stop()} == {"hold"} and after_stop()[-1]["stopped"]
        changed = clients["set_task"].call(set_task(task="open the drawer"), timeout=10)
        assert changed.success and changed.message == "task 'open the drawer' (stopped: start runs it)"
        started = clients["start"].call(trigger, timeout=10)
        assert started.success and started.message == "running 'open the drawer'"
        wait_for(lambda: probe.diagnostics[-1]["last_decision"] == "command", 10, "commands after start")
        assert probe.diagnostics[-1]["task"] == "open the drawer" and not probe.diagnostics[-1]["stopped"]
        assert policy.running
        get_state = probe.transport.create_client("/dream_policy/get_state", "lifecycle_msgs/srv/GetState")
        current = get_state.call(service_classes("lifecycle_msgs/srv/GetState")[0](), timeout=10).current_state
        assert (current.id, current.label) == (3, "active")  # lifecycle_msgs State.PRIMARY_STATE_ACTIVE
    finally:
        sim.stop()
        code = policy.stop()
    assert code == 0, output[-20:]


def test_dream_policy_up_with_a_bad_contract_says_so_on_one_line(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("observations:\n  - feature: rgb_static\n")
    result = subprocess.run([sys.executable, "-m", "dream_policy", "up", "sim", f"contract_file={bad}"], cwd=ROOT,
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(f"dream-policy: error: bad contract: {bad}: ") and result.stderr.count("\n") == 1
    assert not result.stdout

