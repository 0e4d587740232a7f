"""Observation alignment for the policy node.

Per-stream buffers of stamped samples, one value per stream for a reference time (hold / as-of
within a tolerance / drop), and a stale-data gate.

Pure: times are passed in (ROS clock seconds), never read from a clock.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ros_nodes.types import Sample

POLICIES = ("hold", "asof", "drop")
# ROS stamps have nanosecond resolution; comparisons of differences of float seconds get this slack
# so that a sample exactly at a tolerance or stale limit counts as within it.
STAMP_SLACK_S = 1e-9


@dataclass(frozen=True)
class StreamConfig:
    """How one observation stream is aligned.

    ``hold``: the latest sample. ``asof``: the latest sample at or before the reference time and at
    most ``tolerance_s`` before it. ``drop``: the latest sample newer than the one the previous
    observation used (each sample is used at most once). Any stream whose chosen sample is more than
    ``stale_s`` older than ``now`` rejects the observation.
    """

    name: str
    policy: str = "hold"
    tolerance_s: float = 0.05  # asof only
    stale_s: float = 0.2
    buffer: int = 16  # samples kept, newest by stamp

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"StreamConfig.name must be a non-empty string, got {self.name!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"StreamConfig({self.name!r}).policy must be one of {POLICIES}, "
                             f"got {self.policy!r}")
        if not isinstance(self.tolerance_s, (int, float)) or not self.tolerance_s >= 0:
            raise ValueError(f"StreamConfig({self.name!r}).tolerance_s must be >= 0 s, "
                             f"got {self.tolerance_s!r}")
        if not isinstance(self.stale_s, (int, float)) or not self.stale_s > 0:
            raise ValueError(f"StreamConfig({self.name!r}).stale_s must be > 0 s, got {self.stale_s!r}")
        if isinstance(self.buffer, bool) or not isinstance(self.buffer, int) or self.buffer < 1:
            raise ValueError(f"StreamConfig({self.name!r}).buffer must be a positive int, "
                             f"got {self.buffer!r}")


@dataclass(frozen=True)
class Aligned:
    """One value per stream for the reference time ``stamp`` (the policy's observation time)."""

    stamp: float
    values: dict[str, np.ndarray]
    stamps: dict[str, float]  # stamp of the sample chosen per stream


@dataclass(frozen=True)
class Rejected:
    """No observation: a stream had no usable sample, or only a stale one.

    ``stream`` had no usable sample (``missing``) or only one older than its ``stale_s``
    (``stale``); ``age``: ``now`` minus the stamp of the sample it would use, or of its newest
    sample when none is usable (None: no sample yet).
    """

    reason: str  # "missing" | "stale"
    stream: str
    age: float | None

    @property
    def message(self) -> str:
        age = "no sample yet" if self.age is None else f"sample {self.age:.3f} s old"
        return f"observation rejected: stream {self.stream!r} {self.reason} ({age})"


class StreamAligner:
    """Buffers samples per stream and builds aligned observations; counts rejections and dropped frames."""

    def __init__(self, streams: Sequence[StreamConfig], reference: str | None = None) -> None:
        """``reference``: the stream whose newest stamp is the reference time; None: ``now`` is."""
        names = [s.name for s in streams]
        if not names:
            raise ValueError("StreamAligner needs at least one StreamConfig, got none")
        if len(set(names)) != len(names):
            raise ValueError(f"StreamAligner stream names must be unique, got {names}")
        if reference is not None and reference not in names:
            raise ValueError(f"StreamAligner reference must be one of {names} or None, got {reference!r}")
        self.streams = {s.name: s for s in streams}
        self.reference = reference
        self._buffers: dict[str, list[Sample]] = {name: [] for name in names}
        self._newest: dict[str, float] = {}  # newest stamp pushed per stream, used or not
        self._consumed: dict[str, float] = {}  # drop streams: stamp of the sample last used
        self._counts: Counter[str] = Counter()

    def push(self, stream: str, sample: Sample) -> None:
        """Store a sample; out-of-order stamps are sorted in, the oldest beyond the buffer are evicted."""
        config = self.streams.get(stream)
        if config is None:
            raise ValueError(f"unknown stream {stream!r}; streams are {list(self.streams)}")
        if not math.isfinite(sample.stamp):
            raise ValueError(f"stream {stream!r}: sample stamp must be finite, got {sample.stamp!r}")
        self._newest[stream] = max(sample.stamp, self._newest.get(stream, -math.inf))
        if config.policy == "drop" and sample.stamp <= self._consumed.get(stream, -math.inf):
            self._counts[f"dropped/{stream}"] += 1  # older than a sample already used
            return
        buffer = self._buffers[stream]
        bisect.insort(buffer, sample, key=lambda s: s.stamp)
        if len(buffer) > config.buffer:
            buffer.pop(0)
            if config.policy == "drop":  # a drop stream's buffer holds only unused samples
                self._counts[f"dropped/{stream}"] += 1

    def observation(self, now: float) -> Aligned | Rejected:
        """One value per stream for the reference time, or the first stream that prevents it."""
        t_ref = now if self.reference is None else self._newest.get(self.reference)
        if t_ref is None:
            return self._reject("missing", self.reference, None)
        chosen: dict[str, Sample] = {}
        for name, config in self.streams.items():
            sample = self._choose(config, self._buffers[name], t_ref)
            probe = sample.stamp if sample is not None else self._newest.get(name)
            if probe is None:
                return self._reject("missing", name, None)
            age = now - probe
            if age > config.stale_s + STAMP_SLACK_S:
                return self._reject("stale", name, age)
            if sample is None:
                return self._reject("missing", name, age)
            chosen[name] = sample
        self._consume(chosen)
        self._counts["aligned"] += 1
        return Aligned(t_ref, {n: s.value for n, s in chosen.items()},
                       {n: s.stamp for n, s in chosen.items()})

    def counts(self) -> dict[str, int]:
        """Diagnostics since construction.

        Keys: ``aligned``, ``rejected/<reason>/<stream>``, ``dropped/<stream>`` (samples of ``drop``
        streams never used).
        """
        return dict(self._counts)

    def reset(self) -> None:
        """Forget buffered samples (e.g. on deactivate); the counts are kept."""
        for buffer in self._buffers.values():
            buffer.clear()
        self._newest.clear()
        self._consumed.clear()

    @staticmethod
    def _choose(config: StreamConfig, buffer: list[Sample], t_ref: float) -> Sample | None:
        if not buffer:
            return None
        if config.policy != "asof":  # hold: newest; drop: newest of the unused ones the buffer holds
            return buffer[-1]
        i = bisect.bisect_right(buffer, t_ref + STAMP_SLACK_S, key=lambda s: s.stamp)
        if i == 0 or t_ref - buffer[i - 1].stamp > config.tolerance_s + STAMP_SLACK_S:
            return None
        return buffer[i - 1]

    def _consume(self, chosen: dict[str, Sample]) -> None:
        for name, sample in chosen.items():
            if self.streams[name].policy != "drop":
                continue
            buffer = self._buffers[name]
            used = bisect.bisect_right(buffer, sample.stamp, key=lambda s: s.stamp)
            if used > 1:  # unused samples older than the one used
                self._counts[f"dropped/{name}"] += used - 1
            del buffer[:used]
            self._consumed[name] = sample.stamp

    def _reject(self, reason: str, stream: str, age: float | None) -> Rejected:
        self._counts[f"rejected/{reason}/{stream}"] += 1
        return Rejected(reason, stream, age)
