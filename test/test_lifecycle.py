"""Lifecycle state machine: the transitions, their hooks, refused transitions and failing hooks."""

from __future__ import annotations

import pytest

from ros_nodes.lifecycle import LifecycleError, LifecycleNode, State, autostart


class RecordingNode(LifecycleNode):
    """Records each hook with the state it ran in; ``fail`` names a hook that raises."""

    def __init__(self, fail: str | None = None) -> None:
        super().__init__("recording")
        self.calls: list[tuple[str, State]] = []
        self.fail = fail

    def _hook(self, name: str) -> None:
        self.calls.append((name, self.state))
        if name == self.fail:
            raise RuntimeError(f"{name} broke")

    def on_configure(self) -> None:
        self._hook("configure")

    def on_activate(self) -> None:
        self._hook("activate")

    def on_deactivate(self) -> None:
        self._hook("deactivate")

    def on_cleanup(self) -> None:
        self._hook("cleanup")

    def on_shutdown(self) -> None:
        self._hook("shutdown")


def test_full_cycle_runs_each_hook_in_the_state_it_leaves():
    node = RecordingNode()
    assert node.state is State.UNCONFIGURED
    expected = [("configure", State.INACTIVE), ("activate", State.ACTIVE), ("deactivate", State.INACTIVE),
                ("cleanup", State.UNCONFIGURED), ("configure", State.INACTIVE), ("shutdown", State.FINALIZED)]
    before = node.state
    for transition, after in expected:
        getattr(node, transition)()
        assert node.state is after
        assert node.calls[-1] == (transition, before)
        before = after
    assert [name for name, _ in node.calls] == [name for name, _ in expected]


@pytest.mark.parametrize("path", [[], ["configure"], ["configure", "activate"]])
def test_shutdown_from_every_primary_state(path):
    node = RecordingNode()
    for transition in path:
        getattr(node, transition)()
    node.shutdown()
    assert node.state is State.FINALIZED


@pytest.mark.parametrize("path, transition", [
    ([], "activate"), ([], "deactivate"), ([], "cleanup"),
    (["configure"], "configure"), (["configure"], "deactivate"),
    (["configure", "activate"], "configure"), (["configure", "activate"], "cleanup"),
    (["configure", "activate"], "activate"),
])
def test_invalid_transitions_name_the_state_and_the_valid_ones(path, transition):
    node = RecordingNode()
    for step in path:
        getattr(node, step)()
    state, calls = node.state, list(node.calls)
    with pytest.raises(LifecycleError, match=rf"cannot {transition} from {state.value}; valid from"):
        getattr(node, transition)()
    assert node.state is state and node.calls == calls  # no hook ran, nothing changed


def test_a_finalized_node_refuses_everything():
    node = RecordingNode()
    node.shutdown()
    for transition in ("configure", "activate", "deactivate", "cleanup", "shutdown"):
        with pytest.raises(LifecycleError, match="none \\(finalized\\)"):
            getattr(node, transition)()


def test_a_failing_hook_leaves_the_state_and_chains_the_error():
    node = RecordingNode(fail="activate")
    node.configure()
    with pytest.raises(LifecycleError, match="activate failed in on_activate and stays inactive: activate broke") \
            as raised:
        node.activate()
    assert isinstance(raised.value.__cause__, RuntimeError)
    assert node.state is State.INACTIVE
    node.fail = None
    node.activate()  # the transition can be retried
    assert node.state is State.ACTIVE


def test_autostart_configures_and_activates():
    node = autostart(RecordingNode())
    assert node.state is State.ACTIVE
    assert [name for name, _ in node.calls] == ["configure", "activate"]


def test_node_names_are_checked():
    with pytest.raises(ValueError, match="node_name"):
        LifecycleNode("9 bad name")


def test_stop_on_signals_sets_the_event_even_while_the_main_thread_waits_on_it():
    import os
    import signal
    import threading

    from ros_nodes.lifecycle import stop_on_signals

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for sig in saved:
            stop = threading.Event()
            stop_on_signals(stop)
            threading.Timer(0.05, os.kill, (os.getpid(), sig)).start()
            assert stop.wait(5.0)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_ros_args_are_removed_before_parsing():
    from ros_nodes.lifecycle import without_ros_args

    argv = ["--contract", "c.yaml", "--ros-args", "-r", "__node:=p", "--params-file", "x.yaml", "--", "--seed", "1"]
    assert without_ros_args(argv) == ["--contract", "c.yaml", "--seed", "1"]
    assert without_ros_args(["--ros-args", "-r", "a:=b"]) == []
    assert without_ros_args(["--scene", "D"]) == ["--scene", "D"]


def test_ros_remappings_resolve_names_and_keep_this_nodes_rules():
    from ros_nodes.lifecycle import ros_remappings

    argv = ["--contract", "x.yaml", "--ros-args", "-r", "/camera/image:=/cam0/image_raw", "--remap",
            "~/stop:=/robot/estop", "-r", "policy_node:state:=/joint_states", "-r", "other:x:=/y",
            "-r", "__ns:=/robot", "-p", "a:=1", "--", "--seed", "3", "--ros-args", "-r", "instruction:=/task"]
    assert ros_remappings(argv, "policy_node") == {
        "/camera/image": "/cam0/image_raw", "/policy_node/stop": "/robot/estop", "/state": "/joint_states",
        "/instruction": "/task"}
    assert ros_remappings(["--ros-args", "-p", "a:=1"], "n") == {}
    with pytest.raises(ValueError, match="'oops' is not 'from:=to'"):
        ros_remappings(["--ros-args", "-r", "oops"], "n")
    with pytest.raises(ValueError, match="ends with -r"):
        ros_remappings(["--ros-args", "-r"], "n")
