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

Configuration: Cyclone reads ``CYCLONEDDS_URI`` when a process creates the first participant of a domain,
so set it (e.g. ``os.environ["CYCLONEDDS_URI"] = loopback_config()``) before the first transport.
The domain id is ``ROS_DOMAIN_ID`` (default 0).
"""

from __future__ import annotations

import logging
import os
import re
import threading
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
    Durability,
    MessageCallback,
    QosProfile,
    Reliability,
    check_node_name,
    message_type_name,
    numpy_dtype,
    ros_typestore,
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
    """``pkg/msg/T`` -> ``pkg::msg::dds_::T_``."""
    package, kind, name = msg_type.split("/")
    return f"{package}::{kind}::dds_::{name}_"


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

    def binding(self, msg_type: str) -> IdlBinding:
        if msg_type not in self._bindings:
            self._bindings[msg_type] = self._build(message_type_name(msg_type, self.typestore))
        return self._bindings[msg_type]

    def _build(self, msg_type: str) -> IdlBinding:
        members: dict[str, Any] = {}
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
        idl_cls = make_idl_struct(msg_type.replace("/", "_"), dds_type_name(msg_type), members)
        _serialize_as_bytes(idl_cls, byte_sequences)
        ros_cls = self.typestore.types[msg_type]

        def convert_to_idl(msg: Any) -> IdlStruct:
            return idl_cls(*[to(getattr(msg, name)) for name, to in to_idl])

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
    """Endpoint QoS as rmw_cyclonedds sets it: KEEP_LAST, reliability, durability, XCDR1, type hash."""
    reliability = (
        Policy.Reliability.Reliable(max_blocking_time=duration(milliseconds=100))
        if qos.reliability == Reliability.RELIABLE
        else Policy.Reliability.BestEffort
    )
    durability = {
        Durability.VOLATILE: Policy.Durability.Volatile,
        Durability.TRANSIENT_LOCAL: Policy.Durability.TransientLocal,
    }[qos.durability]
    type_hash = f"typehash={typestore.hash_rihs01(msg_type)};".encode()
    return Qos(
        Policy.History.KeepLast(qos.depth),
        reliability,
        durability,
        Policy.DataRepresentation(use_cdrv0_representation=True),
        Policy.Userdata(type_hash),
    )


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


class DdsTransport:
    """One DDS participant (the "node"); callbacks of all its subscriptions run on one dispatch thread."""

    def __init__(self, node_name: str, domain_id: int | None = None,
                 typestore: Typestore | None = None) -> None:
        self.node_name = check_node_name(node_name)
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
        self._subscriptions: list[DdsSubscription] = []
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
        self._subscriptions.append(subscription)
        self._waitset.attach(subscription.condition)
        self._wakeup.set(True)  # the dispatch thread may be waiting on the set as it was before the attach
        return subscription

    def close(self) -> None:
        """Stop the dispatch thread and delete the participant with all its readers and writers."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("close() from a subscription callback would delete the reader it runs on")
        if self._closed:
            return
        self._closed = True
        self._wakeup.set(True)
        self._thread.join()
        self._participant.__del__()  # dds_delete, recursive; the cyclonedds binding has no public delete

    def _topic(self, topic: str, msg_type: str | type) -> tuple[Topic, IdlBinding]:
        if self._closed:
            raise RuntimeError(f"transport {self.node_name!r} is closed")
        binding = self._types.binding(message_type_name(msg_type, self._types.typestore))
        name = dds_topic_name(topic)
        if name not in self._topics:
            self._topics[name] = (Topic(self._participant, name, binding.idl_cls), binding)
        elif self._topics[name][1] is not binding:
            raise ValueError(f"topic {topic} has type {self._topics[name][1].msg_type}, "
                             f"not {binding.msg_type}")
        return self._topics[name]

    def _dispatch(self) -> None:
        while True:
            self._waitset.wait(duration(infinite=True))
            self._wakeup.set(False)  # before the check: close() sets _closed first, then the guard
            if self._closed:
                return
            for subscription in list(self._subscriptions):
                subscription.deliver()
