"""What node code programs against: a transport for ROS 2 topics and services.

Messages are rosbags typestore objects (``typestore.types['sensor_msgs/msg/Image'](...)``); two
backends: plain DDS (``dds``, no ROS install) and rclpy (``rclpy_backend``, on machines with ROS 2).

Services: a service type ``pkg/srv/X`` has the message types ``pkg/srv/X_Request`` and
``pkg/srv/X_Response`` (ROS 2's names for them). The rosbags typestore has no service types, so the
ones in ``SERVICE_DEFINITIONS`` are registered into it as such message pairs (``service_classes``).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.msg import get_types_from_msg
from rosbags.typesys.store import Typestore

TRANSPORT_KINDS = ("auto", "rclpy", "dds")
MessageCallback = Callable[[Any], None]
ServiceHandler = Callable[[Any], Any]  # request -> response
TRIGGER = "std_srvs/srv/Trigger"
# No standard ROS 2 service takes a string and answers success + message (std_srvs has Empty, SetBool and
# Trigger only), so set_task has a type of its own: Trigger's response with a string request. A ROS install
# needs an interface package ``dream_policy_interfaces`` with srv/SetTask.srv (as in SERVICE_DEFINITIONS).
SET_TASK = "dream_policy_interfaces/srv/SetTask"
# .srv definitions (request, response) of the service types the transports know
SERVICE_DEFINITIONS: dict[str, tuple[str, str]] = {
    "std_srvs/srv/Empty": ("", ""),
    "std_srvs/srv/SetBool": ("bool data", "bool success\nstring message"),
    TRIGGER: ("", "bool success\nstring message"),
    SET_TASK: ("string task", "bool success\nstring message"),
    "lifecycle_msgs/srv/GetState": ("", "lifecycle_msgs/State current_state"),
    "lifecycle_msgs/srv/ChangeState": ("lifecycle_msgs/Transition transition", "bool success"),
}
# rosidl gives a message without fields this one uint8 member (rosbags' std_msgs/msg/Empty has it too)
EMPTY_STRUCTURE_MEMBER = "structure_needs_at_least_one_member"
DEFAULT_CALL_TIMEOUT_S = 5.0
_NODE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Reliability(Enum):
    RELIABLE = "reliable"
    BEST_EFFORT = "best_effort"


class Durability(Enum):
    VOLATILE = "volatile"
    TRANSIENT_LOCAL = "transient_local"


@dataclass(frozen=True)
class QosProfile:
    """History is always KEEP_LAST ``depth``."""

    depth: int = 10
    reliability: Reliability = Reliability.RELIABLE
    durability: Durability = Durability.VOLATILE

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"QosProfile.depth (KEEP_LAST) must be >= 1, got {self.depth}")


SENSOR = QosProfile(5, Reliability.BEST_EFFORT, Durability.VOLATILE)
DEFAULT = QosProfile(10, Reliability.RELIABLE, Durability.VOLATILE)


class Publisher(Protocol):
    topic: str

    def publish(self, msg: Any) -> None: ...

    def subscription_count(self) -> int:
        """Number of subscriptions currently matched with this publisher."""
        ...


class Subscription(Protocol):
    topic: str


class Service(Protocol):
    name: str
    srv_type: str


class Client(Protocol):
    name: str
    srv_type: str

    def service_is_ready(self) -> bool:
        """Whether a server of the service is there to call."""
        ...

    def call(self, request: Any, timeout: float = DEFAULT_CALL_TIMEOUT_S) -> Any:
        """The service's response to ``request``.

        A TimeoutError naming the service when no server is available or none answers within
        ``timeout`` seconds.
        """
        ...


class Transport(Protocol):
    def create_publisher(self, topic: str, msg_type: str | type, qos: QosProfile = DEFAULT) -> Publisher: ...

    def create_subscription(
        self, topic: str, msg_type: str | type, callback: MessageCallback, qos: QosProfile = DEFAULT
    ) -> Subscription:
        """``callback(msg)`` runs on the transport's one dispatch thread, one message at a time."""
        ...

    def create_service(self, name: str, srv_type: str, handler: ServiceHandler) -> Service:
        """``handler(request) -> response`` runs where subscription callbacks run, one call at a time.

        A handler that raises: logged, and no response on DDS (the caller times out), the default
        response on rclpy; the fake transport raises it to the caller.
        """
        ...

    def create_client(self, name: str, srv_type: str) -> Client: ...

    def close(self) -> None: ...


