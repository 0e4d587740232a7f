"""PolicyRunner with fake policies and a fake clock: robot_obs assembly, relative -> absolute commands as
CALVIN accumulates them, chunk scheduling, holds (no task, stale data, stop), dropped chunks, threads."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ros_nodes.contract import (
    ARM_JOINT_POSITIONS,
    GRIPPER_WIDTH,
    SCENE_OBS,
    TCP_POSE,
    feature_shape,
    load_contract,
)
from ros_nodes.convert import TYPESTORE, command_to_pose, header, pose_to_tcp
from ros_nodes.policy_runner import PolicyRunner, PolicyRunnerConfig
from ros_nodes.types import Command, Sample
from sim.controller import relative_to_target

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = load_contract(ROOT / "configs" / "contract" / "playtable.yaml")
PERIOD = CONTRACT.actions.period_s
JOINTS = CONTRACT.stream(ARM_JOINT_POSITIONS).joint_names
# The play-table's initial robot state (docs/calvin.md).
TCP_POS = np.array([0.02587, -0.23131, 0.57128])
TCP_EULER = np.array([3.09045, -0.02909, 1.50014])
ARM = np.array([-1.21779, 1.03988, 2.11978, -2.34205, -0.87016, 1.64119, 0.55345])
WIDTH = 0.08
SCENE = np.arange(24, dtype=np.float64) / 24  # the sim contract's privileged scene state
_RNG = np.random.default_rng(0)
IMAGES = {f: _RNG.integers(0, 256, feature_shape(f), dtype=np.uint8) for f in ("rgb_static", "rgb_gripper")}
T0 = 100.0


def pose_msg(t: float, position=TCP_POS, euler=TCP_EULER):
    return command_to_pose(Command(t, np.asarray(position), np.asarray(euler), 1.0), "world")


def joint_msg(t: float):
    return TYPESTORE.types["sensor_msgs/msg/JointState"](header=header(t, ""), name=list(JOINTS), position=ARM.copy(),
                                                         velocity=np.zeros(0), effort=np.zeros(0))


MEASURED = np.concatenate(pose_to_tcp(pose_msg(T0)))  # what the runner reads back from the message


def feed(runner: PolicyRunner, t: float, skip: tuple[str, ...] = ()) -> None:
    """One sample of every stream stamped ``t``, as the sim publishes them each control step."""
    values = {**IMAGES, TCP_POSE: pose_msg(t), ARM_JOINT_POSITIONS: joint_msg(t), GRIPPER_WIDTH: np.array([WIDTH]),
              SCENE_OBS: SCENE}
    for stream, value in values.items():
        if stream not in skip:
            runner.on_sample(stream, Sample(t, value))


def actions(n: int, seed: int, gripper: float = 1.0) -> np.ndarray:
    """``n`` relative actions small enough for the safety limits; gripper column ``gripper``."""
    a = np.random.default_rng(seed).uniform(-0.8, 0.8, (n, 7))
    a[:, 6] = gripper
    return a


def calvin_targets(start: np.ndarray, rel_actions: np.ndarray) -> list[np.ndarray]:
    """Absolute (7,) targets as sim.controller accumulates relative actions onto its stored target."""
    pos, euler, out = start[:3], start[3:6], []
    for a in rel_actions:
        pos, euler = relative_to_target(pos, euler, a)
        out.append(np.concatenate([pos, euler, [1.0 if a[6] > 0 else -1.0]]))
    return out


class ChunkPolicy:
    """Returns the given chunks in turn (the last one again when they run out); records every call."""

    def __init__(self, *chunks: np.ndarray) -> None:
        self.chunks = list(chunks)
        self.calls: list[tuple[dict, str]] = []
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def predict_chunk(self, obs: dict, instruction: str) -> np.ndarray:
        self.calls.append((obs, instruction))
        return self.chunks[min(len(self.calls), len(self.chunks)) - 1]


class StepPolicy:
    """Only CALVIN's step(): one action per call."""

    def __init__(self, rel_actions: np.ndarray) -> None:
        self.rel_actions, self.calls, self.obs = rel_actions, 0, None

    def reset(self) -> None:
        pass

    def step(self, obs: dict, instruction: str) -> np.ndarray:
        self.calls += 1
        self.obs = obs
        return self.rel_actions[self.calls - 1]


