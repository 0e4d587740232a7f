"""ROS 2 topics over plain Cyclone DDS, named and encoded as rmw_cyclonedds does, without a ROS install.

Wire mapping (rmw_cyclonedds): topic ``/a/b`` is DDS topic ``rt/a/b``; type ``pkg/msg/T`` is DDS type
``pkg::msg::dds_::T_``, a final struct whose members follow the ROS IDL in order (``char`` as uint8,
``byte`` as octet, strings as UTF-8 strings, fixed arrays as arrays, ``T[]``/``T[<=N]`` as sequences),
sent as XCDR1 (classic CDR). The test suite checks that the bytes equal rosbags' CDR serialisation, which
is the payload rosbag2 records from rmw. Not verifiable without a ROS 2 install: that a real
rmw_cyclonedds node matches these endpoints (Cyclone matches by type name when a peer sends no XTypes
type information; this binding sends some), and that rmw accepts the ``typehash=`` USER_DATA written
here (Jazzy's format). ROS graph information (``ros_discovery_info``) is not published, so ``ros2 node
list`` does not show these nodes, while ``ros2 topic list/echo`` sees the topics.

Services, as rmw_cyclonedds_cpp implements them (its rmw_node.cpp, serdata.hpp and the CDR writers):
service ``/a/b`` of type ``pkg/srv/X`` is a request topic ``rq/a/bRequest`` of DDS type
``pkg::srv::dds_::X_Request_`` and a reply topic ``rr/a/bReply`` of type ``pkg::srv::dds_::X_Response_``,
the structs of the request and response messages (a message without fields has the one member
``uint8 structure_needs_at_least_one_member``, as rosidl generates). Every request and reply payload is
the 4-byte encapsulation header, then ``cdds_request_header_t``: ``uint64 guid`` (the client's id, the
instance handle of its request writer) and ``int64 seq`` (the client's request number, from 1), in the
payload's byte order, then the message in classic CDR. The header is 16 bytes, so the message starts
8-aligned and its bytes are those of the message alone. The server echoes the request's header in the
reply; a client takes the replies with its guid and the seq it waits for and drops the others (every
client of a service reads every reply). QoS of both endpoints: reliable, volatile, keep last 10
(ROS's service default), XCDR1; USER_DATA ``clientid=<id>;`` on a client's writer and reader and
``serviceid=<id>;`` on a server's, one id per client or server (rmw's is 16 bytes of participant GUID
prefix and counter in dotted hex; only equality matters). Before replying, the server waits up to
``REPLY_MATCH_TIMEOUT_S`` for its reply writer to match a reader with the request writer's clientid
(rmw waits 100 ms, then drops the reply; a writer without clientid is answered at once, and no reply is
sent once the request writer is gone). Before sending, a client waits until the service is available as
rmw's ``rmw_service_server_is_available`` decides: a matched request reader and reply writer, and when
the readers announce a serviceid, a reply writer with one of those ids.

Here the DDS type of both topics is the message's struct with the header as a first member,
``cdds_request_header`` (``cdds_request_header_t``: ``guid``, ``seq``): a final struct in XCDR1 has no
member headers or padding before its first member, so the bytes are rmw's header-then-message payload
(the tests compare them with rosbags' CDR of the message). The header must be a member because the
cyclonedds binding checks every sample it writes or receives against the topic's type. rmw_cyclonedds
instead declares the message struct alone and adds the header in its serializer; Jazzy's rmw sends no
XTypes type information, so Cyclone matches its endpoints with these by type name. Not verifiable
without a ROS 2 install: that a real rmw_cyclonedds client or server matches these endpoints and reads
these payloads; rmw_cyclonedds versions that publish XTypes type information (newer than Jazzy) describe
the struct without the header, and Cyclone would then refuse the match; ``ros2 service list`` does not
show these services (no ``ros_discovery_info``, as for topics).

Configuration: Cyclone reads ``CYCLONEDDS_URI`` when a process creates the first participant of a domain,
so set it (e.g. ``os.environ["CYCLONEDDS_URI"] = loopback_config()``) before the first transport.
The domain id is ``ROS_DOMAIN_ID`` (default 0).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

import numpy as np
from cyclonedds.core import (
    DDSException,
    GuardCondition,
    InstanceState,
    ReadCondition,
    SampleState,
    ViewState,
    WaitSet,
)
from cyclonedds.domain import DomainParticipant
from cyclonedds.idl import IdlStruct, make_idl_struct
from cyclonedds.idl import types as idl
from cyclonedds.idl._machinery import BytesMachine
from cyclonedds.pub import DataWriter
from cyclonedds.qos import Policy, Qos
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration
from rosbags.interfaces import Nodetype
from rosbags.typesys.store import Typestore

from ros_nodes.transport.base import (
    DEFAULT,
    DEFAULT_CALL_TIMEOUT_S,
    Durability,
    MessageCallback,
    QosProfile,
    Reliability,
    ServiceHandler,
    check_node_name,
    message_type_name,
    numpy_dtype,
    ros_typestore,
    service_type_names,
)

log = logging.getLogger(__name__)
Convert = Callable[[Any], Any]
_TOPIC_NAME = re.compile(r"^/?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")
_BYTE_BASES = {"uint8", "byte", "char"}
_BASE_TYPES: dict[str, Any] = {
    "bool": bool, "byte": idl.byte, "char": idl.uint8,
    "int8": idl.int8, "int16": idl.int16, "int32": idl.int32, "int64": idl.int64,
    "uint8": idl.uint8, "uint16": idl.uint16, "uint32": idl.uint32, "uint64": idl.uint64,
    "float32": idl.float32, "float64": idl.float64,
}  # fmt: skip
_TAKE_BATCH = 64
SERVICE_QOS = QosProfile(10, Reliability.RELIABLE, Durability.VOLATILE)  # rmw_qos_profile_services_default
REPLY_MATCH_TIMEOUT_S = 1.0
_POLL_S = 0.005
# cyclonedds's Python binding converts a matched endpoint's QoS through a Python callback that fails
# ("Callfunc cqos errored") when two threads query matched endpoints at once: queries take turns
_MATCH_LOCK = threading.Lock()
_HANDLE_MASK = 2**64 - 1  # the binding returns a local entity's instance handle as a signed int64
REQUEST_HEADER_MEMBER = "cdds_request_header"
# rmw_cyclonedds's cdds_request_header_t: the client's id and its request's number
CddsRequestHeader = make_idl_struct("CddsRequestHeader", "cdds_request_header_t",
                                    {"guid": idl.uint64, "seq": idl.int64})


def loopback_config(interface: str = "lo", max_participants: int = 32) -> str:
    """Cyclone XML for CYCLONEDDS_URI: one interface, unicast discovery of local peers, no multicast.

    Peers are found at the well-known ports of participant indices 0..max_participants, so at most that
    many participants per domain on the machine.
    """
    return (
        '<CycloneDDS xmlns="https://cdds.io/config"><Domain id="any">'
        f'<General><Interfaces><NetworkInterface name="{interface}"/></Interfaces>'
        "<AllowMulticast>false</AllowMulticast></General>"
        "<Discovery><ParticipantIndex>auto</ParticipantIndex>"
        f"<MaxAutoParticipantIndex>{max_participants}</MaxAutoParticipantIndex>"
        '<Peers><Peer address="127.0.0.1"/></Peers></Discovery>'
        "</Domain></CycloneDDS>"
    )


def ros_domain_id() -> int:
    value = os.environ.get("ROS_DOMAIN_ID", "0")
    if not value.isdigit() or int(value) > 232:
        raise ValueError(f"ROS_DOMAIN_ID must be an integer in 0..232, got {value!r}")
    return int(value)


def dds_topic_name(topic: str) -> str:
    """``/a/b`` or ``a/b`` -> ``rt/a/b``."""
    if not _TOPIC_NAME.match(topic):
        raise ValueError("topic must be a ROS name like '/camera/image' (no '~' or substitutions), "
                         f"got {topic!r}")
    return "rt/" + topic.lstrip("/")


def dds_type_name(msg_type: str) -> str:
    """``pkg/msg/T`` -> ``pkg::msg::dds_::T_`` (``pkg/srv/X_Request`` -> ``pkg::srv::dds_::X_Request_``)."""
    package, kind, name = msg_type.split("/")
    return f"{package}::{kind}::dds_::{name}_"


def dds_service_topic_names(service: str) -> tuple[str, str]:
    """``/a/b`` or ``a/b`` -> (``rq/a/bRequest``, ``rr/a/bReply``)."""
    name = dds_topic_name(service)[len("rt/"):]
    return f"rq/{name}Request", f"rr/{name}Reply"


@dataclass(frozen=True)
class IdlBinding:
    """A ROS message type's IdlStruct class and the conversions to and from rosbags message objects."""

    msg_type: str
    idl_cls: type[IdlStruct]
    to_idl: Convert
    from_idl: Convert


