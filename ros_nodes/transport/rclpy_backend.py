"""The transport over rclpy, for machines with ROS 2.

Rosbags message objects are copied field by field into the rclpy message classes and back. Not
tested in CI (there is no ROS 2 install there).

Known limits: ``byte``/``char`` fields are passed through as rosbags holds them (ints), while rclpy wants
bytes/str; no standard message this project uses has them. ``close()`` destroys the node but leaves the
rclpy context initialised, since other nodes in the process may use it.
"""

from __future__ import annotations

import array
import threading
from functools import cache
from typing import Any

import numpy as np
from rosbags.interfaces import Nodetype
from rosbags.typesys.store import Typestore

from ros_nodes.transport.base import (
    DEFAULT,
    MessageCallback,
    QosProfile,
    check_node_name,
    message_type_name,
    numpy_dtype,
    ros_typestore,
)

try:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, ReliabilityPolicy
    from rclpy.qos import QoSProfile as RclpyQos
    from rosidl_runtime_py.utilities import get_message
except ImportError as error:
    raise RuntimeError(
        "the rclpy transport needs a ROS 2 install (source /opt/ros/<distro>/setup.bash); "
        "without one use make_transport('dds')"
    ) from error

message_class = cache(get_message)


def rclpy_qos(qos: QosProfile) -> RclpyQos:
    return RclpyQos(
        history=HistoryPolicy.KEEP_LAST,
        depth=qos.depth,
        reliability=ReliabilityPolicy[qos.reliability.name],
        durability=DurabilityPolicy[qos.durability.name],
    )


class MessageCopier:
    """Copies between rosbags message objects and rclpy messages, guided by the typestore's field lists."""

    def __init__(self, typestore: Typestore) -> None:
        self.typestore = typestore

    def to_rclpy(self, msg: Any, msg_type: str) -> Any:
        out = message_class(msg_type)()
        for name, (node, arg) in self.typestore.fielddefs[msg_type][1]:
            value = getattr(msg, name)
            if node == Nodetype.NAME:
                value = self.to_rclpy(value, arg)
            elif node != Nodetype.BASE and arg[0][0] == Nodetype.NAME:
                value = [self.to_rclpy(item, arg[0][1]) for item in value]
            elif isinstance(value, np.ndarray):
                value = _rclpy_array(getattr(out, name), value)
            setattr(out, name, value)
        return out

    def from_rclpy(self, msg: Any, msg_type: str) -> Any:
        values = []
        for name, (node, arg) in self.typestore.fielddefs[msg_type][1]:
            value = getattr(msg, name)
            if node == Nodetype.NAME:
                value = self.from_rclpy(value, arg)
            elif node != Nodetype.BASE and arg[0][0] == Nodetype.NAME:
                value = [self.from_rclpy(item, arg[0][1]) for item in value]
            elif node != Nodetype.BASE and arg[0][1][0] != "string":
                value = np.array(value, dtype=numpy_dtype(arg[0][1][0]))
            elif node != Nodetype.BASE:
                value = list(value)
            values.append(value)
        return self.typestore.types[msg_type](*values)


def _rclpy_array(current: Any, value: np.ndarray) -> Any:
    """``value`` in the container rclpy uses for the field (array.array, numpy array or list)."""
    if isinstance(current, array.array):
        return array.array(current.typecode, value.tobytes())
    return value if isinstance(current, np.ndarray) else value.tolist()


class RclpyPublisher:
    def __init__(self, topic: str, publisher: Any, msg_type: str, copier: MessageCopier) -> None:
        self.topic = topic
        self._publisher = publisher
        self._msg_type = msg_type
        self._copier = copier

    def publish(self, msg: Any) -> None:
        self._publisher.publish(self._copier.to_rclpy(msg, self._msg_type))

    def subscription_count(self) -> int:
        return self._publisher.get_subscription_count()


class RclpySubscription:
    def __init__(self, topic: str, subscription: Any) -> None:
        self.topic = topic
        self._subscription = subscription


class RclpyTransport:
    """One rclpy node spun by a single-threaded executor on a background thread (callbacks run there)."""

    def __init__(self, node_name: str, typestore: Typestore | None = None) -> None:
        if not rclpy.ok():
            rclpy.init()
        self._copier = MessageCopier(typestore or ros_typestore())
        self._node = rclpy.create_node(check_node_name(node_name))
        self._executor = SingleThreadedExecutor()
        self._executor.add_node(self._node)
        self._thread = threading.Thread(target=self._executor.spin, name=f"rclpy-{node_name}", daemon=True)
        self._thread.start()

    def create_publisher(self, topic: str, msg_type: str | type, qos: QosProfile = DEFAULT) -> RclpyPublisher:
        name = message_type_name(msg_type, self._copier.typestore)
        publisher = self._node.create_publisher(message_class(name), topic, rclpy_qos(qos))
        return RclpyPublisher(topic, publisher, name, self._copier)

    def create_subscription(
        self, topic: str, msg_type: str | type, callback: MessageCallback, qos: QosProfile = DEFAULT
    ) -> RclpySubscription:
        name = message_type_name(msg_type, self._copier.typestore)

        def deliver(msg: Any) -> None:
            callback(self._copier.from_rclpy(msg, name))

        subscription = self._node.create_subscription(message_class(name), topic, deliver, rclpy_qos(qos))
        return RclpySubscription(topic, subscription)

    def close(self) -> None:
        self._executor.shutdown()
        self._thread.join()
        self._node.destroy_node()