class BlockingPolicy(ChunkPolicy):
    """A slow policy: predict_chunk waits until ``release`` is set."""

    def __init__(self, *chunks: np.ndarray) -> None:
        super().__init__(*chunks)
        self.entered, self.release = threading.Event(), threading.Event()

    def predict_chunk(self, obs: dict, instruction: str) -> np.ndarray:
        self.entered.set()
        assert self.release.wait(5.0)
        return super().predict_chunk(obs, instruction)


def make_runner(policy, **config) -> PolicyRunner:
    return PolicyRunner(CONTRACT, policy, PolicyRunnerConfig(**config), latency_clock=lambda: 0.0)


def test_no_task_means_no_inference_and_a_hold_of_the_measured_pose():
    policy = ChunkPolicy(actions(3, 0))
    runner = make_runner(policy)
    feed(runner, T0)
    assert not runner.inference_due(T0) and runner.infer(T0) is None and not policy.calls
    kinds = [runner.tick(T0 + k * PERIOD) for k in range(3)]
    assert [d.kind for d in kinds] == ["none", "none", "hold"]  # the watchdog holds after 2 periods
    np.testing.assert_allclose(kinds[2].command.as_array(), [*MEASURED, 1.0], atol=1e-12)


def test_chunks_become_absolute_commands_accumulated_like_calvin():
    first, second = actions(3, 1), actions(3, 2, gripper=-1.0)
    first[1, 6] = -1.0  # the gripper closes with the second action
    policy = ChunkPolicy(first, second)
    runner = make_runner(policy, blend="replace")
    feed(runner, T0)
    runner.start("open the drawer")
    assert runner.infer(T0) == 0
    expected = calvin_targets(MEASURED, first)  # the first chunk starts from the measured tcp
    for k in range(2):
        decision = runner.tick(T0 + k * PERIOD)
        assert decision.kind == "command", decision.reasons
        np.testing.assert_allclose(decision.command.as_array(), expected[k], atol=1e-12)

    t1 = T0 + 2 * PERIOD  # the next observation: the chunk goes on from the target in force before it
    feed(runner, t1)
    assert runner.infer(t1) == 0
    expected = calvin_targets(expected[1], second)
    for k in range(3):
        decision = runner.tick(t1 + k * PERIOD)
        np.testing.assert_allclose(decision.command.as_array(), expected[k], atol=1e-12)

    (obs0, instruction), (obs1, _) = policy.calls
    assert instruction == "open the drawer" and policy.resets == 1
    np.testing.assert_allclose(obs0["robot_obs"], [*MEASURED, WIDTH, *ARM, 1.0], atol=1e-12)
    assert obs1["robot_obs"][14] == -1.0  # the last gripper command, not the measured width
    for feature, image in IMAGES.items():
        assert obs0[feature] is image


def test_a_step_only_policy_runs_as_an_action_then_its_target_held():
    rel = actions(5, 3)
    policy = StepPolicy(rel)
    runner = make_runner(policy, blend="replace")
    runner.start("push the block")
    expected = calvin_targets(MEASURED, rel)
    for k in range(5):
        t = T0 + k * PERIOD
        feed(runner, t)
        assert runner.inference_due(t)
        assert runner.infer(t) == 0
        np.testing.assert_allclose(runner.tick(t).command.as_array(), expected[k], atol=1e-12)
    assert policy.calls == 5 and np.array_equal(policy.obs["scene_obs"], SCENE)  # the sim-only state too
    # an action that lands after its own slot is still followed: its target is held for the next ticks
    late = PolicyRunner(CONTRACT, StepPolicy(rel), latency_clock=iter([0.0, 1.5 * PERIOD]).__next__)
    feed(late, T0)
    late.start("push the block")
    assert late.infer(T0) == 1
    np.testing.assert_allclose(late.tick(T0 + 1.5 * PERIOD).command.as_array(), expected[0], atol=1e-12)


