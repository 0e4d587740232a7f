"""ROS 2 managed-node services for a ``LifecycleNode``, over any transport.

``~/get_state`` (lifecycle_msgs/srv/GetState), ``~/change_state`` (lifecycle_msgs/srv/ChangeState)
and ``~/transition_event`` (lifecycle_msgs/msg/TransitionEvent), with lifecycle_msgs' primary state
and transition ids, so ``ros2 lifecycle get/set`` and launch_ros' ``ChangeState`` events and
``OnStateTransition`` handlers can drive the node. Transitions run in the service handler, except
the shutdown transitions: a node's shutdown closes the transport whose thread runs the handler, so
those are handed to ``on_shutdown_request`` (the process winds the node down) and answered at once.
The intermediate states (configuring, activating, ...) are not reported.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ros_nodes.lifecycle import TRANSITIONS, LifecycleError, LifecycleNode, State
from ros_nodes.transport.base import DEFAULT, Transport, service_classes

log = logging.getLogger(__name__)
GET_STATE = "lifecycle_msgs/srv/GetState"
CHANGE_STATE = "lifecycle_msgs/srv/ChangeState"
TRANSITION_EVENT = "lifecycle_msgs/msg/TransitionEvent"
STATE_IDS = {State.UNCONFIGURED: 1, State.INACTIVE: 2, State.ACTIVE: 3, State.FINALIZED: 4}
TRANSITION_IDS = {"configure": 1, "cleanup": 2, "activate": 3, "deactivate": 4}
SHUTDOWN_IDS = {5: State.UNCONFIGURED, 6: State.INACTIVE, 7: State.ACTIVE}  # <state>_shutdown
SHUTDOWN_LABELS = {"shutdown", "unconfigured_shutdown", "inactive_shutdown", "active_shutdown"}


def requested_transition(transition_id: int, label: str, state: State) -> str | None:
    """Return the transition a ChangeState request asks for in ``state``.

    None when it is unknown or not valid there. As in rclcpp, a request with id 0 is looked up by its label.
    """
    if transition_id == 0:
        name = "shutdown" if label in SHUTDOWN_LABELS else label
    elif transition_id in SHUTDOWN_IDS:
        name = "shutdown" if SHUTDOWN_IDS[transition_id] is state else None
    else:
        name = next((n for n, i in TRANSITION_IDS.items() if i == transition_id), None)
    if name is None or name not in TRANSITIONS or state not in TRANSITIONS[name][0]:
        return None
    return name


def transition_id(name: str, start: State) -> int:
    """lifecycle_msgs/msg/Transition id of ``name`` taken from ``start``."""
    if name == "shutdown":
        return next(i for i, s in SHUTDOWN_IDS.items() if s is start)
    return TRANSITION_IDS[name]


class LifecycleServices:
    """Serves ``node``'s lifecycle on ``transport`` under ``/<node.name>/...``."""

    def __init__(self, node: LifecycleNode, transport: Transport,
                 on_shutdown_request: Callable[[], None], clock: Callable[[], float] = time.time) -> None:
        self.node, self._on_shutdown_request, self._clock = node, on_shutdown_request, clock
        typestore = getattr(transport, "typestore", None)
        self._get_types = service_classes(GET_STATE, typestore)
        self._change_types = service_classes(CHANGE_STATE, typestore)
        base = f"/{node.name}"
        self._events = transport.create_publisher(f"{base}/transition_event", TRANSITION_EVENT, DEFAULT)
        self._msg = _message_classes(typestore)
        transport.create_service(f"{base}/get_state", GET_STATE, self._get_state)
        transport.create_service(f"{base}/change_state", CHANGE_STATE, self._change_state)
        node.add_transition_listener(self._publish_event)

    def _state_msg(self, state: State) -> Any:
        return self._msg["State"](id=STATE_IDS[state], label=state.value)

    def _get_state(self, request: Any) -> Any:
        return self._get_types[1](current_state=self._state_msg(self.node.state))

    def _change_state(self, request: Any) -> Any:
        state = self.node.state
        name = requested_transition(int(request.transition.id), str(request.transition.label), state)
        if name is None:
            log.warning("%s: change_state %d %r is not valid from %s", self.node.name, request.transition.id,
                        request.transition.label, state.value)
            return self._change_types[1](success=False)
        if name == "shutdown":
            self._on_shutdown_request()
            return self._change_types[1](success=True)
        try:
            getattr(self.node, name)()
        except LifecycleError as error:
            log.error("%s", error)
            return self._change_types[1](success=False)
        return self._change_types[1](success=True)

    def _publish_event(self, name: str, start: State, goal: State) -> None:
        transition = self._msg["Transition"](id=transition_id(name, start), label=name)
        self._events.publish(self._msg["TransitionEvent"](
            timestamp=int(self._clock() * 1e9), transition=transition, start_state=self._state_msg(start),
            goal_state=self._state_msg(goal)))


def _message_classes(typestore: Any) -> dict[str, type]:
    from ros_nodes.transport.base import ros_typestore

    store = typestore or ros_typestore()
    names = ("State", "Transition", "TransitionEvent")
    return {name: store.types[f"lifecycle_msgs/msg/{name}"] for name in names}
