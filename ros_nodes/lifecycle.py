"""A small lifecycle state machine for nodes, after ROS 2 managed nodes (no rclpy).

States: unconfigured -> (configure) -> inactive -> (activate) -> active -> (deactivate) -> inactive
-> (cleanup) -> unconfigured; shutdown goes from any of the three to finalized. Each transition calls the
subclass's ``on_<transition>`` hook while ``state`` still reads the state it leaves; when a hook raises,
the node stays in that state and the error is re-raised as a LifecycleError naming the transition.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from enum import Enum
from typing import Any

from ros_nodes.transport.base import check_node_name

log = logging.getLogger(__name__)
TransitionListener = Callable[[str, "State", "State"], None]  # (transition, start state, goal state)


class State(Enum):
    UNCONFIGURED = "unconfigured"
    INACTIVE = "inactive"
    ACTIVE = "active"
    FINALIZED = "finalized"


# transition -> (the states it may start from, the state it ends in)
TRANSITIONS: dict[str, tuple[tuple[State, ...], State]] = {
    "configure": ((State.UNCONFIGURED,), State.INACTIVE),
    "activate": ((State.INACTIVE,), State.ACTIVE),
    "deactivate": ((State.ACTIVE,), State.INACTIVE),
    "cleanup": ((State.INACTIVE,), State.UNCONFIGURED),
    "shutdown": ((State.UNCONFIGURED, State.INACTIVE, State.ACTIVE), State.FINALIZED),
}


class LifecycleError(RuntimeError):
    """A transition that is not valid from the current state, or whose hook failed."""


def valid_transitions(state: State) -> list[str]:
    return [name for name, (sources, _) in TRANSITIONS.items() if state in sources]


class LifecycleNode:
    """Base class: subclasses override the ``on_*`` hooks; transitions are serialised by a lock."""

    def __init__(self, name: str) -> None:
        self.name = check_node_name(name)
        self._state = State.UNCONFIGURED
        self._transition_lock = threading.RLock()
        self._listeners: list[TransitionListener] = []

    def add_transition_listener(self, listener: TransitionListener) -> None:
        """Call ``listener(transition, start, goal)`` after every completed transition (errors are logged)."""
        self._listeners.append(listener)

    @property
    def state(self) -> State:
        return self._state

    def configure(self) -> None:
        self._transition("configure")

    def activate(self) -> None:
        self._transition("activate")

    def deactivate(self) -> None:
        self._transition("deactivate")

    def cleanup(self) -> None:
        self._transition("cleanup")

    def shutdown(self) -> None:
        self._transition("shutdown")

    def on_configure(self) -> None:
        """Create what the node needs (publishers, subscriptions, the policy)."""

    def on_activate(self) -> None:
        """Start working (timers, threads)."""

    def on_deactivate(self) -> None:
        """Stop working and leave the robot safe."""

    def on_cleanup(self) -> None:
        """Release what on_configure created."""

    def on_shutdown(self) -> None:
        """Final release; ``state`` tells which state the node is shut down from."""

    def _transition(self, name: str) -> None:
        with self._transition_lock:
            sources, target = TRANSITIONS[name]
            if self._state not in sources:
                raise LifecycleError(
                    f"node {self.name!r} cannot {name} from {self._state.value}; valid from "
                    f"{self._state.value}: {valid_transitions(self._state) or 'none (finalized)'}; "
                    f"{name} starts from {[s.value for s in sources]}")
            try:
                getattr(self, f"on_{name}")()
            except Exception as error:
                raise LifecycleError(f"node {self.name!r}: {name} failed in on_{name} and stays "
                                     f"{self._state.value}: {error}") from error
            start, self._state = self._state, target
            for listener in self._listeners:
                try:
                    listener(name, start, target)
                except Exception:  # a listener (e.g. a closed publisher) must not undo the transition
                    log.exception("node %r: transition listener failed after %s", self.name, name)


def autostart(node: LifecycleNode) -> LifecycleNode:
    """Configure and activate ``node`` (a launch file's autostart), returning it."""
    node.configure()
    node.activate()
    return node


def stop_on_signals(stop: threading.Event) -> None:
    """Set ``stop`` on SIGINT and SIGTERM (call from the main thread).

    The handler sets it from a new thread: the handler runs in the main thread, which may be inside
    ``stop.wait()`` holding the event's lock, and ``stop.set()`` there would deadlock.
    """
    def handler(signum: int, frame: object) -> None:
        threading.Thread(target=stop.set, name="stop-signal", daemon=True).start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def without_ros_args(argv: list[str]) -> list[str]:
    """``argv`` without the ``--ros-args ... [--]`` section that ``ros2 run`` / ``ros2 launch`` append.

    That section holds remappings and parameters; the rclpy transport reads them from ``sys.argv``
    itself.
    """
    out, inside = [], False
    for arg in argv:
        if arg == "--ros-args":
            inside = True
        elif inside and arg == "--":
            inside = False
        elif not inside:
            out.append(arg)
    return out


def resolve_topic(name: str, node_name: str) -> str:
    """A topic or service name as ROS resolves it in the root namespace.

    ``~/x`` -> ``/<node_name>/x``, ``x`` -> ``/x``.
    """
    if name.startswith("~/"):
        return f"/{node_name}/{name[2:]}"
    return name if name.startswith("/") else f"/{name}"


def ros_remappings(argv: list[str], node_name: str) -> dict[str, str]:
    """Topic and service remappings (``-r from:=to``, ``--remap``) of the ``--ros-args`` sections.

    Names are resolved as ROS resolves them (``resolve_topic``). A rule prefixed with a node name
    (``node:from:=to``) applies to that node only; ``__node``/``__ns`` rules rename the node, which the
    DDS transport does not do, so they are skipped here. A malformed rule is a ValueError naming it.
    """
    rules, inside, expect_rule = {}, False, False
    for arg in argv:
        if arg == "--ros-args":
            inside = True
        elif inside and arg == "--":
            inside = False
        elif inside and arg in ("-r", "--remap"):
            expect_rule = True
        elif expect_rule:
            expect_rule = False
            source, sep, target = arg.partition(":=")
            if not sep or not source or not target:
                raise ValueError(f"remapping {arg!r} is not 'from:=to'")
            node, colon, name = source.rpartition(":")
            if colon and node != node_name:
                continue
            if name.startswith("__"):
                continue
            rules[resolve_topic(name, node_name)] = resolve_topic(target, node_name)
    if expect_rule:
        raise ValueError("--ros-args ends with -r/--remap but no 'from:=to' rule")
    return rules


def parse_node_args(parser: Any, argv: list[str] | None) -> tuple[Any, dict[str, str]]:
    """Return a node's own arguments and the remappings of its ``--ros-args``.

    ``parser`` is an argparse parser with ``--node-name``; a bad remapping rule is a usage error
    (``ros_remappings``). ``argv`` None: ``sys.argv``.
    """
    raw = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(without_ros_args(raw))
    try:
        return args, ros_remappings(raw, args.node_name)
    except ValueError as error:
        parser.error(str(error))
        raise  # parser.error exits; this keeps type checkers content