class ObservingPolicy:
    """DreamPolicy's split interface: observe() one frame, sample_chunk() from the history."""

    def __init__(self, chunk: np.ndarray) -> None:
        self.chunk, self.observed, self.sampled_after = chunk, [], []

    def reset(self) -> None:
        self.observed.clear()

    def observe(self, obs: dict) -> None:
        self.observed.append(float(obs["robot_obs"][6]))  # the gripper width tells the frames apart

    def sample_chunk(self, instruction: str) -> np.ndarray:
        self.sampled_after.append(len(self.observed))
        return self.chunk


def test_an_observing_policy_gets_every_tick_and_samples_only_when_due():
    policy = ObservingPolicy(actions(3, 6))
    runner = make_runner(policy, refill_ticks=0)
    runner.start("open the drawer")
    for k in range(7):
        t = T0 + k * PERIOD
        feed(runner, t)
        runner.on_sample(GRIPPER_WIDTH, Sample(t, np.array([0.01 * k])))
        if runner.inference_due(t):
            assert runner.infer(t) == 0
        assert runner.tick(t).kind == "command"
        runner.tick(t)  # a second tick on the same frame adds no frame
    assert policy.observed == pytest.approx([0.01 * k for k in range(7)])  # consecutive frames, in order
    assert policy.sampled_after == [1, 3, 5, 7]  # one sample per chunk of 3 (refilled when it runs out)
    runner.set_task("close the drawer")  # a new task: a fresh history from the next frame on
    feed(runner, T0 + 7 * PERIOD)
    runner.infer(T0 + 7 * PERIOD)
    assert len(policy.observed) == 1


def test_actions_already_past_on_arrival_are_skipped():
    rel = actions(4, 4)
    clock = iter([0.0, 2.5 * PERIOD])  # the inference takes two and a half control periods
    runner = PolicyRunner(CONTRACT, ChunkPolicy(rel), latency_clock=lambda: next(clock))
    feed(runner, T0)
    runner.start("lift the block")
    assert runner.infer(T0) == 2
    decision = runner.tick(T0 + 2.5 * PERIOD)
    np.testing.assert_allclose(decision.command.as_array(), calvin_targets(MEASURED, rel)[2], atol=1e-12)


def test_a_non_finite_chunk_is_dropped_and_counted():
    bad = actions(3, 5)
    bad[1, 2] = np.nan
    policy = ChunkPolicy(bad)
    runner = make_runner(policy)
    feed(runner, T0)
    runner.start("open the drawer")
    assert runner.infer(T0) is None
    assert [runner.tick(T0 + k * PERIOD).kind for k in range(3)] == ["none", "none", "hold"]
    diagnostics = runner.diagnostics()
    assert diagnostics["counts"]["nonfinite_chunks"] == 1 and "non-finite" in diagnostics["last_rejection"]
    assert runner.infer(T0) is None and len(policy.calls) == 1  # the same observation is not run again
    feed(runner, T0 + PERIOD)
    runner.infer(T0 + PERIOD)
    assert len(policy.calls) == 2


def test_stop_latches_a_hold_until_start():
    policy = ChunkPolicy(actions(3, 6))
    runner = make_runner(policy)
    feed(runner, T0)
    runner.on_instruction("open the drawer")
    assert runner.running
    runner.infer(T0)
    commanded = runner.tick(T0).command
    runner.stop("operator")
    runner.on_instruction("close the drawer")  # an instruction does not undo a stop
    assert not runner.running and runner.task == "close the drawer"
    feed(runner, T0 + PERIOD)
    assert not runner.inference_due(T0 + PERIOD) and runner.infer(T0 + PERIOD) is None
    for k in (1, 2, 3):
        decision = runner.tick(T0 + k * PERIOD)
        assert decision.kind == "hold" and decision.reasons == ("stopped: operator",)
        np.testing.assert_allclose(decision.command.as_array(), commanded.as_array())
    runner.start()
    assert runner.running and runner.task == "close the drawer"
    assert runner.infer(T0 + 3 * PERIOD) is not None
    assert runner.tick(T0 + 3 * PERIOD).kind == "command"


