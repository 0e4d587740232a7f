"""Turns action chunks into one command per control tick.

Delay compensation (actions already past when a chunk arrives are skipped) and blending of
overlapping chunks.

A chunk of N absolute commands (N, 7) predicted from the observation at ``t_obs`` holds action ``i``
over the slot ``[t_obs + i * period_s, t_obs + (i + 1) * period_s)``; a tick at time ``t`` gets the
action whose slot contains ``t``. Pure: times are passed in, never read from a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BLENDS = ("replace", "linear", "exponential")
GRIPPER = 6
EULER = slice(3, 6)
# Tick times carry float rounding: a tick within a millionth of a period of a slot boundary belongs to
# the later slot.
SLOT_SLACK = 1e-6


@dataclass(frozen=True)
class ChunkSchedulerConfig:
    """How the scheduler blends overlapping chunks.

    ``blend``: ``replace`` (the newest wins), ``linear`` (the new chunk fades in over its overlap
    with the chunks before it), ``exponential`` (ACT's temporal ensembling: the chunks covering a
    tick, oldest first, weigh ``exp(-ensemble_k * i)``; k > 0 favours older predictions as in ACT,
    k < 0 newer ones, 0 is the plain mean). The gripper is never blended.
    """

    period_s: float  # control period dt
    blend: str = "linear"
    ensemble_k: float = 0.01

    def __post_init__(self) -> None:
        if not isinstance(self.period_s, (int, float)) or not 0 < self.period_s < math.inf:
            raise ValueError("ChunkSchedulerConfig.period_s must be a finite period > 0 s, "
                             f"got {self.period_s!r}")
        if self.blend not in BLENDS:
            raise ValueError(f"ChunkSchedulerConfig.blend must be one of {BLENDS}, got {self.blend!r}")
        if not isinstance(self.ensemble_k, (int, float)) or not math.isfinite(self.ensemble_k):
            raise ValueError("ChunkSchedulerConfig.ensemble_k must be a finite number, "
                             f"got {self.ensemble_k!r}")


@dataclass(frozen=True)
class _Chunk:
    t_obs: float
    actions: np.ndarray  # (N, 7)
    first: int  # first action whose slot had not ended when the chunk arrived
    ramp: int  # linear: actions from ``first`` on that overlap the chunks before it


class ChunkScheduler:
    def __init__(self, config: ChunkSchedulerConfig) -> None:
        self.config = config
        self._chunks: list[_Chunk] = []  # oldest first; the last one is the newest

    def add_chunk(self, t_obs: float, actions: np.ndarray, now: float) -> int:
        """Schedule ``actions`` (N, 7) predicted from the observation at ``t_obs``, arriving at ``now``.

        Returns how many leading actions were skipped because their slot had already ended.
        """
        actions = np.array(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[0] < 1 or actions.shape[1] != 7:
            raise ValueError("actions must be a chunk of shape (N, 7) with N >= 1, "
                             f"got shape {actions.shape}")
        if not np.isfinite(actions).all():
            raise ValueError("actions must be finite; the chunk holds NaN or inf")
        if not (math.isfinite(t_obs) and math.isfinite(now)):
            raise ValueError(f"t_obs and now must be finite, got t_obs={t_obs!r}, now={now!r}")
        if self._chunks and t_obs <= self._chunks[-1].t_obs:
            raise ValueError(f"t_obs must increase from chunk to chunk, got {t_obs!r} after "
                             f"{self._chunks[-1].t_obs!r}")
        n = len(actions)
        self._chunks = [c for c in self._chunks if self._slot(c.t_obs, now) < len(c.actions)]
        first = min(max(self._slot(t_obs, now), 0), n)
        ramp = 0
        if self._chunks:
            schedule_end = max(c.t_obs + len(c.actions) * self.config.period_s for c in self._chunks)
            overlapping = math.ceil((schedule_end - t_obs) / self.config.period_s - SLOT_SLACK)
            ramp = min(max(overlapping - first, 0), n - first)
        self._chunks.append(_Chunk(t_obs, actions, first, ramp))
        return first

    def command_at(self, t_tick: float) -> np.ndarray | None:
        """The (7,) command for the tick at ``t_tick``.

        None when no chunk covers it or the newest chunk has run out (the node's watchdog then holds
        the pose).
        """
        if not self._chunks or self._slot(self._chunks[-1].t_obs, t_tick) >= len(self._chunks[-1].actions):
            return None
        covering = [(c, i) for c in self._chunks
                    if c.first <= (i := self._slot(c.t_obs, t_tick)) < len(c.actions)]
        if not covering:
            return None
        newest = covering[-1][0].actions[covering[-1][1]]
        actions = np.stack([c.actions[i] for c, i in covering])  # (C, 7), oldest first
        # Euler angles within pi of the newest chunk's, so that averaging never crosses the +-pi seam.
        actions[:, EULER] = newest[EULER] + _wrap(actions[:, EULER] - newest[EULER])
        if self.config.blend == "replace":
            command = actions[-1]
        elif self.config.blend == "exponential":
            weights = np.exp(-self.config.ensemble_k * np.arange(len(actions)))
            command = weights @ actions / weights.sum()
        else:
            command = actions[0]
            for (chunk, i), action in zip(covering[1:], actions[1:]):
                j = i - chunk.first
                w = (j + 1) / (chunk.ramp + 1) if j < chunk.ramp else 1.0
                command = (1.0 - w) * command + w * action
        command = command.copy()
        command[GRIPPER] = newest[GRIPPER]
        return command

    def reset(self) -> None:
        self._chunks.clear()

    def _slot(self, t_obs: float, t: float) -> int:
        """Index of the action whose slot contains ``t``."""
        return math.floor((t - t_obs) / self.config.period_s + SLOT_SLACK)


def _wrap(angles: np.ndarray) -> np.ndarray:
    """Angles mapped to [-pi, pi)."""
    return (angles + np.pi) % (2 * np.pi) - np.pi
