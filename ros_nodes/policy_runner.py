"""The policy node's logic without ROS: stamped samples in, one command per control tick out.

Samples feed a StreamAligner; ``infer(now)`` turns the newest aligned observation into a chunk of
absolute commands on the ChunkScheduler; ``tick(now)`` takes this tick's command from the scheduler and
passes it through the SafetyFilter (watchdog hold, limits, stop latch). Times are passed in (ROS clock
seconds); only the inference latency is measured, with ``latency_clock``. One lock guards the state and
is released while the policy runs, so a node may call ``infer`` on a worker thread and ``tick`` on its
control timer.

Sample values per stream: images (H, W, 3) uint8 at the policy's size; the gripper width (1,) m; the
tcp pose and arm joint streams keep their messages (PoseStamped, JointState), from which
``convert.robot_obs_from`` assembles robot_obs, with the last gripper command as its 15th value; the
optional sim-only ``scene_obs`` stream (24,) is passed to the policy as ``obs["scene_obs"]``.

History: a policy with ``observe(obs)`` and ``sample_chunk(instruction)`` (DreamPolicy) gets every new
aligned observation of a control tick (one per reference frame, in order) and samples only when an
inference is due, so its history holds consecutive frames as in training. The frames of the ticks since
the last inference are handed over on the inference thread just before sampling, so the policy is never
called from two threads. Other policies (the scripted expert) get ``predict_chunk(obs)`` or ``step(obs)``
with the newest observation at each inference.

Running target (CALVIN's stored target): a chunk of relative actions a_0..a_{N-1} predicted from the
observation at t_obs becomes the plan P_0 = base, P_{i+1} = P_i + a_i (``relative_to_command``), and
action i is the command for the slot starting at t_obs + i * period. ``base`` is the previous plan's
target in force just before t_obs; after a task change while running it is the pose commanded last
(CALVIN keeps its stored target from one subtask to the next); after a start, a stop or stale data it
is the measured tcp pose.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ros_nodes.alignment import STAMP_SLACK_S, Rejected, StreamAligner, StreamConfig
from ros_nodes.chunk_scheduler import BLENDS, SLOT_SLACK, ChunkScheduler, ChunkSchedulerConfig
from ros_nodes.contract import (
    ARM_JOINT_POSITIONS,
    GRIPPER_WIDTH,
    IMAGE_FEATURES,
    SCENE_OBS,
    TCP_POSE,
    Contract,
    Stream,
)
from ros_nodes.convert import joint_positions, pose_to_tcp, relative_to_command, robot_obs_from
from ros_nodes.loop_stats import LoopStats, LoopStatsConfig
from ros_nodes.safety import Decision, SafetyConfig, SafetyFilter
from ros_nodes.types import OBSERVATION_FEATURES, Command, Sample
from sim.policy import Policy

OPEN = 1.0  # the gripper action before any command: CALVIN's robot starts open
STEP_HOLD_TICKS = 2  # zero-motion actions after a step() action (see _hold_after)
FRAME_BUFFER = 30  # frames kept for an observing policy between inferences (1 s at 30 Hz)


@dataclass(frozen=True)
class PolicyRunnerConfig:
    """When the runner infers and how it schedules the chunks.

    ``blend`` / ``ensemble_k``: how overlapping chunks blend (ChunkSchedulerConfig);
    ``refill_ticks``: start the next inference when the newest chunk has at most this many ticks
    left; ``infer_every``: also once this many control periods have passed since the last one (0:
    only on refill); ``reference``: the stream whose newest stamp is the observation time (None: the
    tick time).
    """

    blend: str = "linear"
    ensemble_k: float = 0.01
    refill_ticks: int = 1
    infer_every: int = 0
    reference: str | None = OBSERVATION_FEATURES[0]

    def __post_init__(self) -> None:
        if self.blend not in BLENDS:
            raise ValueError(f"PolicyRunnerConfig.blend must be one of {BLENDS}, got {self.blend!r}")
        if not isinstance(self.ensemble_k, (int, float)) or not math.isfinite(self.ensemble_k):
            raise ValueError("PolicyRunnerConfig.ensemble_k must be a finite number, "
                             f"got {self.ensemble_k!r}")
        for name in ("refill_ticks", "infer_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"PolicyRunnerConfig.{name} must be an integer >= 0, got {value!r}")


@dataclass(frozen=True)
class _Inference:
    """What one inference needs, taken under the lock."""

    t_obs: float
    frames: list[dict[str, np.ndarray]]  # observations to hand to the policy, the newest (at t_obs) last
    base: np.ndarray  # (6,) target pose the first action adds onto
    generation: int
    instruction: str
    reset_policy: bool


def stream_config(stream: Stream) -> StreamConfig:
    """The aligner's view of a contract stream (one definition for live serving and bag conversion)."""
    # tolerance_s is only read for asof streams, which always have one
    return StreamConfig(stream.feature, stream.alignment.policy, stream.alignment.tolerance_s or 0.0,
                        stream.stale_s)


