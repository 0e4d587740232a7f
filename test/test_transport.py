"""The DDS transport: IDL types generated from rosbags definitions, loopback pub/sub in one process and
between two processes, services (rmw_cyclonedds's request header on the wire, calls between participants,
timeouts, the header echoed), and backend selection."""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import random
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from cyclonedds.domain import DomainParticipant
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.msg import get_types_from_msg

from ros_nodes.transport import (
    DEFAULT,
    SENSOR,
    Durability,
    QosProfile,
    Reliability,
    make_transport,
    ros_typestore,
)
from ros_nodes.transport.base import SET_TASK, TRIGGER, service_classes, service_type_names
from ros_nodes.transport.dds import (
    SERVICE_QOS,
    CddsRequestHeader,
    DdsTransport,
    IdlTypes,
    dds_service_topic_names,
    dds_topic_name,
    endpoint_qos,
    idl_types,
    loopback_config,
)

TYPES = ros_typestore().types
IMAGE_BYTES = 200 * 200 * 3
TRIGGER_REQUEST, TRIGGER_RESPONSE = service_classes(TRIGGER)
SET_TASK_REQUEST, SET_TASK_RESPONSE = service_classes(SET_TASK)


def _stamp(ns: int, frame_id: str = "base") -> Any:
    return TYPES["std_msgs/msg/Header"](TYPES["builtin_interfaces/msg/Time"](ns // 10**9, ns % 10**9), frame_id)


def _image(seed: int, stamp_ns: int = 0) -> Any:
    """A 200x200 rgb8 frame of random pixels; the frame id names the seed."""
    data = np.random.default_rng(seed).integers(0, 256, IMAGE_BYTES, dtype=np.uint8)
    return TYPES["sensor_msgs/msg/Image"](_stamp(stamp_ns, str(seed)), 200, 200, "rgb8", 0, 600, data)


def _joint_state() -> Any:
    names = [f"panda_joint{i}" for i in range(1, 8)]
    position = np.linspace(-1.0, 1.0, 7)
    return TYPES["sensor_msgs/msg/JointState"](_stamp(5), names, position, position * 0.1, np.zeros(0))


def _samples() -> dict[str, Any]:
    geometry = "geometry_msgs/msg/"
    pose = TYPES[geometry + "Pose"](TYPES[geometry + "Point"](0.4, -0.1, 0.3), TYPES[geometry + "Quaternion"](0, 1, 0, 0))
    point = TYPES["trajectory_msgs/msg/JointTrajectoryPoint"]
    duration = TYPES["builtin_interfaces/msg/Duration"]
    return {
        "sensor_msgs/msg/Image": _image(0, 1_700_000_000_123_456_789),
        "sensor_msgs/msg/JointState": _joint_state(),
        "geometry_msgs/msg/PoseStamped": TYPES[geometry + "PoseStamped"](_stamp(7), pose),
        "std_msgs/msg/String": TYPES["std_msgs/msg/String"]("pick up the red block – schnell ✓"),
        "trajectory_msgs/msg/JointTrajectory": TYPES["trajectory_msgs/msg/JointTrajectory"](
            _stamp(9),
            ["a", "b"],
            [point(np.array([0.1, 0.2]), np.array([0.0, 0.5]), np.zeros(0), np.zeros(0), duration(0, 5 * 10**8)),
             point(np.array([0.3, 0.4]), np.zeros(0), np.zeros(0), np.zeros(0), duration(1, 0))],
        ),
        "sensor_msgs/msg/CameraInfo": TYPES["sensor_msgs/msg/CameraInfo"](
            _stamp(3), 200, 200, "plumb_bob", np.zeros(5), np.arange(9.0), np.eye(3).ravel(), np.arange(12.0), 0, 0,
            TYPES["sensor_msgs/msg/RegionOfInterest"](0, 0, 0, 0, False),
        ),
    }


def _cdr(msg: Any) -> bytes:
    """Messages are equal when their CDR serialisations are (rosbags messages hold numpy arrays)."""
    return bytes(ros_typestore().serialize_cdr(msg, msg.__msgtype__))


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.mark.parametrize("msg_type", list(_samples()))
def test_idl_type_round_trip_and_wire_bytes(msg_type: str):
    msg = _samples()[msg_type]
    binding = idl_types(ros_typestore()).binding(msg_type)
    package, _, name = msg_type.split("/")
    assert binding.idl_cls.__idl_typename__ == f"{package}::msg::dds_::{name}_"
    sample = binding.to_idl(msg)
    assert _cdr(binding.from_idl(sample)) == _cdr(msg)
    # the bytes on the wire are classic CDR, as rmw serialises them (and rosbag2 records them)
    assert sample.serialize() == _cdr(msg)
    assert _cdr(binding.from_idl(type(sample).deserialize(sample.serialize()))) == _cdr(msg)


def test_bounded_and_fixed_fields_keep_their_bounds():
    typestore = get_typestore(Stores.ROS2_JAZZY)
    definition = "string<=8 label\nuint8[<=4] flags\nint16[3] counts\nbool[2] on\nfloat32[<=3] gains\nbyte raw"
    typestore.register(get_types_from_msg(definition, "test_msgs/msg/Bounded"))
    msg = typestore.types["test_msgs/msg/Bounded"](
        "gripper", np.array([1, 2], np.uint8), np.array([-1, 0, 7], np.int16), np.array([True, False]),
        np.array([0.5, 0.25], np.float32), 9,
    )
    binding = IdlTypes(typestore).binding("test_msgs/msg/Bounded")
    sample = binding.to_idl(msg)
    assert sample.serialize() == bytes(typestore.serialize_cdr(msg, "test_msgs/msg/Bounded"))
    back = binding.from_idl(type(sample).deserialize(sample.serialize()))
    assert bytes(typestore.serialize_cdr(back, "test_msgs/msg/Bounded")) == sample.serialize()
    msg.label = "longer than eight"
    with pytest.raises(Exception, match="Failed to encode member label"):
        binding.to_idl(msg).serialize()


def test_topic_names_follow_rmw():
    assert dds_topic_name("/camera/image_raw") == "rt/camera/image_raw"
    assert dds_topic_name("joint_states") == "rt/joint_states"
    for bad in ("~/private", "/a//b", "/a/", "/1a"):
        with pytest.raises(ValueError, match="ROS name"):
            dds_topic_name(bad)


@pytest.mark.parametrize("srv_type, request_msg, response_msg", [
    (TRIGGER, TRIGGER_REQUEST(), TRIGGER_RESPONSE(True, "stopped ✓")),
    (SET_TASK, SET_TASK_REQUEST("open the drawer"), SET_TASK_RESPONSE(False, "")),
])
def test_service_types_and_payloads_follow_rmw_cyclonedds(srv_type: str, request_msg: Any, response_msg: Any):
    """Type names ``pkg::srv::dds_::X_Request_``/``X_Response_``; payload: the encapsulation header, then
    cdds_request_header_t (uint64 guid, int64 seq, little endian here), then the message's CDR."""
    types = idl_types(ros_typestore())
    package, _, name = srv_type.split("/")
    guid, seq = 0x0123456789ABCDEF, 42
    for msg_type, msg, kind in zip(service_type_names(srv_type, ros_typestore()), (request_msg, response_msg),
                                   ("Request", "Response")):
        binding = types.service_binding(msg_type)
        assert binding.idl_cls.__idl_typename__ == f"{package}::srv::dds_::{name}_{kind}_"
        sample = binding.to_idl(msg)
        sample.cdds_request_header = CddsRequestHeader(guid, seq)
        cdr = _cdr(msg)
        assert sample.serialize() == cdr[:4] + struct.pack("<Qq", guid, seq) + cdr[4:]
        back = type(sample).deserialize(sample.serialize())
        assert back.cdds_request_header == CddsRequestHeader(guid, seq) and _cdr(binding.from_idl(back)) == cdr
    assert _cdr(TRIGGER_REQUEST()) == b"\x00\x01\x00\x00\x00"  # rosidl's placeholder member of an empty message
    assert dds_service_topic_names("/dream_policy/stop") == ("rq/dream_policy/stopRequest", "rr/dream_policy/stopReply")
    assert dds_service_topic_names("set_task") == ("rq/set_taskRequest", "rr/set_taskReply")
    with pytest.raises(ValueError, match="ROS name"):
        dds_service_topic_names("~/stop")


@pytest.fixture(scope="module")
def loopback() -> Iterator[dict[str, str]]:
    """CYCLONEDDS_URI on loopback and a random domain, so parallel test runs on this machine do not mix."""
    env = {"CYCLONEDDS_URI": loopback_config(), "ROS_DOMAIN_ID": str(random.SystemRandom().randint(100, 230))}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield env


@pytest.fixture
def nodes(loopback: dict[str, str]) -> Iterator[tuple[DdsTransport, DdsTransport]]:
    talker, listener = DdsTransport("talker"), DdsTransport("listener")
    yield talker, listener
    talker.close()
    listener.close()
    assert not [t for t in threading.enumerate() if t.name in ("dds-talker", "dds-listener")]


@pytest.mark.slow
def test_publish_subscribe_in_one_process(nodes: tuple[DdsTransport, DdsTransport]):
    talker, listener = nodes
    strings: list[Any] = []
    images: list[Any] = []
    listener.create_subscription("/instruction", "std_msgs/msg/String", strings.append, DEFAULT)
    listener.create_subscription("/camera/image_raw", TYPES["sensor_msgs/msg/Image"], images.append, SENSOR)
    instruction = talker.create_publisher("/instruction", "std_msgs/msg/String", DEFAULT)
    camera = talker.create_publisher("/camera/image_raw", "sensor_msgs/msg/Image", SENSOR)
    assert _wait_for(lambda: instruction.subscription_count() == 1 and camera.subscription_count() == 1)
    sent_string, sent_image = TYPES["std_msgs/msg/String"]("open the drawer"), _image(1)
    instruction.publish(sent_string)
    camera.publish(sent_image)
    assert _wait_for(lambda: strings and images)
    assert _cdr(strings[0]) == _cdr(sent_string)
    assert _cdr(images[0]) == _cdr(sent_image)
    with pytest.raises(TypeError, match="publishes std_msgs/msg/String"):
        instruction.publish(sent_image)


@pytest.mark.slow
def test_failing_callback_does_not_stop_delivery(nodes: tuple[DdsTransport, DdsTransport]):
    talker, listener = nodes
    received: list[str] = []

    def callback(msg: Any) -> None:
        received.append(msg.data)
        if msg.data == "first":
            raise RuntimeError("a bug in node code")

    listener.create_subscription("/chatter", "std_msgs/msg/String", callback)
    publisher = talker.create_publisher("/chatter", "std_msgs/msg/String")
    assert _wait_for(lambda: publisher.subscription_count() == 1)
    for text in ("first", "second"):
        publisher.publish(TYPES["std_msgs/msg/String"](text))
    assert _wait_for(lambda: len(received) == 2)
    assert received == ["first", "second"]


@pytest.mark.slow
def test_transient_local_reaches_a_late_subscriber(nodes: tuple[DdsTransport, DdsTransport]):
    talker, listener = nodes
    latched = QosProfile(1, Reliability.RELIABLE, Durability.TRANSIENT_LOCAL)
    talker.create_publisher("/task", "std_msgs/msg/String", latched).publish(TYPES["std_msgs/msg/String"]("stack"))
    received: list[Any] = []
    listener.create_subscription("/task", "std_msgs/msg/String", received.append, latched)
    assert _wait_for(lambda: received)
    assert received[0].data == "stack"


def _robot_process(env: dict[str, str], n_images: int, results: Any) -> None:
    """The other process: publishes joint states, receives camera images, reports one-way latencies."""
    os.environ.update(env)
    node = DdsTransport("robot")
    latencies_ms: list[float] = []
    intact: list[bool] = []

    def on_image(msg: Any) -> None:
        sent_ns = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        latencies_ms.append((time.time_ns() - sent_ns) / 1e6)
        intact.append(_cdr(msg) == _cdr(_image(int(msg.header.frame_id), sent_ns)))

    node.create_subscription("/camera/image_raw", "sensor_msgs/msg/Image", on_image, QosProfile(depth=n_images))
    joints = node.create_publisher("/joint_states", "sensor_msgs/msg/JointState")
    deadline = time.monotonic() + 20
    while len(latencies_ms) < n_images and time.monotonic() < deadline:
        joints.publish(_joint_state())
        time.sleep(0.02)
    node.close()
    results.put({"latencies_ms": latencies_ms, "intact": all(intact)})


@pytest.mark.slow
def test_two_processes_exchange_images_and_joint_states(loopback: dict[str, str]):
    n_images = 100
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    robot = context.Process(target=_robot_process, args=(loopback, n_images, results))
    robot.start()
    node = DdsTransport("policy")
    try:
        joint_states: list[Any] = []
        node.create_subscription("/joint_states", "sensor_msgs/msg/JointState", joint_states.append)
        camera = node.create_publisher("/camera/image_raw", "sensor_msgs/msg/Image", QosProfile(depth=n_images))
        assert _wait_for(lambda: joint_states and camera.subscription_count() == 1, timeout=15)
        assert _cdr(joint_states[0]) == _cdr(_joint_state())
        for frame in [_image(seed) for seed in range(n_images)]:
            frame.header.stamp = _stamp(time.time_ns()).stamp
            camera.publish(frame)
            time.sleep(0.005)
        report = results.get(timeout=20)
    finally:
        node.close()
        robot.join(timeout=10)
        if robot.is_alive():
            robot.kill()
    assert len(report["latencies_ms"]) == n_images
    assert report["intact"]
    print(f"\nloopback one-way latency, 200x200 rgb8 Image: p50 {np.median(report['latencies_ms']):.2f} ms")


@pytest.mark.skipif(importlib.util.find_spec("rclpy") is not None, reason="this machine has rclpy")
def test_make_transport_picks_a_backend(loopback: dict[str, str]):
    with pytest.raises(RuntimeError, match="needs a ROS 2 install"):
        make_transport("rclpy", node_name="policy")
    with pytest.raises(ValueError, match="valid kinds: auto, rclpy, dds"):
        make_transport("zenoh", node_name="policy")
    transport = make_transport("auto", node_name="policy")
    assert isinstance(transport, DdsTransport)
    transport.close()


@pytest.mark.slow
def test_services_answer_calls_from_another_participant(nodes: tuple[DdsTransport, DdsTransport]):
    server, caller = nodes
    stops: list[Any] = []
    server.create_service("/dream_policy/stop", TRIGGER,
                          lambda request: stops.append(request) or TRIGGER_RESPONSE(True, f"stop {len(stops)}"))
    server.create_service("/dream_policy/set_task", SET_TASK,
                          lambda request: SET_TASK_RESPONSE(True, f"task {request.task!r}"))
    stop = caller.create_client("/dream_policy/stop", TRIGGER)
    for n in (1, 2):
        response = stop.call(TRIGGER_REQUEST(), timeout=10)
        assert response.__msgtype__ == "std_srvs/srv/Trigger_Response"
        assert response.success and response.message == f"stop {n}"
    assert len(stops) == 2
    # two clients of one service read each other's replies: each call returns the reply to its own request
    set_task = [caller.create_client("/dream_policy/set_task", SET_TASK) for _ in range(2)]
    results: dict[str, str] = {}

    def call(client: Any, task: str) -> None:
        for k in range(5):
            results[f"{task} {k}"] = client.call(SET_TASK_REQUEST(f"{task} {k}"), timeout=10).message

    threads = [threading.Thread(target=call, args=(client, task)) for client, task in zip(set_task, "ab")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == {f"{t} {k}": f"task '{t} {k}'" for t in "ab" for k in range(5)}
    with pytest.raises(TypeError, match="takes std_srvs/srv/Trigger_Request"):
        stop.call(SET_TASK_REQUEST("x"))


@pytest.mark.slow
def test_a_call_times_out_naming_the_service(nodes: tuple[DdsTransport, DdsTransport]):
    server, caller = nodes
    client = caller.create_client("/dream_policy/start", TRIGGER)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"service /dream_policy/start \(std_srvs/srv/Trigger\): no server within "
                                           r"0.5 s"):
        client.call(TRIGGER_REQUEST(), timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 3.0
    assert not client.service_is_ready()

    def fail(request: Any) -> Any:
        raise RuntimeError("a bug in the handler")

    server.create_service("/dream_policy/start", TRIGGER, fail)  # logged; the request gets no response
    assert _wait_for(client.service_is_ready)
    with pytest.raises(TimeoutError, match=r"service /dream_policy/start \(std_srvs/srv/Trigger\): no response"):
        client.call(TRIGGER_REQUEST(), timeout=1.0)


class RawEndpoints:
    """A request writer and reply reader (or the reverse) on a participant of their own, outside the transport:
    what an rmw_cyclonedds client or server puts on the wire, header included."""

    def __init__(self, service: str, srv_type: str, client: bool) -> None:
        types = idl_types(ros_typestore())
        request, response = (types.service_binding(name) for name in service_type_names(srv_type, ros_typestore()))
        self.request, self.response = request, response
        self.participant = DomainParticipant()
        request_name, reply_name = dds_service_topic_names(service)
        qos = endpoint_qos(SERVICE_QOS, "clientid=raw;" if client else "serviceid=raw;")
        request_topic = Topic(self.participant, request_name, request.idl_cls)
        reply_topic = Topic(self.participant, reply_name, response.idl_cls)
        if client:
            self.writer = DataWriter(self.participant, request_topic, qos=qos)
            self.reader = DataReader(self.participant, reply_topic, qos=qos)
        else:
            self.writer = DataWriter(self.participant, reply_topic, qos=qos)
            self.reader = DataReader(self.participant, request_topic, qos=qos)

    def write(self, binding: Any, msg: Any, guid: int, seq: int) -> None:
        sample = binding.to_idl(msg)
        sample.cdds_request_header = CddsRequestHeader(guid, seq)
        self.writer.write(sample)

    def take_one(self, timeout: float = 10.0) -> Any:
        samples: list[Any] = []
        assert _wait_for(lambda: samples.extend(s for s in self.reader.take(10) if hasattr(s, "cdds_request_header"))
                         or samples, timeout)
        return samples[0]

    def close(self) -> None:
        self.participant.__del__()


@pytest.mark.slow
def test_the_server_echoes_the_request_header_and_the_client_matches_it(nodes: tuple[DdsTransport, DdsTransport]):
    server, caller = nodes
    server.create_service("/dream_policy/set_task", SET_TASK, lambda request: SET_TASK_RESPONSE(True, request.task))
    raw_client = RawEndpoints("/dream_policy/set_task", SET_TASK, client=True)
    try:
        assert _wait_for(lambda: raw_client.writer.get_matched_subscriptions() and
                         raw_client.reader.get_matched_publications())
        raw_client.write(raw_client.request, SET_TASK_REQUEST("stack"), guid=0xFEDCBA9876543210, seq=42)
        reply = raw_client.take_one()
        assert reply.cdds_request_header == CddsRequestHeader(0xFEDCBA9876543210, 42)
        assert raw_client.response.from_idl(reply).message == "stack"
    finally:
        raw_client.close()

    raw_server = RawEndpoints("/dream_policy/start", TRIGGER, client=False)
    client = caller.create_client("/dream_policy/start", TRIGGER)
    try:
        responses: list[Any] = []
        thread = threading.Thread(target=lambda: responses.append(client.call(TRIGGER_REQUEST(), timeout=10)))
        thread.start()
        request = raw_server.take_one()
        assert request.cdds_request_header == CddsRequestHeader(client.guid, 1)  # the writer's handle, from 1
        guid, seq = request.cdds_request_header.guid, request.cdds_request_header.seq
        raw_server.write(raw_server.response, TRIGGER_RESPONSE(True, "someone else's"), guid + 1, seq)
        raw_server.write(raw_server.response, TRIGGER_RESPONSE(True, "an older call's"), guid, seq + 7)
        raw_server.write(raw_server.response, TRIGGER_RESPONSE(True, "yours"), guid, seq)
        thread.join(10)
        assert [r.message for r in responses] == ["yours"]
    finally:
        raw_server.close()


def test_remapped_topics_and_services_use_the_new_names(loopback: dict[str, str]):
    talker = DdsTransport("talker", remappings={"/camera/image": "/cam0/image_raw", "/node/start": "/robot/start"})
    listener = DdsTransport("listener")
    try:
        got: list[Any] = []
        listener.create_subscription("/cam0/image_raw", "std_msgs/msg/String", got.append, DEFAULT)
        publisher = talker.create_publisher("camera/image", "std_msgs/msg/String", DEFAULT)  # relative: /camera/image
        assert _wait_for(lambda: publisher.subscription_count() == 1)
        publisher.publish(TYPES["std_msgs/msg/String"]("remapped"))
        assert _wait_for(lambda: got) and got[0].data == "remapped"
        talker.create_service("/node/start", TRIGGER, lambda request: TRIGGER_RESPONSE(True, "started"))
        assert listener.create_client("/robot/start", TRIGGER).call(TRIGGER_REQUEST(), timeout=10).success
    finally:
        talker.close()
        listener.close()