@lru_cache(maxsize=1)
def ros_typestore() -> Typestore:
    """The ROS 2 Jazzy message definitions, with the service types registered.

    Every transport uses it unless given another typestore.
    """
    typestore = get_typestore(Stores.ROS2_JAZZY)
    for srv_type in SERVICE_DEFINITIONS:
        service_type_names(srv_type, typestore)
    return typestore


def service_type_names(srv_type: str, typestore: Typestore) -> tuple[str, str]:
    """``pkg/srv/X`` -> (``pkg/srv/X_Request``, ``pkg/srv/X_Response``), registered in the typestore."""
    if srv_type not in SERVICE_DEFINITIONS:
        raise ValueError(f"unknown service type {srv_type!r}; known: {', '.join(SERVICE_DEFINITIONS)}")
    names = (f"{srv_type}_Request", f"{srv_type}_Response")
    if not all(name in typestore.fielddefs for name in names):
        types: dict[str, Any] = {}
        for name, definition in zip(names, SERVICE_DEFINITIONS[srv_type]):
            package, _, type_name = name.split("/")
            as_msg = f"{package}/msg/{type_name}"  # rosbags parses .msg text only, under a pkg/msg/ name
            types[name] = get_types_from_msg(definition or f"uint8 {EMPTY_STRUCTURE_MEMBER}", as_msg)[as_msg]
        typestore.register(types)
    return names


def service_classes(srv_type: str, typestore: Typestore | None = None) -> tuple[type, type]:
    """The rosbags request and response classes of ``srv_type`` (default: ``ros_typestore()``)."""
    typestore = typestore or ros_typestore()
    request, response = service_type_names(srv_type, typestore)
    return typestore.types[request], typestore.types[response]


def message_type_name(msg_type: str | type, typestore: Typestore) -> str:
    """'pkg/msg/Type' for a type name or a rosbags message class; fails if the typestore lacks it."""
    name = getattr(msg_type, "__msgtype__", msg_type)
    if not isinstance(name, str) or name not in typestore.fielddefs:
        raise ValueError(
            f"unknown message type {msg_type!r}: expected a 'pkg/msg/Type' name or rosbags message class "
            "known to the typestore, e.g. 'sensor_msgs/msg/Image'"
        )
    return name


def check_node_name(node_name: str) -> str:
    if not _NODE_NAME.match(node_name):
        raise ValueError("node_name must be letters, digits and underscores, not starting with a digit: "
                         f"{node_name!r}")
    return node_name


def numpy_dtype(base_type: str) -> np.dtype:
    """The numpy dtype rosbags uses for arrays and sequences of a ROS base type."""
    return np.dtype({"bool": np.bool_, "byte": np.uint8, "char": np.uint8}.get(base_type, base_type))


def make_transport(kind: str = "auto", *, node_name: str,
                   remappings: dict[str, str] | None = None) -> Transport:
    """``auto``: rclpy when it can be imported, else plain DDS.

    ``remappings`` (resolved from-name -> to-name, see ``lifecycle.ros_remappings``) apply to the DDS
    transport; rclpy reads the same ``--ros-args -r`` rules from the command line itself.
    """
    if kind not in TRANSPORT_KINDS:
        raise ValueError(f"unknown transport kind {kind!r}; valid kinds: {', '.join(TRANSPORT_KINDS)}")
    if kind == "rclpy" or (kind == "auto" and importlib.util.find_spec("rclpy") is not None):
        from ros_nodes.transport.rclpy_backend import RclpyTransport

        return RclpyTransport(node_name)
    from ros_nodes.transport.dds import DdsTransport

    return DdsTransport(node_name, remappings=remappings)


def transport_qos(qos: Any, topic: str) -> QosProfile:
    """The transport's QoS of a contract profile.

    ``history``, ``depth``, ``reliability``, ``durability`` as lower-case names; the transports
    keep the last ``depth`` only.
    """
    if qos.history != "keep_last":
        raise ValueError(f"{topic}: QoS history {qos.history!r} is not supported; use keep_last")
    return QosProfile(qos.depth, Reliability(qos.reliability), Durability(qos.durability))
