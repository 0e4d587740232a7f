"""The ROS 2 policy node: a lifecycle node that wires a PolicyRunner to a Transport (no rclpy needed).

Topics, all from the contract: the observation streams and the instruction (std_msgs/String) in; the
target (PoseStamped, or JointTrajectory through an injected IK) and the gripper command (Float64) out at
``actions.rate_hz``; JSON diagnostics (std_msgs/String) on ``diagnostics_topic``. Services, named by the
contract: start (std_srvs/srv/Trigger: run the task set before, by instruction or set_task, from a fresh
policy; releases a stop), stop (std_srvs/srv/Trigger: hold the last command from the next control tick
until start) and set_task (dream_policy_interfaces/srv/SetTask, request ``string task``: the task to run;
it does not start a stopped node). Each answers ``success`` and a ``message`` that says what happened or
why it was refused. On rclpy, a service type that is not installed (SetTask needs the interface package
``dream_policy_interfaces``) leaves that service out, with a warning.
Lifecycle: ``serve`` adds ROS 2's managed-node services (``lifecycle_services``: ``~/get_state``,
``~/change_state``, ``~/transition_event``), then configures and activates the node unless started with
``--no-autostart`` (as the launch files do: they send the transitions).
``~/x`` names resolve to ``/<node_name>/x``. The control timer and the inference worker run on their own
threads (one inference at a time); both are injectable so tests can tick by hand. Messages that do not
fit the contract (image size or encoding, joint names, non-finite values) are logged and dropped.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ros_nodes.contract import (
    FLOAT64,
    FLOAT64_ARRAY,
    GRIPPER_WIDTH,
    IMAGE,
    IMAGE_FEATURES,
    SCENE_OBS,
    STRING,
    TCP_POSE,
    Contract,
    FieldError,
    Stream,
    Topic,
    feature_shape,
    load_contract,
)
from ros_nodes.convert import (
    TYPESTORE,
    command_to_gripper,
    command_to_joint_trajectory,
    command_to_pose,
    compressed_to_rgb,
    finger_width,
    fit_rgb,
    image_to_rgb,
    joint_positions,
    pose_to_tcp,
    stamp_seconds,
)
from ros_nodes.lifecycle import (
    LifecycleNode,
    State,
    autostart,
    parse_node_args,
    stop_on_signals,
)
from ros_nodes.lifecycle import resolve_topic as resolve_name
from ros_nodes.policy_runner import PolicyRunner, PolicyRunnerConfig
from ros_nodes.safety import Decision
from ros_nodes.transport.base import (
    SET_TASK,
    TRANSPORT_KINDS,
    TRIGGER,
    Durability,
    QosProfile,
    Reliability,
    Transport,
    check_node_name,
    make_transport,
    service_classes,
    transport_qos,
)
from ros_nodes.types import Command, Sample
from sim.policy import Policy, make_policy
from sim.scene_config import SCENES

log = logging.getLogger(__name__)
CLOCK_TOPIC, CLOCK = "/clock", "rosgraph_msgs/msg/Clock"
CLOCK_QOS = QosProfile(1, Reliability.BEST_EFFORT, Durability.VOLATILE)  # matches any publisher, as ROS's
DEFAULT_CONTRACT = Path(__file__).resolve().parents[1] / "configs" / "contract" / "playtable.yaml"
SIM_CONTRACTS = ("playtable",)  # contract names of the sim node's topics: sim time by default
# (tcp target, measured arm joints (7,)) -> joint targets (7,) in the contract's joint order
JointSolver = Callable[[Command, np.ndarray], np.ndarray]
STOP_REASON = "stop service"


def _start(runner: PolicyRunner, request: Any) -> str:
    runner.start()
    return f"running {runner.task!r}"


def _stop(runner: PolicyRunner, request: Any) -> str:
    runner.stop(STOP_REASON)
    return "stopped: holding the last command until start"


def _set_task(runner: PolicyRunner, request: Any) -> str:
    runner.set_task(request.task)
    return f"task {runner.task!r}" + ("" if runner.running else " (stopped: start runs it)")


# contract service -> (service type, what it does to the runner: a message for the response)
SERVICES: dict[str, tuple[str, Callable[[PolicyRunner, Any], str]]] = {
    "start": (TRIGGER, _start),
    "stop": (TRIGGER, _stop),
    "set_task": (SET_TASK, _set_task),
}


def _finite(what: str, values: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{what} has non-finite values: {np.asarray(values).tolist()}")
    return values


def message_sample(stream: Stream, msg: Any, received: float) -> Sample:
    """The Sample a message of ``stream`` gives the runner (headerless ones stamped ``received``).

    A ValueError names what does not fit the contract. Pose and joint messages are checked here and
    kept whole for ``robot_obs_from``.
    """
    if stream.type == FLOAT64:
        return Sample(received, _finite(stream.topic, np.array([msg.data], dtype=np.float64)))
    if stream.type == FLOAT64_ARRAY:
        values, shape = np.asarray(msg.data, dtype=np.float64), feature_shape(stream.feature)
        if values.shape != shape:
            raise ValueError(f"{stream.topic}: {values.size} values, {stream.feature} has shape {shape}")
        return Sample(received, _finite(stream.topic, values))
    stamp = stamp_seconds(msg.header)
    if stream.feature in IMAGE_FEATURES:
        return Sample(stamp, _image(stream, msg))
    if stream.feature == GRIPPER_WIDTH:
        return Sample(stamp, _finite(stream.topic,
                                     np.array([finger_width(msg, stream.joint_names, stream.topic)])))
    if stream.feature == TCP_POSE:
        _finite(stream.topic, np.concatenate(pose_to_tcp(msg)))
    else:
        _finite(stream.topic, joint_positions(msg, stream.joint_names, stream.topic))
    return Sample(stamp, msg)


def _image(stream: Stream, msg: Any) -> np.ndarray:
    spec = stream.image
    if stream.type == IMAGE:
        if msg.encoding != spec.encoding:
            raise ValueError(f"{stream.topic}: encoding {msg.encoding!r}, "
                             f"the contract says {spec.encoding!r}")
        rgb = image_to_rgb(msg, (spec.height, spec.width), stream.topic)
    else:
        rgb = compressed_to_rgb(msg, (spec.height, spec.width), stream.topic)
    return fit_rgb(rgb, feature_shape(stream.feature))


class Timer(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


class Worker(Protocol):
    def start(self) -> None: ...

    def request(self) -> bool:
        """Start the job unless it is running; whether it was started."""
        ...

    def stop(self) -> None: ...


class ThreadTimer:
    """Calls ``callback`` every ``period_s`` on its own thread, on a fixed grid of deadlines.

    A late tick does not shift the later ones, and ticks missed by more than a period are skipped.
    """

    def __init__(self, period_s: float, callback: Callable[[], Any], name: str = "control-timer") -> None:
        self.period_s, self._callback = period_s, callback
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        deadline = time.monotonic()
        while True:
            deadline += self.period_s
            if self._halt.wait(max(0.0, deadline - time.monotonic())):
                return
            try:
                self._callback()
            except Exception:
                log.exception("timer callback failed")
            behind = time.monotonic() - deadline
            if behind > self.period_s:
                deadline += math.floor(behind / self.period_s) * self.period_s


class InferenceWorker:
    """Runs ``job`` on its own thread when requested, one run at a time."""

    def __init__(self, job: Callable[[], Any], name: str = "inference") -> None:
        self._job = job
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._busy = self._halted = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request(self) -> bool:
        with self._lock:
            if self._busy or self._halted:
                return False
            self._busy = True
        self._wake.set()
        return True

    def stop(self) -> None:
        """Wait for a run in progress, then end the thread."""
        with self._lock:
            self._halted = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._halted:
                return
            try:
                self._job()
            except Exception:
                log.exception("inference failed")
            finally:
                with self._lock:
                    self._busy = False


@dataclass(frozen=True)
class PolicyNodeConfig:
    node_name: str = "dream_policy"
    diagnostics_topic: str = "~/diagnostics"
    diagnostics_period_s: float = 1.0
    use_sim_time: bool = False  # ROS time from /clock (the sim node's) instead of the injected clock
    runner: PolicyRunnerConfig = field(default_factory=PolicyRunnerConfig)

    def __post_init__(self) -> None:
        check_node_name(self.node_name)
        try:
            Topic(self.diagnostics_topic)
        except FieldError as error:
            raise ValueError(f"PolicyNodeConfig.diagnostics_topic: expected {error.expected}, "
                             f"got {error.value!r}") from None
        period = self.diagnostics_period_s
        if isinstance(period, bool) or not isinstance(period, (int, float)) or not 0 < period < math.inf:
            raise ValueError("PolicyNodeConfig.diagnostics_period_s must be a finite number > 0 s, "
                             f"got {period!r}")


class PolicyNode(LifecycleNode):
    """The policy node: a lifecycle node that serves a policy under a contract.

    on_configure: the policy (``policy_factory()``), subscriptions and publishers; on_activate: the
    control timer and inference worker; on_deactivate: safe stop, one hold published; on_shutdown:
    closes the transport. ``clock`` gives ROS time in seconds, the clock of the observation stamps
    (with ``use_sim_time``: the newest /clock message; nothing is stamped or ticked before the first).
    """

    def __init__(self, transport: Transport, contract: Contract, policy_factory: Callable[[], Policy],
                 config: PolicyNodeConfig = PolicyNodeConfig(), *, clock: Callable[[], float] = time.time,
                 timer_factory: Callable[[float, Callable[[], Any]], Timer] = ThreadTimer,
                 worker_factory: Callable[[Callable[[], Any]], Worker] = InferenceWorker,
                 ik: JointSolver | None = None) -> None:
        super().__init__(config.node_name)
        self.contract, self.config = contract, config
        self._transport, self._policy_factory, self._clock = transport, policy_factory, clock
        self._timer_factory, self._worker_factory, self._ik = timer_factory, worker_factory, ik
        self._runner: PolicyRunner | None = None
        self._publishers: dict[str, Any] = {}
        self._timer: Timer | None = None
        self._worker: Worker | None = None
        self._diagnostics_at = -math.inf
        self._sim_time: float | None = None

    @property
    def runner(self) -> PolicyRunner | None:
        return self._runner

    def on_configure(self) -> None:
        if self.contract.actions.mode == "joint_trajectory" and self._ik is None:
            raise ValueError("actions.mode joint_trajectory needs ik= (tcp target, joints) -> joint targets")
        # latency in ROS time, the time the chunk scheduler skips past actions in (sim time runs at its
        # own pace)
        self._runner = PolicyRunner(self.contract, self._policy_factory(), self.config.runner,
                                    latency_clock=lambda: self._now() or 0.0)
        if not self._publishers:  # endpoints live until shutdown: the Transport cannot destroy them
            self._wire()

    def on_activate(self) -> None:
        self._runner.resume()
        self._worker = self._worker_factory(self._infer)
        self._timer = self._timer_factory(self.contract.actions.period_s, self.control_tick)
        self._worker.start()
        self._timer.start()

    def on_deactivate(self) -> None:
        self._halt()

    def on_cleanup(self) -> None:
        self._runner = None

    @property
    def transport(self) -> Transport:
        return self._transport

    def now_or_wall(self) -> float:
        """ROS time (sim time once /clock has arrived), else wall-clock time (for event stamps)."""
        now = self._now()
        return time.time() if now is None else now

    def on_shutdown(self) -> None:
        if self._timer is not None:
            self._halt()
        self._runner = None
        self._transport.close()

    def control_tick(self) -> Decision:
        """One control period: start an inference when due, publish this tick's command or hold."""
        if self._timer is None:
            raise RuntimeError(f"node {self.name!r} is {self.state.value}: control ticks run while active")
        now = self._now()
        if now is None:
            return Decision(None, "none", (f"waiting for {CLOCK_TOPIC}",))
        if self._runner.inference_due(now):
            self._worker.request()
        decision = self._runner.tick(now)
        self._publish(decision)
        # due, or the clock went back
        if not 0 <= now - self._diagnostics_at < self.config.diagnostics_period_s:
            self.publish_diagnostics()
            self._diagnostics_at = now
        return decision

    def publish_diagnostics(self) -> None:
        """The runner's diagnostics with ``time``, the node's ROS time (None before the first /clock)."""
        text = json.dumps(_json_safe({"time": self._now(), **self._runner.diagnostics()}), allow_nan=False)
        self._publishers["diagnostics"].publish(TYPESTORE.types[STRING](data=text))

    def _halt(self) -> None:
        """Stop the threads, latch a safe stop and publish its hold."""
        self._timer.stop()
        self._worker.stop()
        self._timer = self._worker = None
        self._runner.safe_stop()
        now = self._now()
        if now is not None:
            self._publish(self._runner.tick(now))
        self.publish_diagnostics()

    def _now(self) -> float | None:
        return self._sim_time if self.config.use_sim_time else self._clock()

    def _on_clock(self, msg: Any) -> None:
        self._sim_time = msg.clock.sec + msg.clock.nanosec * 1e-9

    def _infer(self) -> None:
        now = self._now()
        if now is not None:
            self._runner.infer(now)

    def _name(self, name: str) -> str:
        return resolve_name(name, self.name)

    def _wire(self) -> None:
        transport, contract = self._transport, self.contract
        for stream in contract.observations:
            transport.create_subscription(self._name(stream.topic), stream.type,
                                          partial(self._on_stream, stream),
                                          transport_qos(stream.qos, stream.topic))
        instruction = contract.instruction
        transport.create_subscription(self._name(instruction.topic), STRING, self._on_instruction,
                                      transport_qos(instruction.qos, instruction.topic))
        for service, (srv_type, _) in SERVICES.items():
            name = self._name(getattr(contract.services, service))
            try:
                transport.create_service(name, srv_type, partial(self._on_service, service))
            except LookupError as error:  # rclpy without the type's interface package
                log.warning("service %s is not served: %s", name, error)
        actions = contract.actions
        self._publishers = {
            "target": transport.create_publisher(self._name(actions.target.topic), actions.target.type,
                                                 transport_qos(actions.target.qos, actions.target.topic)),
            "gripper": transport.create_publisher(self._name(actions.gripper.topic), FLOAT64,
                                                  transport_qos(actions.gripper.qos, actions.gripper.topic)),
            "diagnostics": transport.create_publisher(self._name(self.config.diagnostics_topic), STRING),
        }
        if self.config.use_sim_time:
            transport.create_subscription(CLOCK_TOPIC, CLOCK, self._on_clock, CLOCK_QOS)

    def _on_stream(self, stream: Stream, msg: Any) -> None:
        runner, now = self._runner, self._now()
        if runner is None or now is None:
            return
        try:
            runner.on_sample(stream.feature, message_sample(stream, msg, now))
        except ValueError as error:
            count = runner.on_malformed(stream.feature, str(error))
            if count & (count - 1) == 0:  # 1st, 2nd, 4th, ...: a broken stream does not flood the log
                log.warning("dropped a message on %s (%d so far): %s", stream.topic, count, error)

    def _on_instruction(self, msg: Any) -> None:
        runner = self._runner
        if runner is None:
            return
        try:
            runner.on_instruction(msg.data)
        except ValueError as error:
            log.warning("instruction refused: %s", error)

    def _on_service(self, service: str, request: Any) -> Any:
        """A call of the contract's ``service``: the response says what was done, or why not."""
        srv_type, act = SERVICES[service]
        response = service_classes(srv_type)[1]
        runner = self._runner
        if runner is None:
            return response(success=False, message=f"node {self.name!r} is {self.state.value}")
        try:
            message = act(runner, request)
        except ValueError as error:
            log.warning("%s refused: %s", service, error)
            return response(success=False, message=str(error))
        log.info("%s: %s", service, message)
        return response(success=True, message=message)

    def _publish(self, decision: Decision) -> None:
        command = decision.command
        if command is None:
            return
        actions = self.contract.actions
        if actions.mode == "pose":
            self._publishers["target"].publish(command_to_pose(command, actions.frame_id))
        else:
            joints = self._runner.measured_joints()
            if joints is None:
                log.warning("no joint states yet: the joint trajectory target is not published")
            else:
                positions = self._ik(command, joints)
                # stamp 0: the trajectory starts when the controller receives it
                self._publishers["target"].publish(command_to_joint_trajectory(
                    positions, actions.joint_names, 0.0, actions.frame_id, actions.period_s))
        self._publishers["gripper"].publish(command_to_gripper(command, actions.gripper.open,
                                                               actions.gripper.closed))


