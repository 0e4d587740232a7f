"""ChunkScheduler: delay compensation, blending of overlapping chunks, gripper, running out."""

from __future__ import annotations

import numpy as np
import pytest

from ros_nodes.chunk_scheduler import ChunkScheduler, ChunkSchedulerConfig

DT = 0.1


def chunk(values: np.ndarray | list[float], gripper: float = 1.0) -> np.ndarray:
    """(N, 7): position and euler all ``values[i]`` at action ``i``, and one gripper value."""
    values = np.asarray(values, dtype=np.float64)
    actions = np.repeat(values[:, None], 7, axis=1)
    actions[:, 6] = gripper
    return actions


def scheduler(blend: str = "linear", k: float = 0.01) -> ChunkScheduler:
    return ChunkScheduler(ChunkSchedulerConfig(period_s=DT, blend=blend, ensemble_k=k))


def position(s: ChunkScheduler, t: float) -> float:
    return float(s.command_at(t)[0])


@pytest.mark.parametrize("blend", ["replace", "linear", "exponential"])
def test_a_chunk_arriving_two_ticks_late_skips_its_first_two_actions(blend):
    s = scheduler(blend)
    assert s.command_at(1.0) is None  # nothing scheduled yet
    assert s.add_chunk(1.0, chunk(np.arange(8)), now=1.0 + 2 * DT + 0.004) == 2
    assert s.command_at(1.0 + DT) is None  # a skipped slot: no command
    assert [position(s, 1.0 + i * DT) for i in range(2, 8)] == [2, 3, 4, 5, 6, 7]
    assert position(s, 1.0 + 2 * DT + 0.05) == 2  # a tick inside a slot gets that slot's action
    assert s.command_at(1.0 + 8 * DT) is None  # the chunk has run out: the watchdog holds the pose
    assert s.command_at(5.0) is None


def test_a_chunk_arriving_after_its_last_action_schedules_nothing():
    s = scheduler()
    assert s.add_chunk(0.0, chunk([1.0, 2.0]), now=0.25) == 2
    assert s.command_at(0.25) is None


def test_replace_newest_chunk_wins_where_it_has_started():
    s = scheduler("replace")
    s.add_chunk(0.0, chunk(np.zeros(6)), now=0.0)
    assert s.add_chunk(0.2, chunk(np.ones(6)), now=0.3) == 1
    assert position(s, 0.25) == 0  # the new chunk's slot 0 was skipped: the old chunk still covers it
    assert [position(s, t) for t in (0.3, 0.5, 0.6, 0.7)] == [1, 1, 1, 1]
    assert s.command_at(0.8) is None


def test_linear_crossfades_over_the_overlap():
    s = scheduler("linear")
    s.add_chunk(0.0, chunk(np.zeros(6)), now=0.0)  # ends at 0.6 s
    s.add_chunk(0.2, chunk(np.ones(6)), now=0.2)  # its actions 0..3 overlap the first chunk: fade in over 4
    got = [position(s, t) for t in (0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.7)]
    np.testing.assert_allclose(got, [0.2, 0.4, 0.6, 0.8, 0.8, 1.0, 1.0])


def test_linear_crossfade_starts_after_the_skipped_actions():
    s = scheduler("linear")
    s.add_chunk(0.0, chunk(np.zeros(6)), now=0.0)
    assert s.add_chunk(0.1, chunk(np.full(6, 2.0)), now=0.3) == 2  # actions 2..4 overlap: fade in over 3
    np.testing.assert_allclose([position(s, t) for t in (0.3, 0.4, 0.5, 0.6)], [0.5, 1.0, 1.5, 2.0])


def test_linear_folds_three_overlapping_chunks():
    s = scheduler("linear")
    s.add_chunk(0.0, chunk(np.zeros(10)), now=0.0)  # ends at 1.0 s
    s.add_chunk(0.3, chunk(np.full(10, 1.0)), now=0.3)  # overlaps 7 actions: weights 1/8 .. 7/8
    s.add_chunk(0.6, chunk(np.full(10, 2.0)), now=0.6)  # the schedule runs to 1.3 s: 7 actions overlap again
    second = (1 - 4 / 8) * 0.0 + 4 / 8 * 1.0  # at 0.6 s the second chunk is at its action 3: weight 4/8
    assert position(s, 0.6) == pytest.approx((1 - 1 / 8) * second + 1 / 8 * 2.0)
    second = (1 - 5 / 8) * 0.0 + 5 / 8 * 1.0
    assert position(s, 0.7) == pytest.approx((1 - 2 / 8) * second + 2 / 8 * 2.0)
    assert position(s, 1.0) == pytest.approx((1 - 5 / 8) * 1.0 + 5 / 8 * 2.0)  # the first chunk has run out
    assert position(s, 1.3) == 2.0


