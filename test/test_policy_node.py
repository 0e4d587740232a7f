"""PolicyNode over the in-memory transport, with a hand-ticked timer, a fake clock and fake policies: the
topics and services of the contract, commands at ticks, holds (stale camera, stop, deactivate), dropped
messages and chunks, a slow policy on the worker thread, joint trajectories, sim time; and the fake
transport itself."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from test_policy_runner import (
    ARM,
    CONTRACT,
    IMAGES,
    JOINTS,
    MEASURED,
    PERIOD,
    ROOT,
    SCENE,
    T0,
    WIDTH,
    BlockingPolicy,
    ChunkPolicy,
    actions,
    calvin_targets,
    joint_msg,
    pose_msg,
)

from ros_nodes.contract import FLOAT64, FLOAT64_ARRAY, JOINT_TRAJECTORY, STRING, Topic, load_contract
from ros_nodes.contract import QosProfile as ContractQos
from ros_nodes.convert import TYPESTORE, fit_rgb, header, pose_to_tcp, rgb_to_compressed, rgb_to_image
from ros_nodes.fake_transport import FakeBus, FakeTransport
from ros_nodes.lifecycle import LifecycleError, State, autostart
from ros_nodes.policy_node import (
    InferenceWorker,
    PolicyNode,
    PolicyNodeConfig,
    ThreadTimer,
    message_sample,
    resolve_name,
    transport_qos,
)
from ros_nodes.policy_runner import PolicyRunnerConfig
from ros_nodes.transport.base import (
    DEFAULT,
    SENSOR,
    SET_TASK,
    TRIGGER,
    Durability,
    QosProfile,
    Reliability,
    service_classes,
)

T = TYPESTORE.types
TARGET, GRIPPER = CONTRACT.actions.target.topic, CONTRACT.actions.gripper.topic
SERVICES = CONTRACT.services
DIAGNOSTICS = "/dream_policy/diagnostics"
TRIGGER_REQUEST, TRIGGER_RESPONSE = service_classes(TRIGGER)
SET_TASK_REQUEST, SET_TASK_RESPONSE = service_classes(SET_TASK)


class ManualTimer:
    """The control timer of the tests: they call node.control_tick() themselves."""

    def __init__(self, period_s: float, callback) -> None:
        self.period_s, self.callback, self.running = period_s, callback, False

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False


class InlineWorker:
    """Runs the inference inside the tick that requests it, so tests are deterministic."""

    def __init__(self, job) -> None:
        self.job = job

    def start(self) -> None:
        pass

    def request(self) -> bool:
        self.job()
        return True

    def stop(self) -> None:
        pass


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def scene_msg(values: np.ndarray = SCENE):
    return T[FLOAT64_ARRAY](layout=T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0), data=values.copy())


class Sim:
    """Publishes the contract's streams (as the sim node does) and the user's instructions; calls the
    node's services as an operator would."""

    def __init__(self, bus: FakeBus) -> None:
        self.transport = FakeTransport("sim", bus)
        self.streams = {s.feature: self.transport.create_publisher(s.topic, s.type, transport_qos(s.qos, s.topic))
                        for s in CONTRACT.observations}
        instruction = CONTRACT.instruction
        self.text = {"instruction": self.transport.create_publisher(
            instruction.topic, STRING, transport_qos(instruction.qos, instruction.topic))}
        self.clients = {"start": self.transport.create_client(SERVICES.start, TRIGGER),
                        "stop": self.transport.create_client(SERVICES.stop, TRIGGER),
                        "set_task": self.transport.create_client(SERVICES.set_task, SET_TASK)}

    def call(self, service: str, task: str | None = None):
        """The node's response to a call of the contract's ``service`` (set_task: with ``task``)."""
        request = TRIGGER_REQUEST() if task is None else SET_TASK_REQUEST(task=task)
        return self.clients[service].call(request, timeout=1.0)

    def frame(self, t: float, skip: tuple[str, ...] = ()) -> None:
        msgs = {**{f: rgb_to_image(image, t, "camera") for f, image in IMAGES.items()},
                "robot_obs.tcp_pose": pose_msg(t), "robot_obs.arm_joints": joint_msg(t),
                "robot_obs.gripper_width": T[FLOAT64](data=WIDTH), "scene_obs": scene_msg()}
        for feature, msg in msgs.items():
            if feature not in skip:
                self.streams[feature].publish(msg)

    def say(self, topic: str, text: str) -> None:
        self.text[topic].publish(T[STRING](data=text))