class IdlTypes:
    """IdlStruct classes for the message types of one rosbags typestore, built on first use and cached."""

    def __init__(self, typestore: Typestore) -> None:
        self.typestore = typestore
        self._bindings: dict[str, IdlBinding] = {}
        self._service_bindings: dict[str, IdlBinding] = {}

    def binding(self, msg_type: str) -> IdlBinding:
        if msg_type not in self._bindings:
            self._bindings[msg_type] = self._build(message_type_name(msg_type, self.typestore))
        return self._bindings[msg_type]

    def service_binding(self, msg_type: str) -> IdlBinding:
        """A request or response message as a service topic carries it: behind a request header.

        The header is the struct's first member, ``cdds_request_header`` (a CddsRequestHeader, zero from
        ``to_idl``); rosbags messages do not have it.
        """
        if msg_type not in self._service_bindings:
            self._service_bindings[msg_type] = self._build(message_type_name(msg_type, self.typestore),
                                                           request_header=True)
        return self._service_bindings[msg_type]

    def _build(self, msg_type: str, request_header: bool = False) -> IdlBinding:
        members: dict[str, Any] = {REQUEST_HEADER_MEMBER: CddsRequestHeader} if request_header else {}
        to_idl: list[tuple[str, Convert]] = []
        from_idl: list[tuple[str, Convert]] = []
        byte_sequences: dict[str, int] = {}
        for name, desc in self.typestore.fielddefs[msg_type][1]:
            try:
                members[name], to, back = self._member(desc)
            except TypeError as error:
                raise TypeError(f"{msg_type}.{name}: {error}") from None
            to_idl.append((name, to))
            from_idl.append((name, back))
            if _is_byte_sequence(desc):
                byte_sequences[name] = desc[1][1]
        class_name = msg_type.replace("/", "_") + ("_with_header" if request_header else "")
        idl_cls = make_idl_struct(class_name, dds_type_name(msg_type), members)
        _serialize_as_bytes(idl_cls, byte_sequences)
        ros_cls = self.typestore.types[msg_type]

        def convert_to_idl(msg: Any) -> IdlStruct:
            header = [CddsRequestHeader(0, 0)] if request_header else []
            return idl_cls(*header, *[to(getattr(msg, name)) for name, to in to_idl])

        def convert_from_idl(sample: IdlStruct) -> Any:
            return ros_cls(*[back(getattr(sample, name)) for name, back in from_idl])

        return IdlBinding(msg_type, idl_cls, convert_to_idl, convert_from_idl)

    def _member(self, desc: tuple) -> tuple[Any, Convert, Convert]:
        """IDL member type, rosbags -> IDL value, IDL -> rosbags value."""
        node, arg = desc
        if node == Nodetype.NAME:
            nested = self.binding(arg)
            return nested.idl_cls, nested.to_idl, nested.from_idl
        if node == Nodetype.BASE:
            return _base_type(arg), _same, _same
        (element_node, element_arg), size = arg
        if element_node == Nodetype.NAME:
            nested = self.binding(element_arg)
            element = nested.idl_cls
            to, back = partial(_each, nested.to_idl), partial(_each, nested.from_idl)
        elif element_arg[0] == "string":
            element, to, back = _base_type(element_arg), list, list
        elif element_arg[0] in _BYTE_BASES:
            element, to, back = _base_type(element_arg), _to_bytes, _from_bytes
        else:
            dtype = numpy_dtype(element_arg[0])
            element, to, back = (_base_type(element_arg), partial(_to_list, dtype),
                                 partial(np.array, dtype=dtype))
        if node == Nodetype.ARRAY:
            return idl.array[element, size], to, back
        return (idl.sequence[element, size] if size else idl.sequence[element]), to, back


