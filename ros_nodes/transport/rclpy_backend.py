"""The transport over rclpy, for machines with ROS 2.

Rosbags message objects are copied field by field into the rclpy message classes and back. Not
tested in CI (there is no ROS 2 install there).

Services use the installed service classes (``rosidl_runtime_py``'s ``get_service``); a type that is not
installed (``dream_policy_interfaces/srv/SetTask`` until that interface package is built) makes
``create_service``/``create_client`` raise a LookupError. A handler that raises is logged and the caller
gets the default response (rclpy has to send one). ``call`` waits on the executor thread's reply, so it
must not run on that thread (from a callback): it would time out.

Known limits: ``byte``/``char`` fields are passed through as rosbags holds them (ints), while rclpy wants
bytes/str; no standard message this project uses has them. ``close()`` destroys the node but leaves the
rclpy context initialised, since other nodes in the process may use it.
"""

from __future__ import annotations

import array
import logging
import threading
import time
from functools import cache
from typing import Any

import numpy as np
from rosbags.interfaces import Nodetype
from rosbags.typesys.store import Typestore

from ros_nodes.transport.base import (
    DEFAULT,
    DEFAULT_CALL_TIMEOUT_S,
    EMPTY_STRUCTURE_MEMBER,
    MessageCallback,
    QosProfile,
    ServiceHandler,
    check_node_name,
    message_type_name,
    numpy_dtype,
    ros_typestore,
    service_type_names,
)

try:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, ReliabilityPolicy
    from rclpy.qos import QoSProfile as RclpyQos
    from rosidl_runtime_py.utilities import get_message, get_service
except ImportError as error:
    raise RuntimeError(
        "the rclpy transport needs a ROS 2 install (source /opt/ros/<distro>/setup.bash); "
        "without one use make_transport('dds')"
    ) from error

log = logging.getLogger(__name__)
message_class = cache(get_message)


@cache
def service_class(srv_type: str) -> Any:
    """The installed rclpy service class of ``pkg/srv/X``; a LookupError when it is not installed."""
    try:
        return get_service(srv_type)
    except (ImportError, AttributeError, ValueError) as error:
        raise LookupError(f"service type {srv_type} is not installed (build and source its interface "
                          f"package): {error}") from None


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

    def to_rclpy(self, msg: Any, msg_type: str, cls: type | None = None) -> Any:
        """``msg`` as an rclpy message of ``cls`` (default: the installed class of ``msg_type``)."""
        out = (cls or message_class(msg_type))()
        for name, (node, arg) in self.typestore.fielddefs[msg_type][1]:
            if name == EMPTY_STRUCTURE_MEMBER and not hasattr(out, name):
                continue  # rclpy's classes of messages without fields leave rosidl's placeholder out
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
            value = getattr(msg, name, 0) if name == EMPTY_STRUCTURE_MEMBER else getattr(msg, name)
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


class RclpyService:
    def __init__(self, name: str, srv_type: str, service: Any) -> None:
        self.name, self.srv_type = name, srv_type
        self._service = service


class RclpyClient:
    def __init__(self, name: str, srv_type: str, client: Any, copier: MessageCopier) -> None:
        self.name, self.srv_type = name, srv_type
        self._client, self._copier = client, copier
        self._request_type, self._response_type = service_type_names(srv_type, copier.typestore)

    def service_is_ready(self) -> bool:
        return self._client.service_is_ready()

    def call(self, request: Any, timeout: float = DEFAULT_CALL_TIMEOUT_S) -> Any:
        """The response; a TimeoutError naming the service when none comes within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        if not self._client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {self.name} ({self.srv_type}): no server within {timeout:g} s")
        request_class = service_class(self.srv_type).Request
        rclpy_request = self._copier.to_rclpy(request, self._request_type, request_class)
        done = threading.Event()
        future = self._client.call_async(rclpy_request)
        future.add_done_callback(lambda _: done.set())
        if not done.wait(max(0.0, deadline - time.monotonic())):
            self._client.remove_pending_request(future)
            raise TimeoutError(f"service {self.name} ({self.srv_type}): no response within {timeout:g} s")
        return self._copier.from_rclpy(future.result(), self._response_type)


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

    def create_service(self, name: str, srv_type: str, handler: ServiceHandler) -> RclpyService:
        """Serve ``name``: ``handler(request) -> response`` runs on the executor thread."""
        request_type, response_type = service_type_names(srv_type, self._copier.typestore)
        cls = service_class(srv_type)

        def serve(request: Any, response: Any) -> Any:
            try:
                result = handler(self._copier.from_rclpy(request, request_type))
                return self._copier.to_rclpy(result, response_type, cls.Response)
            except Exception:
                log.exception("service handler for %s failed: the default response is sent", name)
                return response

        return RclpyService(name, srv_type, self._node.create_service(cls, name, serve))

    def create_client(self, name: str, srv_type: str) -> RclpyClient:
        client = self._node.create_client(service_class(srv_type), name)
        return RclpyClient(name, srv_type, client, self._copier)

    def close(self) -> None:
        self._executor.shutdown()
        self._thread.join()
        self._node.destroy_node()