def test_stale_data_holds_within_two_periods_and_commands_resume_with_fresh_frames():
    runner = make_runner(ChunkPolicy(actions(30, 7) * 0.1))  # one second of slow motion
    feed(runner, T0)
    runner.start("slide the door")
    runner.infer(T0)
    stale_s = CONTRACT.stream("rgb_static").stale_s
    decisions = []
    for k in range(12):  # the static camera stops after T0; the other streams go on
        t = T0 + k * PERIOD
        if k:
            feed(runner, t, skip=("rgb_static",))
        decisions.append(runner.tick(t))
    first_stale = next(k for k in range(12) if k * PERIOD > stale_s + 1e-9)
    assert all(d.kind == "command" for d in decisions[:first_stale])
    assert decisions[first_stale].kind == "none" and decisions[first_stale + 1].kind == "hold"
    last = decisions[first_stale - 1].command.as_array()
    for d in decisions[first_stale + 1:]:
        assert d.kind == "hold"
        np.testing.assert_allclose(d.command.as_array(), last)
    assert "stale" in runner.diagnostics()["last_rejection"]

    t = T0 + 12 * PERIOD
    feed(runner, t)
    assert runner.inference_due(t) and runner.infer(t) == 0
    assert runner.tick(t).kind == "command"


def test_ticks_go_on_while_the_policy_runs_and_a_task_change_discards_its_chunk():
    policy = BlockingPolicy(actions(3, 8))
    runner = make_runner(policy)
    feed(runner, T0)
    runner.start("open the drawer")
    results = []
    worker = threading.Thread(target=lambda: results.append(runner.infer(T0)))
    worker.start()
    assert policy.entered.wait(5.0)
    started = time.perf_counter()
    assert runner.tick(T0).kind == "none"  # not blocked by the inference in flight
    assert time.perf_counter() - started < 0.5
    runner.set_task("close the drawer")
    policy.release.set()
    worker.join(5.0)
    assert results == [None] and runner.diagnostics()["counts"]["discarded_chunks"] == 1
    feed(runner, T0 + PERIOD)
    assert runner.infer(T0 + PERIOD) == 0 and policy.resets == 2  # the new task reset the policy
    assert runner.tick(T0 + PERIOD).kind == "command"


def test_inference_is_due_when_the_chunk_runs_out_or_every_k_periods():
    runner = make_runner(ChunkPolicy(actions(10, 9)), refill_ticks=2, infer_every=4)
    feed(runner, T0)
    assert not runner.inference_due(T0)
    runner.start("open the drawer")
    assert runner.inference_due(T0)  # no chunk yet
    runner.infer(T0)
    assert [runner.inference_due(T0 + k * PERIOD) for k in range(9)] == [
        False, False, False, False, True, True, True, True, True]  # every 4 periods; refill from slot 7
    refill_only = make_runner(ChunkPolicy(actions(10, 9)), refill_ticks=2)
    feed(refill_only, T0)
    refill_only.start("open the drawer")
    refill_only.infer(T0)
    assert [refill_only.inference_due(T0 + k * PERIOD) for k in (4, 6, 7)] == [False, False, True]


def test_diagnostics_report_counts_and_statistics():
    runner = make_runner(ChunkPolicy(actions(3, 10)))
    assert runner.on_malformed("rgb_static", "image is 10x10") == 1
    feed(runner, T0)
    runner.start("open the drawer")
    runner.infer(T0)
    runner.tick(T0)
    d = runner.diagnostics()
    assert d["task"] == "open the drawer" and d["running"] and not d["stopped"]
    assert d["counts"] == {"malformed/rgb_static": 1, "chunks": 1}
    assert d["loop"]["ticks"] == 1 and d["loop"]["inferences"] == 1 and d["loop"]["dropped"] == 1
    assert d["alignment"]["aligned"] == 1 and d["last_decision"] == "command"
    assert set(d["safety"]) >= {"watchdog_holds", "stops", "clamped"}