def _json_safe(value: Any) -> Any:
    """``value`` with non-finite floats (empty statistics) as None, so the JSON is strict."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---- the process ------------------------------------------------------------------------------------

def serve(node: PolicyNode, stop: threading.Event | None = None, start: bool = True) -> None:
    """Serve ``node`` until SIGINT / SIGTERM, ``stop`` or a shutdown transition.

    Its lifecycle services (``~/get_state``, ``~/change_state``, ``~/transition_event``) come up first;
    it is then configured and activated (``start``; else it waits for change_state requests, as launch_ros'
    lifecycle events send them). At the end it is wound down: deactivate (a safe stop: the hold is
    published), then shut down (the transport closes).
    """
    from ros_nodes.lifecycle_services import LifecycleServices

    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        stop_on_signals(stop)
    try:
        LifecycleServices(node, node.transport, on_shutdown_request=stop.set, clock=node.now_or_wall)
        if start:
            autostart(node)
            log.info("%s: active (contract %s)", node.name, node.contract.source)
        else:
            log.info("%s: unconfigured, waiting for %s/change_state", node.name, node.name)
        stop.wait()
        log.info("%s: stopping", node.name)
    finally:
        if node.state is State.ACTIVE:
            node.deactivate()
        if node.state is not State.FINALIZED:
            node.shutdown()


def missing_schedule(cache: str) -> bool:
    """Whether a ``cache`` choice (auto, none or a schedule JSON) names a file that is not there."""
    return str(cache) not in ("auto", "none") and not Path(str(cache)).is_file()


def policy_factory(name: str, ckpt: Path | None, scene: str, cache: str = "auto") -> Callable[[], Policy]:
    """What ``--policy`` builds at configure time; a missing checkpoint or cache schedule is named at once."""
    if name == "checkpoint":
        if ckpt is None or not ckpt.is_dir():
            raise ValueError(f"--policy checkpoint needs --ckpt FOLDER (a dream-policy train checkpoint), "
                             f"got {ckpt}")
        if missing_schedule(cache):
            raise ValueError(f"--cache {cache}: no such schedule file (auto, none or a cache schedule JSON)")
        return lambda: make_policy("checkpoint", ckpt=str(ckpt), cache=cache)
    return lambda: make_policy(name, scene=scene)


def main(argv: Sequence[str] | None = None) -> None:
    """``ros2 run dream_policy policy_node``: the policy on the contract's topics until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="policy_node", description=__doc__.splitlines()[0])
    parser.add_argument("--contract", type=Path, default=DEFAULT_CONTRACT, help="contract YAML (topics, QoS)")
    parser.add_argument("--policy", choices=("expert", "checkpoint"), default="checkpoint",
                        help="expert: the scripted expert (needs the sim-only scene_obs stream)")
    parser.add_argument("--ckpt", type=Path, default=None, help="checkpoint folder for --policy checkpoint")
    parser.add_argument("--cache", default="auto",
                        help="DiT cache of --policy checkpoint: auto (the checkpoint's "
                             "cache_schedule.json if any), none, or a schedule JSON")
    parser.add_argument("--scene", choices=SCENES, default="D", help="play-table scene the expert plans in")
    parser.add_argument("--transport", choices=TRANSPORT_KINDS, default="auto")
    parser.add_argument("--use-sim-time", action=argparse.BooleanOptionalAction, default=None,
                        help=f"ROS time from {CLOCK_TOPIC} "
                             f"(default: on with the sim contract {SIM_CONTRACTS})")
    parser.add_argument("--node-name", default=PolicyNodeConfig.node_name)
    parser.add_argument("--autostart", action=argparse.BooleanOptionalAction, default=True,
                        help="configure and activate at once (--no-autostart: wait for ~/change_state)")
    parser.add_argument("--diagnostics-period", type=float, default=PolicyNodeConfig.diagnostics_period_s,
                        help="seconds of ROS time between diagnostics messages")
    args, remappings = parse_node_args(parser, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    contract = load_contract(args.contract)
    use_sim_time = contract.name in SIM_CONTRACTS if args.use_sim_time is None else args.use_sim_time
    if args.policy == "expert" and SCENE_OBS not in [s.feature for s in contract.observations]:
        parser.error(f"--policy expert plans from the sim-only {SCENE_OBS!r} stream, which {contract.source} "
                     "does not have")
    try:
        factory = policy_factory(args.policy, args.ckpt, args.scene, args.cache)
        config = PolicyNodeConfig(args.node_name, diagnostics_period_s=args.diagnostics_period,
                                  use_sim_time=use_sim_time)
    except ValueError as error:
        parser.error(str(error))
    if args.transport == "dds":
        from ros_nodes.transport.dds import loopback_config

        os.environ.setdefault("CYCLONEDDS_URI", loopback_config())
    transport = make_transport(args.transport, node_name=args.node_name,
                               remappings=remappings)
    serve(PolicyNode(transport, contract, factory, config), start=args.autostart)


if __name__ == "__main__":
    main()