def _base_type(arg: tuple[str, int]) -> Any:
    name, string_bound = arg
    if name == "string":
        return idl.bounded_str[string_bound] if string_bound else str
    if name not in _BASE_TYPES:
        raise TypeError(f"ROS type {name!r} has no mapping to this DDS binding")
    return _BASE_TYPES[name]


def _is_byte_sequence(desc: tuple) -> bool:
    node, arg = desc
    return node == Nodetype.SEQUENCE and arg[0][0] == Nodetype.BASE and arg[0][1][0] in _BYTE_BASES


def _serialize_as_bytes(idl_cls: type[IdlStruct], byte_sequences: dict[str, int]) -> None:
    """Encode uint8/byte/char sequences from and to ``bytes`` in one copy.

    cyclonedds 11.0.1 packs ``sequence[uint8]`` element by element (~50 ms for a VGA image) and cannot
    describe a ``bytes`` member in XTypes; the member keeps its ``sequence[uint8]`` declaration (for type
    information) and gets the byte machine, whose wire format is the same (uint32 length, then bytes).
    """
    idl_cls.__idl__.populate()
    for machine in (idl_cls.__idl__.v1_machine, idl_cls.__idl__.v2_machine):
        for name, bound in byte_sequences.items():
            machine.members_machines[name] = BytesMachine(bound or None)