@pytest.mark.parametrize("config, match", [
    ({"blend": "average"}, "blend"), ({"refill_ticks": -1}, "refill_ticks"), ({"infer_every": True}, "infer_every"),
    ({"ensemble_k": float("nan")}, "ensemble_k"),
])
def test_config_errors_name_the_value(config, match):
    with pytest.raises(ValueError, match=f"PolicyRunnerConfig.{match}"):
        PolicyRunnerConfig(**config)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="reference must be one of .*'rgb_static'.*got 'depth'"):
        make_runner(ChunkPolicy(), reference="depth")
    runner = make_runner(ChunkPolicy())
    with pytest.raises(ValueError, match="start needs a task"):
        runner.start()
    with pytest.raises(ValueError, match="non-empty text"):
        runner.on_instruction("  ")
    with pytest.raises(ValueError, match="unknown stream"):
        runner.on_sample("depth", Sample(T0, np.zeros(1)))
    runner = make_runner(ChunkPolicy(np.zeros((3, 6))))
    feed(runner, T0)
    runner.start("open the drawer")
    with pytest.raises(ValueError, match=r"shape \(3, 6\); expected \(N, 7\)"):
        runner.infer(T0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny_D", "tiny_D_query"])
def test_the_shipped_checkpoints_run_under_the_runner(name):
    from dream_policy.runtime import DreamPolicy

    policy = DreamPolicy.from_checkpoint(ROOT / "checkpoints" / name)
    runner = make_runner(policy)  # latency taken as 0: this CPU's inference time is not the point here
    runner.start("open the drawer")
    for k in range(2):
        t = T0 + 2 * k * PERIOD
        feed(runner, t)
        assert runner.infer(t) is not None
        decision = runner.tick(t)
        assert decision.kind == "command" and np.isfinite(decision.command.as_array()).all()
    assert runner.diagnostics()["counts"]["chunks"] == 2


def test_a_task_change_while_running_goes_on_from_the_commanded_target_like_calvin():
    """CALVIN's controller keeps its stored target across subtasks: the next task's first chunk starts from
    the pose commanded last, not from the measured tcp (which lags the target); a fresh start does not."""
    first, second = actions(3, 4), actions(3, 5)
    runner = make_runner(ChunkPolicy(first, second, second), blend="replace")
    feed(runner, T0)
    runner.start("open the drawer")
    assert runner.infer(T0) == 0
    commanded = [runner.tick(T0 + k * PERIOD).command.as_array() for k in range(2)]
    runner.set_task("push the block")
    t1 = T0 + 2 * PERIOD
    feed(runner, t1)  # the measured tcp is still MEASURED: the arm lags its target
    assert runner.infer(t1) == 0
    expected = calvin_targets(commanded[-1], second)
    np.testing.assert_allclose(runner.tick(t1).command.as_array(), expected[0], atol=1e-12)
    runner.start("open the drawer")  # a start (not a task change) begins again from the measured pose
    t2 = t1 + 2 * PERIOD
    feed(runner, t2)
    assert runner.infer(t2) == 0
    np.testing.assert_allclose(runner.tick(t2).command.as_array(), calvin_targets(MEASURED, second)[0],
                               atol=1e-12)


def test_a_new_instruction_while_running_chains_on_from_the_commanded_target():
    first, second = actions(3, 6), actions(3, 7)
    policy = ChunkPolicy(first, second)
    runner = make_runner(policy, blend="replace")
    feed(runner, T0)
    runner.on_instruction("open the drawer")
    assert runner.infer(T0) == 0
    commanded = [runner.tick(T0 + k * PERIOD).command.as_array() for k in range(2)]
    runner.on_instruction("push the block")
    t1 = T0 + 2 * PERIOD
    feed(runner, t1)
    assert runner.infer(t1) == 0 and policy.calls[-1][1] == "push the block" and policy.resets == 2
    np.testing.assert_allclose(runner.tick(t1).command.as_array(), calvin_targets(commanded[-1], second)[0],
                               atol=1e-12)