@pytest.fixture
def bus() -> FakeBus:
    return FakeBus()


def make_node(bus: FakeBus, policy, contract=CONTRACT, clock: Clock | None = None, worker=InlineWorker,
              **config) -> PolicyNode:
    return PolicyNode(FakeTransport("dream_policy", bus), contract, lambda: policy, PolicyNodeConfig(**config),
                      clock=clock or Clock(), timer_factory=ManualTimer, worker_factory=worker)


def run_ticks(node: PolicyNode, sim: Sim, clock: Clock, ticks: range, skip: tuple[str, ...] = ()) -> list:
    """Per tick: the sim publishes a frame stamped with the tick time, then the node ticks."""
    decisions = []
    for k in ticks:
        clock.t = T0 + k * PERIOD
        sim.frame(clock.t, skip)
        decisions.append(node.control_tick())
    return decisions


def published_pose(msg) -> np.ndarray:
    return np.concatenate(pose_to_tcp(msg))


def test_lifecycle_wires_the_contract_topics_and_the_timer(bus):
    node = make_node(bus, ChunkPolicy(actions(3, 0)))
    node.configure()
    for topic in [s.topic for s in CONTRACT.observations] + [CONTRACT.instruction.topic]:
        assert bus.subscription_count(topic) == 1, topic
    for name in vars(SERVICES).values():
        assert bus.server(name) is not None, name
    node.activate()
    timer = node._timer
    assert timer.running and timer.period_s == pytest.approx(1 / 30) and timer.callback == node.control_tick
    node.deactivate()
    assert not timer.running
    with pytest.raises(RuntimeError, match="inactive: control ticks run while active"):
        node.control_tick()
    node.cleanup()
    node.configure()  # the endpoints are made once and reused
    assert bus.subscription_count(CONTRACT.instruction.topic) == 1
    node.shutdown()
    assert node.state is State.FINALIZED and bus.subscription_count(CONTRACT.instruction.topic) == 0
    assert bus.server(SERVICES.stop) is None


def test_an_instruction_makes_commands_at_ticks(bus):
    first = actions(3, 1, gripper=-1.0)
    policy = ChunkPolicy(first)
    clock = Clock()
    node = autostart(make_node(bus, policy, clock=clock, runner=PolicyRunnerConfig(blend="replace")))
    sim = Sim(bus)
    assert [d.kind for d in run_ticks(node, sim, clock, range(3))] == ["none", "none", "hold"]
    assert not policy.calls  # no instruction, no inference: the measured pose is held
    np.testing.assert_allclose(published_pose(bus.messages(TARGET)[-1]), MEASURED, atol=1e-9)

    sim.say("instruction", "open the drawer")
    decisions = run_ticks(node, sim, clock, range(3, 8))
    assert all(d.kind == "command" for d in decisions)
    assert policy.calls[0][1] == "open the drawer"
    targets = bus.messages(TARGET)
    assert len(targets) == 1 + 5 and targets[-1].header.frame_id == CONTRACT.actions.frame_id
    np.testing.assert_allclose(published_pose(targets[1]), calvin_targets(MEASURED, first)[0][:6], atol=1e-9)
    assert [m.data for m in bus.messages(GRIPPER)[1:]] == [CONTRACT.actions.gripper.closed] * 5


