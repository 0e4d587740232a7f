"""LoopStats: its numbers against numpy on known inputs, the rolling window, counts, bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ros_nodes.loop_stats import LoopStats, LoopStatsConfig


def test_summary_matches_numpy_on_jittered_ticks_and_latencies():
    rng = np.random.default_rng(0)
    periods = 1 / 30 + rng.normal(0.0, 0.002, size=500)
    latencies = rng.gamma(4.0, 0.02, size=200)
    stats = LoopStats(LoopStatsConfig(period_s=1 / 30, window=1000))
    for t in np.concatenate([[10.0], 10.0 + np.cumsum(periods)]):
        stats.tick(float(t))
    for latency in latencies:
        stats.inference(float(latency))
    stats.dropped(3)
    stats.dropped()
    summary = stats.summary()
    measured = np.diff(np.concatenate([[10.0], 10.0 + np.cumsum(periods)]))
    assert (summary["ticks"], summary["inferences"], summary["dropped"]) == (501, 200, 4)
    assert summary["period_mean_s"] == pytest.approx(measured.mean())
    assert summary["jitter_std_s"] == pytest.approx(np.std(measured - 1 / 30))
    assert summary["jitter_p99_s"] == pytest.approx(np.percentile(np.abs(measured - 1 / 30), 99))
    for q in (50, 95, 99):
        assert summary[f"inference_p{q}_s"] == pytest.approx(np.percentile(latencies, q))


def test_hand_made_numbers():
    stats = LoopStats(LoopStatsConfig(period_s=0.1))
    for t in (0.0, 0.1, 0.2, 0.4, 0.5):  # periods 0.1, 0.1, 0.2, 0.1: one missed tick
        stats.tick(t)
    for latency in (0.01, 0.02, 0.03, 0.04, 0.05):
        stats.inference(latency)
    summary = stats.summary()
    assert summary["period_mean_s"] == pytest.approx(0.125)
    assert summary["jitter_std_s"] == pytest.approx(np.sqrt(3 * 0.025**2 + 0.075**2) / 2)
    assert summary["jitter_p99_s"] == pytest.approx(0.1 * 0.97)  # |dev| = 0, 0, 0.1, 0: 0.1 * (0.99*3 - 2)
    assert summary["inference_p50_s"] == pytest.approx(0.03)
    assert summary["inference_p95_s"] == pytest.approx(0.048)


def test_the_window_keeps_only_the_newest():
    stats = LoopStats(LoopStatsConfig(period_s=0.1, window=3))
    for t in (0.0, 1.0, 1.1, 1.2, 1.3):  # the 1 s gap falls out of the window
        stats.tick(t)
    for latency in (9.0, 0.1, 0.2, 0.3):
        stats.inference(latency)
    summary = stats.summary()
    assert summary["period_mean_s"] == pytest.approx(0.1)
    assert summary["inference_p99_s"] == pytest.approx(np.percentile([0.1, 0.2, 0.3], 99))
    assert (summary["ticks"], summary["inferences"]) == (5, 4)  # counts are not windowed


def test_empty_statistics_are_nan_and_a_clock_reset_adds_no_negative_period():
    stats = LoopStats(LoopStatsConfig(period_s=0.1))
    stats.tick(5.0)
    summary = stats.summary()
    assert summary["ticks"] == 1 and all(math.isnan(summary[k]) for k in ("period_mean_s", "inference_p50_s"))
    stats.tick(0.0)  # sim time restarted
    stats.tick(0.1)
    assert stats.summary()["period_mean_s"] == pytest.approx(0.1)


def test_bad_inputs_name_the_value():
    with pytest.raises(ValueError, match="period_s must be a finite period > 0 s, got -1"):
        LoopStatsConfig(period_s=-1)
    with pytest.raises(ValueError, match="window must be a positive int, got 0"):
        LoopStatsConfig(period_s=0.1, window=0)
    stats = LoopStats(LoopStatsConfig(period_s=0.1))
    with pytest.raises(ValueError, match="tick time must be finite, got nan"):
        stats.tick(float("nan"))
    with pytest.raises(ValueError, match="latency must be finite and >= 0 s, got -0.5"):
        stats.inference(-0.5)
    with pytest.raises(ValueError, match="dropped count must be a positive int, got 0"):
        stats.dropped(0)