def _same(value: Any) -> Any:
    return value


def _each(convert: Convert, values: list) -> list:
    return [convert(value) for value in values]


def _to_bytes(values: Any) -> bytes:
    return np.asarray(values, dtype=np.uint8).tobytes()


def _from_bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def _to_list(dtype: np.dtype, values: Any) -> list:
    return np.asarray(values, dtype=dtype).tolist()


@cache
def idl_types(typestore: Typestore) -> IdlTypes:
    """One IdlTypes per typestore and process, so every transport shares the generated classes."""
    return IdlTypes(typestore)


def dds_qos(qos: QosProfile, msg_type: str, typestore: Typestore) -> Qos:
    """Topic endpoint QoS as rmw_cyclonedds sets it: KEEP_LAST, reliability, durability, XCDR1, type hash."""
    return endpoint_qos(qos, f"typehash={typestore.hash_rihs01(msg_type)};")


def endpoint_qos(qos: QosProfile, user_data: str) -> Qos:
    """KEEP_LAST, reliability, durability, XCDR1 and the USER_DATA text (``key=value;`` pairs)."""
    reliability = (
        Policy.Reliability.Reliable(max_blocking_time=duration(milliseconds=100))
        if qos.reliability == Reliability.RELIABLE
        else Policy.Reliability.BestEffort
    )
    durability = {
        Durability.VOLATILE: Policy.Durability.Volatile,
        Durability.TRANSIENT_LOCAL: Policy.Durability.TransientLocal,
    }[qos.durability]
    return Qos(
        Policy.History.KeepLast(qos.depth),
        reliability,
        durability,
        Policy.DataRepresentation(use_cdrv0_representation=True),
        Policy.Userdata(user_data.encode()),
    )


def user_data_value(endpoint: Any, key: str) -> str | None:
    """The value of ``key`` in a discovered endpoint's USER_DATA ``key=value;`` pairs, None if absent."""
    policy = None if endpoint is None else endpoint.qos[Policy.Userdata]
    if policy is None:
        return None
    for pair in policy.data.decode(errors="replace").split(";"):
        name, _, value = pair.partition("=")
        if name == key:
            return value
    return None


class DdsPublisher:
    def __init__(self, topic: str, writer: DataWriter, binding: IdlBinding) -> None:
        self.topic = topic
        self._writer = writer
        self._binding = binding

    def publish(self, msg: Any) -> None:
        if getattr(msg, "__msgtype__", None) != self._binding.msg_type:
            raise TypeError(f"{self.topic} publishes {self._binding.msg_type}, got {type(msg).__name__}")
        self._writer.write(self._binding.to_idl(msg))

    def subscription_count(self) -> int:
        return len(self._writer.get_matched_subscriptions())


class DdsSubscription:
    def __init__(self, topic: str, reader: DataReader, binding: IdlBinding,
                 callback: MessageCallback) -> None:
        self.topic = topic
        self.condition = ReadCondition(reader, SampleState.Any | ViewState.Any | InstanceState.Any)
        self._reader = reader
        self._binding = binding
        self._callback = callback

    def deliver(self) -> None:
        """Take every waiting sample and call the callback with each valid one, in order."""
        while True:
            samples = self._reader.take(_TAKE_BATCH, condition=self.condition)
            for sample in samples:
                if not isinstance(sample, self._binding.idl_cls):
                    continue  # an instance-state change (e.g. the writer left) carries no data
                try:
                    self._callback(self._binding.from_idl(sample))
                except Exception:
                    log.exception("subscription callback for %s failed", self.topic)
            if len(samples) < _TAKE_BATCH:
                return