def test_exponential_weights_chunks_oldest_first_as_act():
    s = scheduler("exponential", k=np.log(2.0))  # weights 1, 1/2, 1/4 from the oldest
    s.add_chunk(0.0, chunk(np.zeros(8)), now=0.0)
    s.add_chunk(0.2, chunk(np.full(8, 3.0)), now=0.2)
    s.add_chunk(0.4, chunk(np.full(8, 7.0)), now=0.4)
    assert position(s, 0.3) == pytest.approx((0 * 1 + 3 * 0.5) / 1.5)  # = 1
    assert position(s, 0.5) == pytest.approx((0 * 1 + 3 * 0.5 + 7 * 0.25) / 1.75)
    assert position(s, 0.85) == pytest.approx((3 * 1 + 7 * 0.5) / 1.5)  # the first chunk has run out
    assert position(s, 1.05) == pytest.approx(7.0)


def test_exponential_with_k_zero_is_the_mean_and_negative_k_favours_the_newest():
    mean, newest = scheduler("exponential", k=0.0), scheduler("exponential", k=-5.0)
    for s in (mean, newest):
        s.add_chunk(0.0, chunk(np.zeros(8)), now=0.0)
        s.add_chunk(0.2, chunk(np.full(8, 4.0)), now=0.2)
    assert position(mean, 0.3) == pytest.approx(2.0)
    assert position(newest, 0.3) == pytest.approx(4.0 / (np.exp(-5.0) + 1.0))


@pytest.mark.parametrize("blend", ["replace", "linear", "exponential"])
def test_the_gripper_is_never_blended(blend):
    s = scheduler(blend, k=0.0)
    s.add_chunk(0.0, chunk(np.zeros(6), gripper=-1.0), now=0.0)
    assert s.command_at(0.15)[6] == -1.0
    s.add_chunk(0.2, chunk(np.ones(6), gripper=1.0), now=0.2)
    for t in (0.2, 0.3, 0.4, 0.5):
        assert s.command_at(t)[6] == 1.0
    assert s.command_at(0.15)[6] == -1.0  # before the new chunk starts, the old one alone


def test_euler_angles_blend_across_the_pi_seam():
    s = scheduler("linear")
    old, new = chunk(np.zeros(4)), chunk(np.zeros(4))
    old[:, 3:6], new[:, 3:6] = 3.1, -3.1
    s.add_chunk(0.0, old, now=0.0)
    s.add_chunk(0.3, new, now=0.3)  # one action overlaps: weight 1/2
    command = s.command_at(0.3)
    np.testing.assert_allclose(command[3:6], -np.pi)  # halfway between 3.1 and -3.1 the short way round
    np.testing.assert_allclose(command[:3], 0.0)


def test_the_newest_chunk_running_out_ends_the_commands_even_if_an_older_one_goes_on():
    s = scheduler("exponential")
    s.add_chunk(0.0, chunk(np.zeros(10)), now=0.0)
    s.add_chunk(0.2, chunk(np.ones(2)), now=0.2)
    assert s.command_at(0.35) is not None
    assert s.command_at(0.4) is None


def test_command_at_is_pure_and_reset_forgets():
    s = scheduler("linear")
    s.add_chunk(0.0, chunk(np.zeros(6)), now=0.0)
    s.add_chunk(0.2, chunk(np.ones(6)), now=0.2)
    first = [s.command_at(t) for t in (0.5, 0.3, 0.4)]
    again = [s.command_at(t) for t in (0.3, 0.4, 0.5)]
    np.testing.assert_array_equal(first, [again[2], again[0], again[1]])
    first[0][0] = 99.0  # a returned command is the caller's to change
    assert position(s, 0.5) == pytest.approx(0.8)
    s.reset()
    assert s.command_at(0.3) is None
    s.add_chunk(0.0, chunk(np.full(6, 5.0)), now=0.0)  # an earlier t_obs is fine after a reset
    assert position(s, 0.3) == 5.0


def test_bad_chunks_are_refused_with_the_reason():
    s = scheduler()
    with pytest.raises(ValueError, match=r"shape \(N, 7\).*got shape \(4, 6\)"):
        s.add_chunk(0.0, np.zeros((4, 6)), now=0.0)
    with pytest.raises(ValueError, match=r"got shape \(0, 7\)"):
        s.add_chunk(0.0, np.zeros((0, 7)), now=0.0)
    bad = chunk(np.zeros(4))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        s.add_chunk(0.0, bad, now=0.0)
    with pytest.raises(ValueError, match="t_obs and now must be finite"):
        s.add_chunk(float("inf"), chunk(np.zeros(4)), now=0.0)
    s.add_chunk(1.0, chunk(np.zeros(4)), now=1.0)
    with pytest.raises(ValueError, match="t_obs must increase from chunk to chunk, got 1.0 after 1.0"):
        s.add_chunk(1.0, chunk(np.zeros(4)), now=1.1)


@pytest.mark.parametrize("kwargs, message", [
    ({"period_s": 0.0}, "period_s must be a finite period > 0 s, got 0.0"),
    ({"period_s": float("inf")}, "got inf"),
    ({"period_s": DT, "blend": "mean"}, r"blend must be one of \('replace', 'linear', 'exponential'\), got 'mean'"),
    ({"period_s": DT, "ensemble_k": float("nan")}, "ensemble_k must be a finite number, got nan"),
])
def test_config_names_the_bad_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ChunkSchedulerConfig(**kwargs)