def test_a_stopped_camera_holds_within_two_periods_and_commands_resume(bus):
    clock = Clock()
    node = autostart(make_node(bus, ChunkPolicy(actions(60, 2) * 0.1), clock=clock))
    sim = Sim(bus)
    sim.say("instruction", "slide the door")
    assert run_ticks(node, sim, clock, range(1))[0].kind == "command"
    decisions = run_ticks(node, sim, clock, range(1, 12), skip=("rgb_static",))
    first_stale = next(k for k in range(1, 12) if k * PERIOD > CONTRACT.stream("rgb_static").stale_s + 1e-9)
    kinds = [d.kind for d in decisions]
    assert kinds[:first_stale - 1] == ["command"] * (first_stale - 1)
    assert kinds[first_stale - 1:] == ["none"] + ["hold"] * (11 - first_stale)
    assert run_ticks(node, sim, clock, range(12, 14))[-1].kind == "command"  # frames are back


def test_malformed_messages_are_dropped_and_counted_and_the_node_goes_on(bus):
    clock = Clock()
    node = autostart(make_node(bus, ChunkPolicy(actions(3, 3)), clock=clock))
    sim = Sim(bus)
    sim.say("instruction", "open the drawer")
    bad = [rgb_to_image(np.zeros((100, 100, 3), np.uint8), T0, "camera"),  # wrong size
           T["sensor_msgs/msg/Image"](header=header(T0, "camera"), height=200, width=200, encoding="bgr8",
                                      is_bigendian=0, step=600, data=np.zeros(120000, np.uint8))]  # encoding
    for msg in bad:
        sim.streams["rgb_static"].publish(msg)
    sim.streams["robot_obs.tcp_pose"].publish(pose_msg(T0, position=[np.nan, 0.0, 0.5]))
    sim.streams["robot_obs.gripper_width"].publish(T[FLOAT64](data=float("inf")))
    assert all(d.kind == "command" for d in run_ticks(node, sim, clock, range(3)))
    counts = node.runner.diagnostics()["counts"]
    assert counts["malformed/rgb_static"] == 2 and counts["malformed/robot_obs.tcp_pose"] == 1
    assert counts["malformed/robot_obs.gripper_width"] == 1 and node.runner.diagnostics()["loop"]["dropped"] == 4


def test_a_non_finite_chunk_publishes_no_command(bus):
    bad = actions(3, 4)
    bad[0, 0] = np.inf
    clock = Clock()
    node = autostart(make_node(bus, ChunkPolicy(bad), clock=clock))
    sim = Sim(bus)
    sim.say("instruction", "open the drawer")
    assert [d.kind for d in run_ticks(node, sim, clock, range(3))] == ["none", "none", "hold"]
    diagnostics = json.loads(bus.messages(DIAGNOSTICS)[-1].data)
    assert diagnostics["counts"]["nonfinite_chunks"] == 1


def test_the_stop_service_holds_from_the_next_tick_until_the_start_service(bus):
    policy = ChunkPolicy(actions(60, 5) * 0.1)
    clock = Clock()
    node = autostart(make_node(bus, policy, clock=clock))
    sim = Sim(bus)
    sim.say("instruction", "open the drawer")
    decisions = run_ticks(node, sim, clock, range(2))
    assert [d.kind for d in decisions] == ["command", "command"]
    published = len(bus.messages(TARGET))
    stopped = sim.call("stop")
    assert stopped.__msgtype__ == "std_srvs/srv/Trigger_Response"
    assert stopped.success and stopped.message == "stopped: holding the last command until start"
    assert len(bus.messages(TARGET)) == published  # the call itself publishes nothing
    # the chunk still had actions left: the very next tick holds the last command instead of going on
    for decision in run_ticks(node, sim, clock, range(2, 5)):
        assert decision.kind == "hold" and decision.reasons == ("stopped: stop service",)
        np.testing.assert_allclose(decision.command.as_array(), decisions[-1].command.as_array())
    sim.say("instruction", "push the block")  # neither undoes the stop
    assert sim.call("set_task", "close the drawer").message == "task 'close the drawer' (stopped: start runs it)"
    assert run_ticks(node, sim, clock, range(5, 6))[0].kind == "hold"
    calls = len(policy.calls)
    started = sim.call("start")
    assert started.success and started.message == "running 'close the drawer'"  # the task set last
    assert run_ticks(node, sim, clock, range(6, 7))[0].kind == "command"
    assert len(policy.calls) == calls + 1 and policy.calls[-1][1] == "close the drawer"