class DdsService:
    """A server: takes requests on the dispatch thread and answers each with the handler's response."""

    def __init__(self, name: str, srv_type: str, reader: DataReader, writer: DataWriter,
                 request: IdlBinding, response: IdlBinding, handler: ServiceHandler) -> None:
        self.name, self.srv_type = name, srv_type
        self.condition = ReadCondition(reader, SampleState.Any | ViewState.Any | InstanceState.Any)
        self._reader, self._writer = reader, writer
        self._request, self._response = request, response
        self._handler = handler

    def deliver(self) -> None:
        """Answer every waiting request, in order."""
        while True:
            samples = self._reader.take(_TAKE_BATCH, condition=self.condition)
            for sample in samples:
                if isinstance(sample, self._request.idl_cls):  # not an instance-state change
                    self._serve(sample)
            if len(samples) < _TAKE_BATCH:
                return

    def _serve(self, sample: IdlStruct) -> None:
        try:
            response = self._handler(self._request.from_idl(sample))
            if getattr(response, "__msgtype__", None) != self._response.msg_type:
                raise TypeError(f"the handler returned {type(response).__name__}, "
                                f"not {self._response.msg_type}")
            reply = self._response.to_idl(response)
        except Exception:
            log.exception("service handler for %s failed: the request gets no response", self.name)
            return
        if self._wait_for_reply_reader(sample.sample_info.publication_handle):
            reply.cdds_request_header = sample.cdds_request_header  # echoed: the client's match
            self._writer.write(reply)

    def _wait_for_reply_reader(self, request_writer: int) -> bool:
        """Whether the reply can go out: the client's reply reader is matched (rmw waits the same way)."""
        deadline = time.monotonic() + REPLY_MATCH_TIMEOUT_S
        while (state := self._client_state(request_writer)) == "waiting":
            if time.monotonic() >= deadline:
                log.warning("%s: the client's reply reader did not match within %g s: no response sent",
                            self.name, REPLY_MATCH_TIMEOUT_S)
                return False
            time.sleep(_POLL_S)
        return state == "ready"

    def _client_state(self, request_writer: int) -> str:
        """``gone`` (its request writer left), ``ready`` or ``waiting`` (for its reply reader to match)."""
        with _MATCH_LOCK:
            writers = _matched(self._reader.get_matched_publication_data, [request_writer])
        writer = writers[0] if writers else None
        if writer is None:
            return "gone"
        client_id = user_data_value(writer, "clientid")
        if client_id is None:  # not an rmw_cyclonedds-style client: nothing to wait for
            return "ready"
        with _MATCH_LOCK:
            readers = _matched(self._writer.get_matched_subscription_data,
                               self._writer.get_matched_subscriptions())
        matched = any(user_data_value(reader, "clientid") == client_id for reader in readers)
        return "ready" if matched else "waiting"


def _matched(data_of: Callable[[int], Any], handles: list[int]) -> list[Any]:
    """Return the endpoint data of ``handles``, skipping endpoints that are gone.

    An endpoint that left between the two queries (no data, or an error) is skipped: the caller polls again.
    """
    found = []
    for handle in handles:
        try:
            data = data_of(handle)
            if data is not None:
                found.append(data)
        except Exception as error:  # noqa: BLE001 -- cyclonedds raises a bare Exception for a gone handle
            log.debug("matched endpoint %s: %s", handle, error)
    return found