def safety_config(contract: Contract) -> SafetyConfig:
    """The SafetyFilter limits of a contract."""
    s = contract.safety
    return SafetyConfig(s.workspace.min, s.workspace.max, s.max_step.position_m, s.max_step.rotation_rad,
                        s.watchdog_periods, contract.actions.period_s, s.stale_s)


def _instruction(text: Any) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"an instruction must be non-empty text, got {text!r}")
    return text.strip()


def observes(policy: Policy) -> bool:
    """Whether ``policy`` takes frames one by one and samples from its history.

    That is, whether it has both ``observe`` and ``sample_chunk``.
    """
    return callable(getattr(policy, "observe", None)) and callable(getattr(policy, "sample_chunk", None))


class PolicyRunner:
    """Runs ``policy`` under a contract.

    ``observe`` every tick + ``sample_chunk`` when it has them, else ``predict_chunk``, else ``step``
    (its action, then its target held).
    """

    def __init__(self, contract: Contract, policy: Policy, config: PolicyRunnerConfig = PolicyRunnerConfig(),
                 latency_clock: Callable[[], float] = time.perf_counter) -> None:
        features = [s.feature for s in contract.observations]
        if config.reference is not None and config.reference not in features:
            raise ValueError(f"PolicyRunnerConfig.reference must be one of {features} or None, "
                             f"got {config.reference!r}")
        self.contract, self.policy, self.config = contract, policy, config
        self._period = contract.actions.period_s
        self._streams = {s.feature: s for s in contract.observations}
        self._aligner = StreamAligner([stream_config(s) for s in contract.observations], config.reference)
        self._scheduler = ChunkScheduler(ChunkSchedulerConfig(self._period, config.blend, config.ensemble_k))
        self._safety = SafetyFilter(safety_config(contract))
        self._stats = LoopStats(LoopStatsConfig(self._period))
        self._latency_clock = latency_clock
        self._lock = threading.RLock()
        self._newest: dict[str, Sample] = {}
        self._task: str | None = None
        self._running = False
        self._stop_requested = False  # by stop(): instructions do not restart, start() does
        self._reset_policy = True  # reset on the inference thread, never during a policy call
        self._plan: tuple[float, np.ndarray] | None = None  # t_obs, targets P (N + 1, 6)
        self._carry_target = False  # next base: the pose commanded last (task changed while running)
        self._last_t_obs = -math.inf
        self._last_infer_at = -math.inf
        self._generation = 0  # bumped whenever chunks are cleared: an inference in flight is discarded
        self._last_gripper = OPEN
        self._counts: Counter[str] = Counter()
        self._last_rejection: str | None = None
        self._last_decision: Decision | None = None
        self._observes = observes(policy)
        self._frames: deque[tuple[float, dict[str, np.ndarray]]] = deque(maxlen=FRAME_BUFFER)  # (t_obs, obs)
        self._last_frame_t = -math.inf

    # ---- inputs -----------------------------------------------------------------------------------

    def on_sample(self, stream: str, sample: Sample) -> None:
        """A converted message of the stream feeding feature ``stream``."""
        with self._lock:
            self._aligner.push(stream, sample)
            newest = self._newest.get(stream)
            if newest is None or sample.stamp >= newest.stamp:
                self._newest[stream] = sample

    def on_malformed(self, stream: str, error: str) -> int:
        """Count a message of ``stream`` that could not be converted; returns the stream's count."""
        with self._lock:
            self._stats.dropped()
            self._counts[f"malformed/{stream}"] += 1
            self._last_rejection = f"{stream}: {error}"
            return self._counts[f"malformed/{stream}"]

    def on_instruction(self, text: str) -> None:
        """Switch to the instruction and run it, unless stop() stopped the runner (then start() runs it)."""
        with self._lock:
            if self._stop_requested:
                self.set_task(text)
            elif self._running:
                self.set_task(text)  # the next subtask of a chain: goes on from the commanded target
            else:
                self.start(text)

    def set_task(self, text: str) -> None:
        """The task to run; a different one resets the policy and clears the chunks, running or not."""
        text = _instruction(text)
        with self._lock:
            if text != self._task:
                self._task = text
                self._reset_policy = True
                self._clear_chunks()
                self._carry_target = self._running and not self._stop_requested

    def start(self, task_text: str | None = None) -> None:
        """Run ``task_text`` (None: the task set before) from a fresh policy; releases a stop."""
        with self._lock:
            if task_text is not None:
                self._task = _instruction(task_text)
            if self._task is None:
                raise ValueError("start needs a task: send an instruction or set_task first")
            self._running, self._stop_requested, self._reset_policy = True, False, True
            self._safety.release()
            self._clear_chunks()

    def stop(self, reason: str) -> None:
        """Stop at once (the stop service): every tick holds the last command until start()."""
        with self._lock:
            self._running, self._stop_requested = False, True
            self._safety.stop(reason)
            self._clear_chunks()

    def safe_stop(self) -> None:
        """Hold from the next tick on (deactivate, shutdown); the task stays for resume()."""
        with self._lock:
            self._safety.safe_stop()
            self._clear_chunks()

    def resume(self) -> None:
        """Undo safe_stop (activate); the running task goes on from the measured pose. A stop() stays."""
        with self._lock:
            if not self._stop_requested:
                self._safety.release()
            self._clear_chunks()

    # ---- inference --------------------------------------------------------------------------------

    def inference_due(self, now: float) -> bool:
        """Whether to start an inference now.

        Yes when running and there is no chunk, or the newest one is about to run out, or
        ``infer_every`` periods have passed.
        """
        with self._lock:
            if not self._running:
                return False
            if self._plan is None:
                return True
            t_obs, targets = self._plan
            ticks_left = len(targets) - 2 - _slot(t_obs, now, self._period)
            every = self.config.infer_every
            return ticks_left <= self.config.refill_ticks or (
                every > 0 and _slot(self._last_infer_at, now, self._period) >= every)

    def infer(self, now: float) -> int | None:
        """Run the policy on the newest aligned observation and schedule its chunk.

        Returns how many leading actions were skipped as already past, or None when no chunk was
        added (see diagnostics).
        """
        with self._lock:
            request = self._prepare(now)
        if request is None:
            return None
        if request.reset_policy:
            self.policy.reset()
        started = self._latency_clock()
        actions = self._predict(request.frames, request.instruction)
        latency = max(0.0, self._latency_clock() - started)  # a ROS clock may jump back
        with self._lock:
            self._stats.inference(latency)
            return self._schedule(request, actions, now + latency)

    def _prepare(self, now: float) -> _Inference | None:
        if not self._running or self._task is None:
            return None
        if self._observation_time(now) <= self._last_t_obs:
            return None  # nothing newer than the observation of the last inference
        if self._observes:
            self._collect(now)
            if not self._frames or self._frames[-1][0] <= self._last_t_obs:
                return None
            t_obs, obs = self._frames[-1]
            frames = [frame for _, frame in self._frames]
            self._frames.clear()
        else:
            newest = self._frame(now)
            if newest is None:
                return None
            (t_obs, obs), frames = newest, [newest[1]]
        if self._plan is not None:
            base = self._plan_target(t_obs)
        elif self._carry_target and self._safety.last_commanded is not None:
            last = self._safety.last_commanded
            base = np.concatenate([last.position, last.euler])
        else:
            base = obs["robot_obs"][:6]
        self._carry_target = False
        self._last_t_obs, self._last_infer_at = t_obs, now
        reset, self._reset_policy = self._reset_policy, False
        return _Inference(t_obs, frames, base, self._generation, self._task, reset)

    def _frame(self, now: float) -> tuple[float, dict[str, np.ndarray]] | None:
        """The aligned observation for ``now`` as the policy's dict, with its time; None if there is none."""
        aligned = self._aligner.observation(now)
        if isinstance(aligned, Rejected):
            self._last_rejection = aligned.message
            return None
        try:
            robot_obs = robot_obs_from(aligned.values[TCP_POSE], aligned.values[ARM_JOINT_POSITIONS],
                                       self._streams[ARM_JOINT_POSITIONS].joint_names,
                                       float(aligned.values[GRIPPER_WIDTH][0]), self._last_gripper)
        except ValueError as error:
            self._last_rejection = f"robot_obs: {error}"
            return None
        obs = {**{f: aligned.values[f] for f in IMAGE_FEATURES}, "robot_obs": robot_obs}
        if SCENE_OBS in aligned.values:
            obs[SCENE_OBS] = aligned.values[SCENE_OBS]
        return aligned.stamp, obs

    def _collect(self, now: float) -> None:
        """Buffer the observation of this tick for an observing policy, if it is newer than the last one."""
        if self._observation_time(now) <= self._last_frame_t:
            return
        frame = self._frame(now)
        if frame is not None:
            self._frames.append(frame)
            self._last_frame_t = frame[0]

    def _observation_time(self, now: float) -> float:
        """The aligner's reference time.

        ``now``, or the reference stream's newest stamp (inf before one, so that the aligner reports
        the missing stream).
        """
        if self.config.reference is None:
            return now
        reference = self._newest.get(self.config.reference)
        return math.inf if reference is None else reference.stamp

    def _predict(self, frames: list[dict[str, np.ndarray]], instruction: str) -> np.ndarray:
        """The policy's chunk: every frame observed, then sampled; or the newest frame predicted on."""
        predict_chunk = getattr(self.policy, "predict_chunk", None)
        if self._observes:
            for frame in frames:
                self.policy.observe(frame)
            actions = np.asarray(self.policy.sample_chunk(instruction), dtype=np.float64)
        elif predict_chunk is not None:
            actions = np.asarray(predict_chunk(frames[-1], instruction), dtype=np.float64)
        else:
            actions = _hold_after(np.asarray(self.policy.step(frames[-1], instruction), dtype=np.float64))
        if actions.ndim != 2 or actions.shape[0] < 1 or actions.shape[1] != 7:
            raise ValueError(f"the policy returned actions of shape {actions.shape}; expected (N, 7) "
                             "relative actions (or (7,) from step)")
        return actions

    def _plan_target(self, t_obs: float) -> np.ndarray:
        """The previous plan's target in force in the slot just before ``t_obs`` (its last one after it)."""
        plan_t_obs, targets = self._plan
        return targets[min(max(_slot(plan_t_obs, t_obs, self._period), 0), len(targets) - 1)]

    def _schedule(self, request: _Inference, actions: np.ndarray, arrival: float) -> int | None:
        if request.generation != self._generation:
            self._counts["discarded_chunks"] += 1
            self._last_rejection = "chunk discarded: stopped, task changed or data stale during inference"
            return None
        if not np.isfinite(actions).all():
            self._counts["nonfinite_chunks"] += 1
            self._last_rejection = "non-finite chunk dropped"
            return None
        commands = np.empty((len(actions), 7))
        target = request.base
        for i, action in enumerate(actions):
            commands[i] = relative_to_command(action, target[:3], target[3:], request.t_obs + i * self._period
                                              ).as_array()
            target = commands[i, :6]
        self._plan = (request.t_obs, np.vstack([request.base, commands[:, :6]]))
        self._counts["chunks"] += 1
        return self._scheduler.add_chunk(request.t_obs, commands, arrival)

    # ---- control tick -----------------------------------------------------------------------------

    def tick(self, now: float, current_pose: Command | None = None) -> Decision:
        """What to publish at the control tick ``now``.

        ``current_pose``: the measured tcp pose with the last gripper action (default: the newest tcp
        pose sample).
        """
        with self._lock:
            self._stats.tick(now)
            proposal = None
            if self._running:
                stale = self._stale_stream(now)
                if stale is not None:
                    self._last_rejection = stale
                    self._clear_chunks()  # never resume actions planned before the gap
                else:
                    if self._observes:
                        self._collect(now)
                    if (values := self._scheduler.command_at(now)) is not None:
                        proposal = Command.from_array(now, values)
            current = current_pose or self.measured_pose()
            if current is None:
                decision = Decision(None, "none", ("no tcp pose received yet",))
            else:
                decision = self._safety.filter(proposal, now, current)
            if decision.command is not None:
                self._last_gripper = decision.command.gripper
            self._last_decision = decision
            return decision

    def _stale_stream(self, now: float) -> str | None:
        """Why the data is too old to act on (a stream silent for longer than its stale_s), or None."""
        for feature, stream in self._streams.items():
            sample = self._newest.get(feature)
            if sample is None:
                return f"stream {feature!r} has no sample yet"
            if now - sample.stamp > stream.stale_s + STAMP_SLACK_S:
                return f"stream {feature!r} stale: newest sample {now - sample.stamp:.3f} s old"
        return None

    def _clear_chunks(self) -> None:
        self._scheduler.reset()
        self._plan = None
        self._carry_target = False
        self._last_t_obs = self._last_frame_t = -math.inf
        self._frames.clear()
        self._generation += 1

    # ---- state ------------------------------------------------------------------------------------

    @property
    def task(self) -> str | None:
        return self._task

    @property
    def running(self) -> bool:
        return self._running

    def measured_pose(self) -> Command | None:
        """The newest tcp pose sample with the last gripper command, or None before the first."""
        with self._lock:
            sample = self._newest.get(TCP_POSE)
            if sample is None:
                return None
            position, euler = pose_to_tcp(sample.value)
            return Command(sample.stamp, position, euler, self._last_gripper)

    def measured_joints(self) -> np.ndarray | None:
        """The newest arm joint positions (7,) in the contract's order, or None before the first."""
        with self._lock:
            sample = self._newest.get(ARM_JOINT_POSITIONS)
            return None if sample is None else joint_positions(
                sample.value, self._streams[ARM_JOINT_POSITIONS].joint_names)

    def diagnostics(self) -> dict[str, Any]:
        """Loop timing, inference latency, counters, alignment and safety statistics.

        Counters: chunks, dropped and malformed messages; also the last reason something was
        rejected.
        """
        with self._lock:
            return {
                "task": self._task, "running": self._running, "stopped": self._safety.stopped,
                "loop": self._stats.summary(), "counts": dict(self._counts),
                "alignment": self._aligner.counts(), "safety": self._safety.stats(),
                "last_rejection": self._last_rejection,
                "last_decision": None if self._last_decision is None else self._last_decision.kind,
            }


def _hold_after(action: np.ndarray) -> np.ndarray:
    """A step() action as a chunk.

    The action, then ``STEP_HOLD_TICKS`` actions that keep its target (no motion, same gripper), as
    CALVIN's controller keeps a target until the next action. A chunk of the action alone would
    cover one slot only, which has passed by the time an asynchronous inference lands.
    """
    if action.shape != (7,):
        return action  # refused by the shape check of _predict
    hold = np.zeros((STEP_HOLD_TICKS, 7))
    hold[:, 6] = action[6]
    return np.vstack([action, hold])


def _slot(t0: float, t: float, period: float) -> int:
    """Index of the control slot of length ``period`` from ``t0`` that contains ``t``."""
    return math.floor((t - t0) / period + SLOT_SLACK)
