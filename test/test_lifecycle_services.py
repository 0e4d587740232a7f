"""ROS 2 managed-node services of the policy node (lifecycle_msgs ids), through the in-process transport."""

from __future__ import annotations

import threading

import pytest
from test_policy_node import ChunkPolicy, actions, make_node

from ros_nodes.fake_transport import FakeBus, FakeTransport
from ros_nodes.lifecycle import State
from ros_nodes.lifecycle_services import CHANGE_STATE, GET_STATE, TRANSITION_EVENT, requested_transition
from ros_nodes.policy_node import serve
from ros_nodes.transport.base import DEFAULT, ros_typestore, service_classes

TYPES = ros_typestore().types


@pytest.mark.parametrize(("tid", "label", "state", "expected"), [
    (1, "", State.UNCONFIGURED, "configure"),
    (3, "", State.INACTIVE, "activate"),
    (4, "", State.ACTIVE, "deactivate"),
    (2, "", State.INACTIVE, "cleanup"),
    (7, "", State.ACTIVE, "shutdown"),          # active_shutdown
    (6, "", State.ACTIVE, None),                # inactive_shutdown from active
    (3, "", State.UNCONFIGURED, None),          # activate before configure
    (0, "configure", State.UNCONFIGURED, "configure"),  # by label
    (0, "unconfigured_shutdown", State.UNCONFIGURED, "shutdown"),
    (99, "", State.ACTIVE, None),
    (1, "", State.FINALIZED, None),
])
def test_requested_transition_follows_lifecycle_msgs(tid, label, state, expected):
    assert requested_transition(tid, label, state) == expected


def test_launch_style_change_state_requests_drive_the_node_and_shutdown_ends_serve():
    bus = FakeBus()
    node = make_node(bus, ChunkPolicy(actions(3, 13)))
    served = threading.Thread(target=serve, args=(node, threading.Event(), False), daemon=True)
    served.start()
    tool = FakeTransport("ros2_lifecycle", bus)
    events: list = []
    tool.create_subscription("/dream_policy/transition_event", TRANSITION_EVENT, events.append, DEFAULT)
    get_request, _ = service_classes(GET_STATE)
    change_request, _ = service_classes(CHANGE_STATE)
    get_state, change_state = (tool.create_client(f"/dream_policy/{n}", t) for n, t in
                               (("get_state", GET_STATE), ("change_state", CHANGE_STATE)))
    for _ in range(200):  # the services come up in the serving thread
        if get_state.service_is_ready() and change_state.service_is_ready():
            break
        threading.Event().wait(0.01)

    def change(tid: int) -> bool:
        transition = TYPES["lifecycle_msgs/msg/Transition"](id=tid, label="")
        return change_state.call(change_request(transition=transition), timeout=5).success

    def state() -> tuple[int, str]:
        current = get_state.call(get_request(), timeout=5).current_state
        return current.id, current.label

    assert state() == (1, "unconfigured")
    assert not change(3)  # activate before configure: refused, nothing changes
    assert change(1) and state() == (2, "inactive")
    assert change(3) and state() == (3, "active") and node.state is State.ACTIVE
    assert [(e.transition.id, e.start_state.id, e.goal_state.id) for e in events] == [(1, 1, 2), (3, 2, 3)]
    assert change(7)  # active_shutdown: the serving thread deactivates (safe stop) and shuts down
    served.join(10)
    assert not served.is_alive() and node.state is State.FINALIZED
