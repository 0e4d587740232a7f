"""What node code programs against: a publish/subscribe transport for ROS 2 topics.

Messages are rosbags typestore objects (``typestore.types['sensor_msgs/msg/Image'](...)``); two
backends: plain DDS (``dds``, no ROS install) and rclpy (``rclpy_backend``, on machines with ROS 2).
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
from rosbags.typesys.store import Typestore

TRANSPORT_KINDS = ("auto", "rclpy", "dds")
MessageCallback = Callable[[Any], None]
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


class Transport(Protocol):
    def create_publisher(self, topic: str, msg_type: str | type, qos: QosProfile = DEFAULT) -> Publisher: ...

    def create_subscription(
        self, topic: str, msg_type: str | type, callback: MessageCallback, qos: QosProfile = DEFAULT
    ) -> Subscription:
        """``callback(msg)`` runs on the transport's one dispatch thread, one message at a time."""
        ...

    def close(self) -> None: ...


@lru_cache(maxsize=1)
def ros_typestore() -> Typestore:
    """The ROS 2 Jazzy message definitions every transport uses unless given another typestore."""
    return get_typestore(Stores.ROS2_JAZZY)


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


def make_transport(kind: str = "auto", *, node_name: str) -> Transport:
    """``auto``: rclpy when it can be imported, else plain DDS."""
    if kind not in TRANSPORT_KINDS:
        raise ValueError(f"unknown transport kind {kind!r}; valid kinds: {', '.join(TRANSPORT_KINDS)}")
    if kind == "rclpy" or (kind == "auto" and importlib.util.find_spec("rclpy") is not None):
        from ros_nodes.transport.rclpy_backend import RclpyTransport

        return RclpyTransport(node_name)
    from ros_nodes.transport.dds import DdsTransport

    return DdsTransport(node_name)


def transport_qos(qos: Any, topic: str) -> QosProfile:
    """The transport's QoS of a contract profile.

    ``history``, ``depth``, ``reliability``, ``durability`` as lower-case names; the transports
    keep the last ``depth`` only.
    """
    if qos.history != "keep_last":
        raise ValueError(f"{topic}: QoS history {qos.history!r} is not supported; use keep_last")
    return QosProfile(qos.depth, Reliability(qos.reliability), Durability(qos.durability))
