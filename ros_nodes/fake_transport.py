"""An in-memory Transport for node tests.

``publish`` delivers synchronously, in the publisher's thread, to the matching subscriptions of
every FakeTransport on the same FakeBus, which keeps what was published.

As the DDS transport: message types are checked against the typestore, a topic keeps one type, topic
names are DDS-valid ROS names, and QoS decides matching (a reliable subscription gets nothing from a
best-effort publisher, a transient_local one nothing from a volatile publisher); a transient_local
publisher replays its last ``depth`` messages to transient_local subscriptions created later. Unlike it,
a callback's exception propagates out of ``publish``, so tests see it; deliveries are serialised by one
bus-wide lock, like DDS's one dispatch thread per node.

Services: ``call`` runs the server's handler synchronously, in the caller's thread and under the same
lock, and checks the request and response types; with no server on the bus it raises TimeoutError at
once (nothing can start one while it would wait), and a handler's exception propagates to the caller.
A bus has one server per service name.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

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
    ros_typestore,
    service_type_names,
)
from ros_nodes.transport.dds import dds_service_topic_names, dds_topic_name


def qos_compatible(publisher: QosProfile, subscription: QosProfile) -> bool:
    """DDS request/offer matching of reliability and durability."""
    return not ((subscription.reliability == Reliability.RELIABLE
                 and publisher.reliability == Reliability.BEST_EFFORT)
                or (subscription.durability == Durability.TRANSIENT_LOCAL
                    and publisher.durability == Durability.VOLATILE))


class FakePublisher:
    def __init__(self, bus: FakeBus, transport: FakeTransport, topic: str, msg_type: str,
                 qos: QosProfile) -> None:
        self.topic, self.msg_type, self.qos = topic, msg_type, qos
        self.transport = transport
        self.history: deque[Any] = deque(maxlen=qos.depth)  # replayed to late transient_local subscriptions
        self._bus = bus

    def publish(self, msg: Any) -> None:
        if self.transport.closed:
            raise RuntimeError(f"transport {self.transport.node_name!r} is closed")
        if getattr(msg, "__msgtype__", None) != self.msg_type:
            raise TypeError(f"{self.topic} publishes {self.msg_type}, got {type(msg).__name__}")
        self._bus.deliver(self, msg)

    def subscription_count(self) -> int:
        return len(self._bus.matched_subscriptions(self))


class FakeSubscription:
    def __init__(self, transport: FakeTransport, topic: str, msg_type: str, callback: MessageCallback,
                 qos: QosProfile) -> None:
        self.topic, self.msg_type, self.qos, self.callback = topic, msg_type, qos, callback
        self.transport = transport


class FakeService:
    def __init__(self, transport: FakeTransport, name: str, srv_type: str, handler: ServiceHandler) -> None:
        self.name, self.srv_type, self.handler = name, srv_type, handler
        self.transport = transport


class FakeClient:
    def __init__(self, bus: FakeBus, transport: FakeTransport, name: str, srv_type: str) -> None:
        self.name, self.srv_type = name, srv_type
        self.transport = transport
        self._bus = bus
        self._request_type, self._response_type = service_type_names(srv_type, bus.typestore)

    def service_is_ready(self) -> bool:
        return self._bus.server(self.name) is not None

    def call(self, request: Any, timeout: float = DEFAULT_CALL_TIMEOUT_S) -> Any:
        """The server's response; TimeoutError at once when the bus has no server of this name."""
        if self.transport.closed:
            raise RuntimeError(f"transport {self.transport.node_name!r} is closed")
        if getattr(request, "__msgtype__", None) != self._request_type:
            raise TypeError(f"service {self.name} takes {self._request_type}, got {type(request).__name__}")
        return self._bus.call(self, request, timeout)