class DdsClient:
    """A client: ``call`` sends a request and waits for its reply on the caller's thread.

    One call at a time (concurrent calls queue on a lock). Calling a service of the same transport from one
    of its callbacks blocks that service's dispatch thread: the call times out.
    """

    def __init__(self, name: str, srv_type: str, writer: DataWriter, reader: DataReader,
                 request: IdlBinding, response: IdlBinding, participant: DomainParticipant) -> None:
        self.name, self.srv_type = name, srv_type
        self.guid = writer.instance_handle & _HANDLE_MASK  # the request header's client id, as rmw's
        self._writer, self._reader = writer, reader
        self._request, self._response = request, response
        self._sequence = itertools.count(1)
        self._lock = threading.Lock()
        self._condition = ReadCondition(reader, SampleState.Any | ViewState.Any | InstanceState.Any)
        self._waitset = WaitSet(participant)
        self._waitset.attach(self._condition)

    def service_is_ready(self) -> bool:
        """rmw_cyclonedds's test: a matched request reader and reply writer of one server."""
        with _MATCH_LOCK:
            readers = _matched(self._writer.get_matched_subscription_data,
                               self._writer.get_matched_subscriptions())
            writers = _matched(self._reader.get_matched_publication_data,
                               self._reader.get_matched_publications())
        service_ids = {user_data_value(reader, "serviceid") for reader in readers} - {None}
        if not service_ids:
            return bool(readers) and bool(writers)
        return any(user_data_value(writer, "serviceid") in service_ids for writer in writers)

    def call(self, request: Any, timeout: float = DEFAULT_CALL_TIMEOUT_S) -> Any:
        """The response; a TimeoutError naming the service when none comes within ``timeout`` s."""
        if getattr(request, "__msgtype__", None) != self._request.msg_type:
            raise TypeError(f"service {self.name} takes {self._request.msg_type}, "
                            f"got {type(request).__name__}")
        deadline = time.monotonic() + timeout
        if not self._lock.acquire(timeout=max(0.0, timeout)):
            raise self._timeout(timeout, "another call of this client")
        try:
            while not self.service_is_ready():
                if time.monotonic() >= deadline:
                    raise self._timeout(timeout, "no server")
                time.sleep(_POLL_S)
            header = CddsRequestHeader(self.guid, next(self._sequence))
            sample = self._request.to_idl(request)
            sample.cdds_request_header = header
            self._writer.write(sample)
            return self._response.from_idl(self._reply(header, deadline, timeout))
        finally:
            self._lock.release()

    def _reply(self, header: IdlStruct, deadline: float, timeout: float) -> IdlStruct:
        """The reply with ``header``; replies to other clients and to earlier calls are dropped."""
        while True:
            for reply in self._reader.take(_TAKE_BATCH, condition=self._condition):
                if isinstance(reply, self._response.idl_cls) and reply.cdds_request_header == header:
                    return reply
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timeout(timeout, "no response")
            self._waitset.wait(duration(seconds=remaining))

    def _timeout(self, timeout: float, what: str) -> TimeoutError:
        return TimeoutError(f"service {self.name} ({self.srv_type}): {what} within {timeout:g} s")


