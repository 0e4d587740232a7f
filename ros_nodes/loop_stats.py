"""Rolling statistics of the control loop (tick periods, jitter) and of inference latency.

For diagnostics and the timing benchmark. Pure: tick times are passed in.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LoopStatsConfig:
    period_s: float  # nominal control period
    window: int = 1000  # periods and latencies kept

    def __post_init__(self) -> None:
        if not isinstance(self.period_s, (int, float)) or not 0 < self.period_s < math.inf:
            raise ValueError(f"LoopStatsConfig.period_s must be a finite period > 0 s, got {self.period_s!r}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"LoopStatsConfig.window must be a positive int, got {self.window!r}")


class LoopStats:
    def __init__(self, config: LoopStatsConfig) -> None:
        self.config = config
        self._periods: deque[float] = deque(maxlen=config.window)
        self._latencies: deque[float] = deque(maxlen=config.window)
        self._last_tick: float | None = None
        self._ticks = self._inferences = self._dropped = 0

    def tick(self, t: float) -> None:
        """A control tick at time ``t``.

        A tick earlier than the previous one (a clock reset) only starts a new chain of periods.
        """
        if not math.isfinite(t):
            raise ValueError(f"tick time must be finite, got {t!r}")
        if self._last_tick is not None and t >= self._last_tick:
            self._periods.append(t - self._last_tick)
        self._last_tick = t
        self._ticks += 1

    def inference(self, latency_s: float) -> None:
        if not 0 <= latency_s < math.inf:
            raise ValueError(f"inference latency must be finite and >= 0 s, got {latency_s!r}")
        self._latencies.append(latency_s)
        self._inferences += 1

    def dropped(self, n: int = 1) -> None:
        """Count ``n`` dropped frames or commands."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"dropped count must be a positive int, got {n!r}")
        self._dropped += n

    def summary(self) -> dict[str, float | int]:
        """Counts since construction; period and latency statistics over the window (NaN while empty).

        ``jitter_std_s``: std of ``period - period_s``; ``jitter_p99_s``: 99th percentile of
        ``|period - period_s|``; percentiles as ``np.percentile`` (linear interpolation).
        """
        periods = np.asarray(self._periods, dtype=np.float64)
        latencies = np.asarray(self._latencies, dtype=np.float64)
        deviation = np.abs(periods - self.config.period_s)
        return {
            "ticks": self._ticks,
            "inferences": self._inferences,
            "dropped": self._dropped,
            "period_mean_s": _or_nan(periods, np.mean),
            "jitter_std_s": _or_nan(periods, np.std),
            "jitter_p99_s": _or_nan(deviation, lambda x: np.percentile(x, 99)),
            "inference_p50_s": _or_nan(latencies, lambda x: np.percentile(x, 50)),
            "inference_p95_s": _or_nan(latencies, lambda x: np.percentile(x, 95)),
            "inference_p99_s": _or_nan(latencies, lambda x: np.percentile(x, 99)),
        }


def _or_nan(values: np.ndarray, stat: Callable[[np.ndarray], Any]) -> float:
    return float(stat(values)) if values.size else math.nan