class FakeBus:
    """The shared "network" of the FakeTransports built on it, with a log of every published message."""

    def __init__(self, typestore: Typestore | None = None) -> None:
        self.typestore = typestore or ros_typestore()
        self._lock = threading.RLock()
        self._types: dict[str, str] = {}
        self._publishers: list[FakePublisher] = []
        self._subscriptions: list[FakeSubscription] = []
        self._servers: list[FakeService] = []
        self._log: dict[str, list[Any]] = {}

    def messages(self, topic: str) -> list[Any]:
        """Every message published on ``topic`` so far, oldest first."""
        with self._lock:
            return list(self._log.get(topic, []))

    def subscription_count(self, topic: str) -> int:
        """Subscriptions of open transports on ``topic``, whatever their QoS."""
        with self._lock:
            return sum(s.topic == topic and not s.transport.closed for s in self._subscriptions)

    def topic_type(self, topic: str, msg_type: str | type) -> str:
        """The checked type name; a topic keeps the type it was first used with."""
        name = message_type_name(msg_type, self.typestore)
        dds_topic_name(topic)  # raises for names DDS would refuse
        with self._lock:
            known = self._types.setdefault(topic, name)
        if known != name:
            raise ValueError(f"topic {topic} has type {known}, not {name}")
        return name

    def server(self, name: str) -> FakeService | None:
        """The server of service ``name`` on an open transport, if there is one."""
        with self._lock:
            return next((s for s in self._servers if s.name == name and not s.transport.closed), None)

    def add_server(self, server: FakeService) -> None:
        with self._lock:
            if self.server(server.name) is not None:
                raise ValueError(f"service {server.name} already has a server on this bus")
            self._servers.append(server)

    def call(self, client: FakeClient, request: Any, timeout: float) -> Any:
        with self._lock:
            server = self.server(client.name)
            if server is None:
                raise TimeoutError(f"service {client.name} ({client.srv_type}): no server within "
                                   f"{timeout:g} s")
            if server.srv_type != client.srv_type:
                raise TypeError(f"service {client.name} is a {server.srv_type}, not a {client.srv_type}")
            response = server.handler(request)
        _, response_type = service_type_names(server.srv_type, self.typestore)
        if getattr(response, "__msgtype__", None) != response_type:
            raise TypeError(f"the handler of {client.name} returned {type(response).__name__}, "
                            f"not {response_type}")
        return response

    def add_publisher(self, publisher: FakePublisher) -> None:
        with self._lock:
            self._publishers.append(publisher)

    def add_subscription(self, subscription: FakeSubscription) -> None:
        with self._lock:
            self._subscriptions.append(subscription)
            if subscription.qos.durability != Durability.TRANSIENT_LOCAL:
                return
            for publisher in self._publishers:
                if (publisher.topic == subscription.topic and not publisher.transport.closed
                        and qos_compatible(publisher.qos, subscription.qos)):
                    for msg in publisher.history:
                        subscription.callback(msg)

    def matched_subscriptions(self, publisher: FakePublisher) -> list[FakeSubscription]:
        with self._lock:
            return [s for s in self._subscriptions if s.topic == publisher.topic and not s.transport.closed
                    and qos_compatible(publisher.qos, s.qos)]

    def deliver(self, publisher: FakePublisher, msg: Any) -> None:
        with self._lock:
            self._log.setdefault(publisher.topic, []).append(msg)
            if publisher.qos.durability == Durability.TRANSIENT_LOCAL:
                publisher.history.append(msg)
            for subscription in self.matched_subscriptions(publisher):
                subscription.callback(msg)


class FakeTransport:
    """One node's endpoints on a FakeBus (a new bus of its own when none is given)."""

    def __init__(self, node_name: str = "fake", bus: FakeBus | None = None) -> None:
        self.node_name = check_node_name(node_name)
        self.bus = bus or FakeBus()
        self.closed = False

    def create_publisher(self, topic: str, msg_type: str | type, qos: QosProfile = DEFAULT) -> FakePublisher:
        publisher = FakePublisher(self.bus, self, topic, self._checked(topic, msg_type), qos)
        self.bus.add_publisher(publisher)
        return publisher

    def create_subscription(self, topic: str, msg_type: str | type, callback: MessageCallback,
                            qos: QosProfile = DEFAULT) -> FakeSubscription:
        subscription = FakeSubscription(self, topic, self._checked(topic, msg_type), callback, qos)
        self.bus.add_subscription(subscription)
        return subscription

    def create_service(self, name: str, srv_type: str, handler: ServiceHandler) -> FakeService:
        """Serve ``name``: ``handler(request) -> response`` runs in the thread of each call."""
        self._checked_service(name, srv_type)
        server = FakeService(self, name, srv_type, handler)
        self.bus.add_server(server)
        return server

    def create_client(self, name: str, srv_type: str) -> FakeClient:
        self._checked_service(name, srv_type)
        return FakeClient(self.bus, self, name, srv_type)

    def close(self) -> None:
        """Detach from the bus: no more deliveries, publishing or calls, and its services are gone."""
        self.closed = True

    def _checked(self, topic: str, msg_type: str | type) -> str:
        self._checked_open()
        return self.bus.topic_type(topic, msg_type)

    def _checked_service(self, name: str, srv_type: str) -> None:
        """Services and topics have names of their own (``rq/...`` and ``rt/...`` on DDS)."""
        self._checked_open()
        dds_service_topic_names(name)  # raises for names DDS would refuse
        service_type_names(srv_type, self.bus.typestore)  # raises for unknown types

    def _checked_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"transport {self.node_name!r} is closed")