class DdsTransport:
    """One DDS participant (the "node").

    Subscription callbacks and service handlers all run on its one dispatch thread.
    """

    def __init__(self, node_name: str, domain_id: int | None = None,
                 typestore: Typestore | None = None, remappings: dict[str, str] | None = None) -> None:
        self.node_name = check_node_name(node_name)
        self.remappings = dict(remappings or {})  # resolved name -> resolved name (ros_remappings)
        self._types = idl_types(typestore or ros_typestore())
        domain_id = ros_domain_id() if domain_id is None else domain_id
        try:
            self._participant = DomainParticipant(domain_id, qos=Qos(Policy.EntityName(node_name)))
        except DDSException as error:
            raise RuntimeError(
                f"no DDS participant in domain {domain_id}: check CYCLONEDDS_URI "
                f"({os.environ.get('CYCLONEDDS_URI', 'unset')[:200]})"
            ) from error
        self._topics: dict[str, tuple[Topic, IdlBinding]] = {}
        self._publishers: list[DdsPublisher] = []  # kept, as rclpy nodes keep theirs, until close()
        self._receivers: list[DdsSubscription | DdsService] = []  # served by the dispatch thread
        self._clients: list[DdsClient] = []
        self._endpoint_ids = itertools.count(1)
        self._waitset = WaitSet(self._participant)
        self._wakeup = GuardCondition(self._participant)
        self._waitset.attach(self._wakeup)
        self._closed = False
        self._thread = threading.Thread(target=self._dispatch, name=f"dds-{node_name}", daemon=True)
        self._thread.start()

    def create_publisher(self, topic: str, msg_type: str | type, qos: QosProfile = DEFAULT) -> DdsPublisher:
        dds_topic, binding = self._topic(topic, msg_type)
        writer = DataWriter(self._participant, dds_topic,
                            qos=dds_qos(qos, binding.msg_type, self._types.typestore))
        self._publishers.append(DdsPublisher(topic, writer, binding))
        return self._publishers[-1]

    def create_subscription(
        self, topic: str, msg_type: str | type, callback: MessageCallback, qos: QosProfile = DEFAULT
    ) -> DdsSubscription:
        dds_topic, binding = self._topic(topic, msg_type)
        reader = DataReader(self._participant, dds_topic,
                            qos=dds_qos(qos, binding.msg_type, self._types.typestore))
        subscription = DdsSubscription(topic, reader, binding, callback)
        self._dispatch_from(subscription)
        return subscription

    def create_service(self, name: str, srv_type: str, handler: ServiceHandler) -> DdsService:
        """Serve ``name``: ``handler(request) -> response`` runs on the dispatch thread."""
        request, response = self._service_bindings(srv_type)
        request_topic, reply_topic = self._service_topics(name, request, response)
        qos = endpoint_qos(SERVICE_QOS, f"serviceid={self._endpoint_id()};")
        service = DdsService(name, srv_type, DataReader(self._participant, request_topic, qos=qos),
                             DataWriter(self._participant, reply_topic, qos=qos), request, response, handler)
        self._dispatch_from(service)
        return service

    def create_client(self, name: str, srv_type: str) -> DdsClient:
        request, response = self._service_bindings(srv_type)
        request_topic, reply_topic = self._service_topics(name, request, response)
        qos = endpoint_qos(SERVICE_QOS, f"clientid={self._endpoint_id()};")
        client = DdsClient(name, srv_type, DataWriter(self._participant, request_topic, qos=qos),
                           DataReader(self._participant, reply_topic, qos=qos), request, response,
                           self._participant)
        self._clients.append(client)
        return client

    def close(self) -> None:
        """Stop the dispatch thread and delete the participant with all its readers and writers."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("close() from a callback or service handler would delete the reader it "
                               "runs on")
        if self._closed:
            return
        self._closed = True
        self._wakeup.set(True)
        self._thread.join()
        self._participant.__del__()  # dds_delete, recursive; the cyclonedds binding has no public delete

    def _topic(self, topic: str, msg_type: str | type) -> tuple[Topic, IdlBinding]:
        self._check_open()
        binding = self._types.binding(message_type_name(msg_type, self._types.typestore))
        topic = self._remapped(topic)
        return self._dds_topic(dds_topic_name(topic), binding, f"topic {topic}"), binding

    def _remapped(self, name: str) -> str:
        """``name`` after this node's remapping rules (unchanged when none matches)."""
        resolved = name if name.startswith("/") else f"/{name}"
        return self.remappings.get(resolved, name)

    def _service_bindings(self, srv_type: str) -> tuple[IdlBinding, IdlBinding]:
        self._check_open()
        request, response = service_type_names(srv_type, self._types.typestore)
        return self._types.service_binding(request), self._types.service_binding(response)

    def _service_topics(self, name: str, request: IdlBinding, response: IdlBinding) -> tuple[Topic, Topic]:
        name = self._remapped(name)
        request_name, reply_name = dds_service_topic_names(name)
        return (self._dds_topic(request_name, request, f"service {name}"),
                self._dds_topic(reply_name, response, f"service {name}"))

    def _dds_topic(self, name: str, binding: IdlBinding, what: str) -> Topic:
        """The participant's one Topic of DDS topic ``name``; ``what`` names it in errors."""
        if name not in self._topics:
            self._topics[name] = (Topic(self._participant, name, binding.idl_cls), binding)
        elif self._topics[name][1] is not binding:
            raise ValueError(f"{what} has type {self._topics[name][1].msg_type}, not {binding.msg_type}")
        return self._topics[name][0]

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"transport {self.node_name!r} is closed")

    def _endpoint_id(self) -> str:
        """A client or server id as rmw makes it: participant GUID prefix and a counter, in dotted hex."""
        return (self._participant.guid.bytes[:12] + next(self._endpoint_ids).to_bytes(4, "big")).hex(".")

    def _dispatch_from(self, receiver: DdsSubscription | DdsService) -> None:
        self._receivers.append(receiver)
        self._waitset.attach(receiver.condition)
        self._wakeup.set(True)  # the dispatch thread may be waiting on the set as it was before the attach

    def _dispatch(self) -> None:
        while True:
            self._waitset.wait(duration(infinite=True))
            self._wakeup.set(False)  # before the check: close() sets _closed first, then the guard
            if self._closed:
                return
            for receiver in list(self._receivers):
                receiver.deliver()