def test_the_set_task_service_changes_the_instruction_of_a_running_node(bus):
    policy = ChunkPolicy(actions(60, 12) * 0.1)
    clock = Clock()
    node = autostart(make_node(bus, policy, clock=clock))
    sim = Sim(bus)
    refused = sim.call("start")  # no task yet
    assert not refused.success and refused.message == "start needs a task: send an instruction or set_task first"
    sim.say("instruction", "open the drawer")
    run_ticks(node, sim, clock, range(2))
    assert policy.calls[-1][1] == "open the drawer"
    response = sim.call("set_task", "  turn on the led ")
    assert response.__msgtype__ == "dream_policy_interfaces/srv/SetTask_Response"
    assert response.success and response.message == "task 'turn on the led'"
    # a new task clears the chunks: the next tick infers again, with the new instruction
    assert run_ticks(node, sim, clock, range(2, 3))[0].kind == "command"
    assert policy.calls[-1][1] == "turn on the led"
    node.publish_diagnostics()
    assert json.loads(bus.messages(DIAGNOSTICS)[-1].data)["task"] == "turn on the led"
    empty = sim.call("set_task", " ")
    assert not empty.success and "non-empty text" in empty.message and node.runner.task == "turn on the led"


def test_services_answer_but_do_nothing_while_the_node_is_unconfigured(bus):
    node = make_node(bus, ChunkPolicy(actions(3, 13)))
    node.configure()
    node.cleanup()  # the services stay, the runner is gone
    sim = Sim(bus)
    response = sim.call("stop")
    assert not response.success and response.message == "node 'dream_policy' is unconfigured"


def test_a_service_type_the_transport_lacks_is_left_out(bus, caplog):
    class NoSetTask(FakeTransport):
        def create_service(self, name, srv_type, handler):
            if srv_type == SET_TASK:
                raise LookupError(f"service type {srv_type} is not installed")
            return super().create_service(name, srv_type, handler)

    node = PolicyNode(NoSetTask("dream_policy", bus), CONTRACT, lambda: ChunkPolicy(actions(3, 14)),
                      clock=Clock(), timer_factory=ManualTimer, worker_factory=InlineWorker)
    autostart(node)
    assert bus.server(SERVICES.stop) is not None and bus.server(SERVICES.set_task) is None
    assert f"service {SERVICES.set_task} is not served: service type {SET_TASK} is not installed" in caplog.text


def test_deactivate_publishes_a_safe_stop_and_activate_goes_on(bus):
    clock = Clock()
    node = autostart(make_node(bus, ChunkPolicy(actions(3, 6)), clock=clock))
    sim = Sim(bus)
    sim.say("instruction", "open the drawer")
    last = run_ticks(node, sim, clock, range(2))[-1].command
    count = len(bus.messages(TARGET))
    node.deactivate()
    held = bus.messages(TARGET)[count:]
    assert len(held) == 1 and node.runner.diagnostics()["stopped"]
    np.testing.assert_allclose(published_pose(held[0]), last.as_array()[:6], atol=1e-9)
    assert json.loads(bus.messages(DIAGNOSTICS)[-1].data)["last_decision"] == "hold"
    node.activate()
    assert run_ticks(node, sim, clock, range(2, 3))[0].kind == "command"  # the task goes on
    node.shutdown()  # from active: one more safe stop, then the transport closes
    assert len(bus.messages(TARGET)) == count + 3
    assert bus.subscription_count(CONTRACT.instruction.topic) == 0


