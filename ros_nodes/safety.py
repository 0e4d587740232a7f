"""Safety layer between the policy and the command publisher (plain Python, no ROS).

A stop latch, a gate for non-finite and stale actions, a watchdog that holds the last commanded
pose, a workspace clamp and per-tick step limits. The node calls ``SafetyFilter.filter`` once per
control tick.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ros_nodes.types import POSITION_STEP, ROTATION_STEP, Command

STAT_KEYS = ("dropped_nonfinite", "dropped_stale", "clamped", "step_limited", "watchdog_holds", "stops")


@dataclass(frozen=True)
class SafetyConfig:
    """Limits of the safety layer; the workspace box is in the robot base frame (m)."""

    workspace_min: tuple[float, float, float]
    workspace_max: tuple[float, float, float]
    max_step_position: float = math.sqrt(3) * POSITION_STEP  # m per tick: one full relative action
    max_step_rotation: float = ROTATION_STEP  # rad per tick on each Euler axis: one full relative action
    watchdog_periods: int = 2  # missed control periods before holding the last commanded pose
    control_period: float = 1 / 30  # s, the publisher's tick
    stale_s: float = 0.2  # a proposal for a tick older than this is dropped

    def __post_init__(self) -> None:
        for name in ("workspace_min", "workspace_max"):
            object.__setattr__(self, name, _vec3(name, getattr(self, name)))
        if not all(lo < hi for lo, hi in zip(self.workspace_min, self.workspace_max)):
            raise ValueError(
                f"SafetyConfig.workspace_min must be below workspace_max on every axis, "
                f"got {self.workspace_min} and {self.workspace_max}"
            )
        for name in ("max_step_position", "max_step_rotation", "control_period", "stale_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
                raise ValueError(f"SafetyConfig.{name} must be a positive finite number, got {value!r}")
        periods = self.watchdog_periods
        if isinstance(periods, bool) or not isinstance(periods, numbers.Integral) or periods < 1:
            raise ValueError(f"SafetyConfig.watchdog_periods must be an integer >= 1, got {periods!r}")


def _vec3(name: str, value: object) -> tuple[float, float, float]:
    try:
        box = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        box = None
    if box is None or box.shape != (3,) or not np.isfinite(box).all():
        raise ValueError(f"SafetyConfig.{name} must be 3 finite numbers (x, y, z in m), got {value!r}")
    return (float(box[0]), float(box[1]), float(box[2]))


@dataclass(frozen=True)
class Decision:
    """What to publish this tick: a command, a hold of the last commanded pose, or nothing."""

    command: Command | None
    kind: Literal["command", "hold", "none"]
    reasons: tuple[str, ...] = ()


def wrap_angle(angle: np.ndarray | float) -> np.ndarray:
    """Angles wrapped into [-pi, pi)."""
    return (np.asarray(angle, dtype=np.float64) + np.pi) % (2 * np.pi) - np.pi


def clamp_to_workspace(position: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, bool]:
    """Position clamped into the box per axis, and whether it had to move."""
    position = np.asarray(position, dtype=np.float64)
    clamped = np.clip(position, low, high)
    return clamped, bool(np.any(clamped != position))


def limit_translation(start: np.ndarray, target: np.ndarray, max_step: float) -> tuple[np.ndarray, bool]:
    """Target moved onto the segment from start so the step is at most max_step.

    The step is Euclidean and keeps its direction; the flag says whether it was limited.
    """
    start, target = np.asarray(start, dtype=np.float64), np.asarray(target, dtype=np.float64)
    delta = target - start
    length = float(np.linalg.norm(delta))
    if length <= max_step:
        return target.copy(), False
    return start + delta * (max_step / length), True


def limit_rotation(start: np.ndarray, target: np.ndarray, max_step: float) -> tuple[np.ndarray, bool]:
    """Euler target limited so no axis turns more than max_step from start.

    Per-axis Euler differences are wrapped into [-pi, pi) (the short way across +-pi); when the largest
    exceeds max_step the whole difference vector is scaled down, so the axes keep their proportions.
    A limited result is wrapped into [-pi, pi); a target within the limit is returned as given.
    """
    start, target = np.asarray(start, dtype=np.float64), np.asarray(target, dtype=np.float64)
    delta = wrap_angle(target - start)
    largest = float(np.max(np.abs(delta)))
    if largest <= max_step:
        return target.copy(), False
    return wrap_angle(start + delta * (max_step / largest)), True


def missed_periods(elapsed: float, period: float) -> int:
    """Control periods in elapsed seconds, rounded to the nearest tick so timer jitter does not count."""
    return math.floor(elapsed / period + 0.5)


def _check_shapes(name: str, command: Command) -> None:
    for field in ("position", "euler"):
        shape = np.shape(getattr(command, field))
        if shape != (3,):
            raise ValueError(f"{name}.{field} must have shape (3,), got {shape}")


class SafetyFilter:
    """Turns the policy's proposed command for each control tick into what may be published.

    Rules in order: stop latch -> non-finite / stale proposals dropped -> watchdog -> workspace clamp
    and step limits. Steps are limited relative to the pose commanded last, or to ``current`` (the
    measured pose, gripper = last gripper action -1/1) while nothing has been commanded since the
    start or the last ``release()``.
    """

    def __init__(self, config: SafetyConfig) -> None:
        self.config = config
        self._low = np.array(config.workspace_min)
        self._high = np.array(config.workspace_max)
        self._last_commanded: Command | None = None
        self._watch_since: float | None = None  # time of the last valid proposal, or of the first tick
        self._stop_reason: str | None = None
        self._counts = dict.fromkeys(STAT_KEYS, 0)

    @property
    def stopped(self) -> bool:
        return self._stop_reason is not None

    def stop(self, reason: str) -> None:
        """Latch a stop, for the immediate-stop service.

        Every tick holds the last commanded pose until release().
        """
        if self._stop_reason is None:
            self._stop_reason = reason
            self._counts["stops"] += 1

    def safe_stop(self) -> None:
        """Latch a stop on deactivate or shutdown."""
        self.stop("safe stop")

    def release(self) -> None:
        """Unlatch and start afresh (call on activate).

        The last commanded pose is forgotten, so the next steps are limited relative to the measured
        pose, and the watchdog counts from the next tick.
        """
        self._stop_reason = None
        self._last_commanded = None
        self._watch_since = None

    def stats(self) -> dict[str, int]:
        """Counters since construction; stops count latches, watchdog_holds count held ticks."""
        return dict(self._counts)

    def filter(self, proposed: Command | None, now: float, current: Command) -> Decision:
        """The decision for the control tick at ``now`` (s) given the policy's proposal, if any."""
        if self._stop_reason is not None:
            return self._hold(now, current, f"stopped: {self._stop_reason}")
        reasons: list[str] = []
        if proposed is not None:
            _check_shapes("proposed", proposed)
            if not np.isfinite([proposed.stamp, *proposed.as_array()]).all():
                self._counts["dropped_nonfinite"] += 1
                reasons.append("non-finite action dropped")
                proposed = None
            elif proposed.stamp < now - self.config.stale_s:
                self._counts["dropped_stale"] += 1
                reasons.append("stale action dropped")
                proposed = None
        if proposed is None:
            return self._watchdog(now, current, reasons)
        return self._command(proposed, now, current)

    def _watchdog(self, now: float, current: Command, reasons: list[str]) -> Decision:
        if self._watch_since is None or now < self._watch_since:  # first tick, or the clock jumped back
            self._watch_since = now
        if missed_periods(now - self._watch_since, self.config.control_period) < self.config.watchdog_periods:
            return Decision(None, "none", tuple(reasons))
        self._counts["watchdog_holds"] += 1
        return self._hold(now, current, *reasons, "watchdog hold")

    def _command(self, proposed: Command, now: float, current: Command) -> Decision:
        reasons = []
        position, clamped = clamp_to_workspace(proposed.position, self._low, self._high)
        if clamped:
            self._counts["clamped"] += 1
            reasons.append("clamped to workspace")
        # clamped before the step limit: a reference outside the box is brought back at the step rate
        reference = self._reference(current)
        position, moved_far = limit_translation(reference.position, position, self.config.max_step_position)
        euler, turned_far = limit_rotation(reference.euler, proposed.euler, self.config.max_step_rotation)
        if moved_far or turned_far:
            self._counts["step_limited"] += 1
            reasons.append("step limited")
        gripper = 1.0 if proposed.gripper > 0 else -1.0  # as the collector: 0 closes
        self._last_commanded = Command(now, position, euler, gripper)
        self._watch_since = now
        return Decision(self._last_commanded, "command", tuple(reasons))

    def _hold(self, now: float, current: Command, *reasons: str) -> Decision:
        last = self._reference(current)
        position, euler = (np.array(v, dtype=np.float64) for v in (last.position, last.euler))
        self._last_commanded = Command(now, position, euler, last.gripper)
        return Decision(self._last_commanded, "hold", reasons)

    @property
    def last_commanded(self) -> Command | None:
        """The pose commanded (or held) last; None before the first command or after a reset."""
        return self._last_commanded

    def _reference(self, current: Command) -> Command:
        """The pose commanded last, or the measured one while nothing has been commanded."""
        if self._last_commanded is not None:
            return self._last_commanded
        _check_shapes("current", current)
        if not np.isfinite(current.as_array()).all():
            raise ValueError("current pose must be finite to hold or limit steps from, "
                             f"got {current.as_array()}")
        return current