def test_a_slow_policy_runs_on_the_worker_one_inference_at_a_time(bus):
    policy = BlockingPolicy(actions(3, 7))
    clock = Clock()
    node = autostart(make_node(bus, policy, clock=clock, worker=InferenceWorker))
    sim = Sim(bus)
    sim.say("instruction", "open the drawer")
    assert run_ticks(node, sim, clock, range(1))[0].kind == "none"  # requests the inference, which blocks
    assert policy.entered.wait(5.0)
    started = time.perf_counter()
    decisions = [node.control_tick() for _ in range(3)]  # the ticks go on while the policy runs
    assert time.perf_counter() - started < 1.0 and [d.kind for d in decisions] == ["none", "none", "none"]
    policy.release.set()
    deadline = time.monotonic() + 5.0
    while node.runner.diagnostics()["counts"].get("chunks", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(policy.calls) == 1  # the ticks while it ran started no second inference
    assert node.control_tick().kind == "command"
    node.shutdown()  # joins the worker


def test_joint_trajectory_mode_needs_ik_and_publishes_trajectories(bus):
    actions_config = replace(CONTRACT.actions, mode="joint_trajectory", joint_names=JOINTS,
                             target=Topic("/arm/joint_trajectory", type=JOINT_TRAJECTORY))
    contract = replace(CONTRACT, actions=actions_config)
    node = make_node(bus, ChunkPolicy(actions(3, 8)), contract=contract)
    with pytest.raises(LifecycleError, match="joint_trajectory needs ik="):
        node.configure()
    assert node.state is State.UNCONFIGURED
    clock = Clock()
    node = PolicyNode(FakeTransport("dream_policy", bus), contract, lambda: ChunkPolicy(actions(3, 8)),
                      clock=clock, timer_factory=ManualTimer, worker_factory=InlineWorker,
                      ik=lambda command, joints: joints + 0.01)
    autostart(node)
    sim = Sim(bus)
    sim.say("instruction", "open the drawer")
    assert run_ticks(node, sim, clock, range(1))[0].kind == "command"
    [trajectory] = bus.messages("/arm/joint_trajectory")
    assert list(trajectory.joint_names) == list(JOINTS)
    np.testing.assert_allclose(trajectory.points[0].positions, ARM + 0.01)


def test_diagnostics_are_strict_json_on_the_node_topic(bus):
    clock = Clock()
    node = autostart(make_node(bus, ChunkPolicy(actions(3, 9)), clock=clock, diagnostics_period_s=1.5 * PERIOD))
    sim = Sim(bus)
    run_ticks(node, sim, clock, range(5))
    messages = bus.messages(DIAGNOSTICS)
    assert len(messages) == 3  # ticks 0, 2, 4
    diagnostics = json.loads(messages[-1].data, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert diagnostics["loop"]["ticks"] == 5 and diagnostics["loop"]["inference_p50_s"] is None
    assert diagnostics["task"] is None and diagnostics["last_decision"] == "hold"
    assert diagnostics["time"] == pytest.approx(clock.t)  # the ROS time of the tick that published it


def test_sim_time_comes_from_clock_messages(bus):
    node = autostart(make_node(bus, ChunkPolicy(actions(3, 10)), clock=lambda: 0.0, use_sim_time=True))
    sim = Sim(bus)
    clock_pub = sim.transport.create_publisher("/clock", "rosgraph_msgs/msg/Clock")
    sim.say("instruction", "open the drawer")
    sim.frame(T0)
    assert node.control_tick().reasons == ("waiting for /clock",)
    assert "aligned" not in node.runner.diagnostics()["alignment"]  # nothing was stamped before the clock
    clock_pub.publish(T["rosgraph_msgs/msg/Clock"](clock=header(T0, "").stamp))
    sim.frame(T0)
    decision = node.control_tick()
    assert decision.kind == "command" and decision.command.stamp == pytest.approx(T0)


def test_a_latched_instruction_reaches_a_node_configured_later(bus):
    sim = Sim(bus)
    sim.say("instruction", "open the drawer")  # transient_local: kept for late subscribers
    node = autostart(make_node(bus, ChunkPolicy(actions(3, 11))))
    assert node.runner.running and node.runner.task == "open the drawer"


def test_fake_transport_checks_types_names_and_qos(bus):
    a, b = FakeTransport("a", bus), FakeTransport("b", bus)
    got: list = []
    publisher = a.create_publisher("/chatter", STRING, QosProfile(1, Reliability.BEST_EFFORT))
    b.create_subscription("/chatter", STRING, got.append, DEFAULT)  # reliable: no match with best effort
    b.create_subscription("/chatter", STRING, got.append, SENSOR)
    assert publisher.subscription_count() == 1
    publisher.publish(T[STRING](data="hi"))
    assert [m.data for m in got] == ["hi"] and [m.data for m in bus.messages("/chatter")] == ["hi"]
    with pytest.raises(TypeError, match="publishes std_msgs/msg/String"):
        publisher.publish(T[FLOAT64](data=1.0))
    with pytest.raises(ValueError, match="has type std_msgs/msg/String"):
        b.create_subscription("/chatter", FLOAT64, got.append)
    with pytest.raises(ValueError, match="unknown message type"):
        a.create_publisher("/other", "std_msgs/msg/Nope")
    with pytest.raises(ValueError, match="no '~'"):
        a.create_publisher("~/private", STRING)
    b.close()
    assert publisher.subscription_count() == 0
    publisher.publish(T[STRING](data="gone"))
    assert len(got) == 1
    latched = a.create_publisher("/latched", STRING, QosProfile(2, durability=Durability.TRANSIENT_LOCAL))
    for text in "xyz":
        latched.publish(T[STRING](data=text))
    late: list = []
    a.create_subscription("/latched", STRING, late.append, QosProfile(5, durability=Durability.TRANSIENT_LOCAL))
    assert [m.data for m in late] == ["y", "z"]  # the publisher's last ``depth``


def test_fake_transport_services_check_types_and_servers(bus):
    server, caller = FakeTransport("server", bus), FakeTransport("caller", bus)
    requests: list = []
    server.create_service("/node/set_task", SET_TASK,
                          lambda request: requests.append(request) or SET_TASK_RESPONSE(True, request.task.upper()))
    client = caller.create_client("/node/set_task", SET_TASK)
    assert client.service_is_ready()
    assert client.call(SET_TASK_REQUEST(task="stack")).message == "STACK" and requests[0].task == "stack"
    with pytest.raises(TypeError, match="takes dream_policy_interfaces/srv/SetTask_Request"):
        client.call(TRIGGER_REQUEST())
    with pytest.raises(ValueError, match="already has a server"):
        caller.create_service("/node/set_task", SET_TASK, lambda request: None)
    with pytest.raises(ValueError, match="unknown service type 'std_srvs/srv/Nope'"):
        caller.create_client("/node/other", "std_srvs/srv/Nope")
    with pytest.raises(ValueError, match="no '~'"):
        caller.create_client("~/private", TRIGGER)
    wrong = caller.create_client("/node/set_task", TRIGGER)
    with pytest.raises(TypeError, match="is a dream_policy_interfaces/srv/SetTask, not a std_srvs/srv/Trigger"):
        wrong.call(TRIGGER_REQUEST())
    server.create_service("/node/broken", TRIGGER, lambda request: SET_TASK_RESPONSE(True, ""))
    with pytest.raises(TypeError, match="returned .* not std_srvs/srv/Trigger_Response"):
        caller.create_client("/node/broken", TRIGGER).call(TRIGGER_REQUEST())
    caller.create_publisher("/node/set_task", STRING)  # topics and services have names of their own
    server.close()
    assert not client.service_is_ready()
    with pytest.raises(TimeoutError, match=r"service /node/set_task \(dream_policy_interfaces/srv/SetTask\): "
                                           "no server within 2 s"):
        client.call(SET_TASK_REQUEST(task="stack"), timeout=2.0)


def test_thread_timer_ticks_until_stopped_and_the_worker_runs_one_job_at_a_time():
    ticks: list[float] = []
    timer = ThreadTimer(0.01, lambda: ticks.append(time.monotonic()))
    timer.start()
    time.sleep(0.15)
    timer.stop()
    count = len(ticks)
    assert count >= 5
    time.sleep(0.03)
    assert len(ticks) == count

    gate, runs = threading.Event(), []
    worker = InferenceWorker(lambda: (runs.append(1), gate.wait(5.0)))
    worker.start()
    assert worker.request() and not worker.request()  # busy: refused
    gate.set()
    deadline = time.monotonic() + 5.0
    while not worker.request() and time.monotonic() < deadline:  # accepted again once the first run ended
        time.sleep(0.005)
    while len(runs) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    worker.stop()
    assert len(runs) == 2 and not worker.request()  # a stopped worker takes no more requests


def test_messages_of_a_hardware_contract_become_policy_samples():
    franka = load_contract(ROOT / "configs" / "contract" / "franka_hw.yaml")
    camera = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    sample = message_sample(franka.stream("rgb_static"), rgb_to_compressed(camera, T0, "cam", "png"), 0.0)
    assert sample.stamp == pytest.approx(T0)
    np.testing.assert_array_equal(sample.value, fit_rgb(camera, (200, 200)))  # centre crop, then resize
    fingers = franka.stream("robot_obs.gripper_width")
    msg = T["sensor_msgs/msg/JointState"](header=header(T0, ""), name=list(fingers.joint_names),
                                          position=np.array([0.01, 0.02]), velocity=np.zeros(0), effort=np.zeros(0))
    assert message_sample(fingers, msg, 0.0).value == pytest.approx([0.03])
    with pytest.raises(ValueError, match="cannot decode"):
        message_sample(franka.stream("rgb_gripper"), T["sensor_msgs/msg/CompressedImage"](
            header=header(T0, "cam"), format="jpeg", data=np.zeros(10, np.uint8)), 0.0)


def test_names_qos_and_config_are_checked():
    assert resolve_name("~/diagnostics", "dream_policy") == "/dream_policy/diagnostics"
    assert resolve_name("instruction", "n") == "/instruction" and resolve_name("/a/b", "n") == "/a/b"
    assert transport_qos(ContractQos("keep_last", 1, "best_effort", "transient_local"), "/t") == QosProfile(
        1, Reliability.BEST_EFFORT, Durability.TRANSIENT_LOCAL)
    with pytest.raises(ValueError, match="/t: QoS history 'keep_all'"):
        transport_qos(ContractQos("keep_all"), "/t")
    with pytest.raises(ValueError, match="node_name"):
        PolicyNodeConfig(node_name="policy node")
    with pytest.raises(ValueError, match="PolicyNodeConfig.diagnostics_topic: expected a ROS 2 name"):
        PolicyNodeConfig(diagnostics_topic="diag nostics")
    with pytest.raises(ValueError, match="PolicyNodeConfig.diagnostics_period_s"):
        PolicyNodeConfig(diagnostics_period_s=0)


def test_the_checkpoint_factory_passes_the_cache_and_names_a_missing_schedule(tmp_path, monkeypatch):
    from ros_nodes import policy_node

    made = []
    monkeypatch.setattr(policy_node, "make_policy", lambda name, **kwargs: made.append((name, kwargs)))
    schedule = tmp_path / "schedule.json"
    schedule.write_text("{}")
    for cache in ("auto", "none", str(schedule)):
        policy_node.policy_factory("checkpoint", tmp_path, "D", cache)()
    assert made == [("checkpoint", {"ckpt": str(tmp_path), "cache": c}) for c in ("auto", "none", str(schedule))]
    with pytest.raises(ValueError, match="--cache .*missing.json: no such schedule file"):
        policy_node.policy_factory("checkpoint", tmp_path, "D", str(tmp_path / "missing.json"))
    policy_node.policy_factory("expert", None, "B", "ignored")()
    assert made[-1] == ("expert", {"scene": "B"})
