"""Safety layer: pure limit helpers, the stop latch, the non-finite / stale gate, the watchdog hold."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ros_nodes.safety import (
    Decision,
    SafetyConfig,
    SafetyFilter,
    clamp_to_workspace,
    limit_rotation,
    limit_translation,
    missed_periods,
    wrap_angle,
)
from ros_nodes.types import Command

PERIOD = 1 / 30
T0 = 100.0
LOW, HIGH = np.array([-1.0, -1.0, 0.0]), np.array([1.0, 1.0, 1.0])


def tick(k: int) -> float:
    return T0 + k * PERIOD


def pose(x: float, y: float, z: float, yaw: float = 0.0, gripper: float = 1.0, stamp: float = T0) -> Command:
    return Command(stamp, np.array([x, y, z]), np.array([0.0, 0.0, yaw]), gripper)


def make_filter() -> SafetyFilter:
    config = SafetyConfig(
        workspace_min=tuple(LOW), workspace_max=tuple(HIGH), max_step_position=0.1, max_step_rotation=0.2,
        control_period=PERIOD, stale_s=0.2,
    )
    return SafetyFilter(config)


CURRENT = pose(0.0, 0.0, 0.5, gripper=-1.0)


def test_wrap_angle_into_minus_pi_to_pi():
    angles = [math.pi, -math.pi, 1.5 * math.pi, -1.5 * math.pi, 0.1, 4 * math.pi + 0.1]
    np.testing.assert_allclose(wrap_angle(angles), [-math.pi, -math.pi, -0.5 * math.pi, 0.5 * math.pi, 0.1, 0.1])


def test_clamp_to_workspace_per_axis():
    clamped, moved = clamp_to_workspace(np.array([2.0, -0.5, -3.0]), LOW, HIGH)
    np.testing.assert_array_equal(clamped, [1.0, -0.5, 0.0])
    assert moved
    inside, moved = clamp_to_workspace(np.array([0.2, -0.5, 0.3]), LOW, HIGH)
    np.testing.assert_array_equal(inside, [0.2, -0.5, 0.3])
    assert not moved


def test_limit_translation_keeps_direction_and_exact_length():
    limited, hit = limit_translation(np.array([0.0, 0.0, 0.5]), np.array([0.3, 0.4, 0.5]), 0.1)
    np.testing.assert_allclose(limited, [0.06, 0.08, 0.5], rtol=0, atol=1e-15)
    assert hit
    near, hit = limit_translation(np.array([0.0, 0.0, 0.5]), np.array([0.03, 0.04, 0.5]), 0.1)
    np.testing.assert_array_equal(near, [0.03, 0.04, 0.5])
    assert not hit


def test_limit_translation_random_directions():
    rng = np.random.default_rng(0)
    for _ in range(20):
        start, target = rng.uniform(-1, 1, 3), rng.uniform(-1, 1, 3) * 5
        limited, hit = limit_translation(start, target, 0.02)
        step, wanted = limited - start, target - start
        assert hit
        assert np.linalg.norm(step) == pytest.approx(0.02, rel=1e-12)
        np.testing.assert_allclose(step / np.linalg.norm(step), wanted / np.linalg.norm(wanted), atol=1e-12)


def test_limit_rotation_takes_the_short_way_across_pi():
    limited, hit = limit_rotation(np.array([0.0, 0.0, 3.1]), np.array([0.0, 0.0, -3.1]), 0.05)
    assert hit
    assert wrap_angle(limited[2] - 3.1) == pytest.approx(0.05, abs=1e-12)  # turned up through pi, not down
    assert -math.pi <= limited[2] < math.pi
    # the short way is 2 pi - 6.2 = 0.083 rad: within a 0.1 rad limit the target passes unchanged
    target, hit = limit_rotation(np.array([0.0, 0.0, 3.1]), np.array([0.0, 0.0, -3.1]), 0.1)
    np.testing.assert_array_equal(target, [0.0, 0.0, -3.1])
    assert not hit


def test_limit_rotation_scales_all_axes_by_the_largest():
    limited, hit = limit_rotation(np.zeros(3), np.array([0.4, -0.2, 0.1]), 0.2)
    np.testing.assert_allclose(limited, [0.2, -0.1, 0.05], atol=1e-15)
    assert hit


def test_missed_periods_rounds_to_ticks():
    assert missed_periods(tick(2) - tick(0), PERIOD) == 2
    assert missed_periods(0.9 * PERIOD, PERIOD) == 1
    assert missed_periods(0.3 * PERIOD, PERIOD) == 0


def test_first_command_is_limited_relative_to_current_pose():
    safety = make_filter()
    decision = safety.filter(pose(0.5, 0.0, 0.5, yaw=1.0), tick(0), CURRENT)
    assert decision.kind == "command"
    assert decision.reasons == ("step limited",)
    np.testing.assert_allclose(decision.command.position, [0.1, 0.0, 0.5])
    np.testing.assert_allclose(decision.command.euler, [0.0, 0.0, 0.2])
    assert decision.command.stamp == tick(0)
    # the next step starts from the pose just commanded, not from the (unmoved) measured pose
    decision = safety.filter(pose(0.5, 0.0, 0.5, yaw=1.0, stamp=tick(1)), tick(1), CURRENT)
    np.testing.assert_allclose(decision.command.position, [0.2, 0.0, 0.5])
    np.testing.assert_allclose(decision.command.euler, [0.0, 0.0, 0.4])


def test_clamped_to_workspace_then_step_limited():
    safety = make_filter()
    current = pose(0.95, 0.0, 0.5)
    decision = safety.filter(pose(5.0, 0.0, 0.5), tick(0), current)
    assert decision.reasons == ("clamped to workspace",)
    np.testing.assert_array_equal(decision.command.position, [1.0, 0.0, 0.5])
    decision = safety.filter(pose(0.0, 0.0, -2.0, stamp=tick(1)), tick(1), current)
    assert decision.reasons == ("clamped to workspace", "step limited")
    assert decision.command.position[2] >= 0.0


@pytest.mark.parametrize("gripper, sent", [(0.3, 1.0), (-0.7, -1.0), (0.0, -1.0), (1.0, 1.0)])
def test_gripper_passes_as_sign(gripper, sent):
    decision = make_filter().filter(pose(0.0, 0.0, 0.5, gripper=gripper), tick(0), CURRENT)
    assert decision.command.gripper == sent


@pytest.mark.parametrize("index", [0, 4, 6])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_proposal_is_dropped(index, bad):
    safety = make_filter()
    values = CURRENT.as_array()
    values[index] = bad
    decision = safety.filter(Command.from_array(tick(0), values), tick(0), CURRENT)
    assert decision == Decision(None, "none", ("non-finite action dropped",))
    assert safety.stats()["dropped_nonfinite"] == 1


def test_stale_proposal_is_dropped():
    safety = make_filter()
    decision = safety.filter(pose(0.0, 0.0, 0.5, stamp=tick(0) - 0.3), tick(0), CURRENT)
    assert (decision.kind, decision.reasons) == ("none", ("stale action dropped",))
    assert safety.stats()["dropped_stale"] == 1


def test_watchdog_holds_last_commanded_pose_and_resumes():
    safety = make_filter()
    commanded = safety.filter(pose(0.05, 0.0, 0.5, yaw=0.1, gripper=1.0), tick(0), CURRENT).command
    assert safety.filter(None, tick(1), CURRENT).kind == "none"
    for k in (2, 3):
        held = safety.filter(None, tick(k), CURRENT)
        assert (held.kind, held.reasons) == ("hold", ("watchdog hold",))
        np.testing.assert_array_equal(held.command.position, commanded.position)  # not current, not zeros
        np.testing.assert_array_equal(held.command.euler, commanded.euler)
        assert held.command.gripper == commanded.gripper
        assert held.command.stamp == tick(k)
    resumed = safety.filter(pose(0.1, 0.0, 0.5, stamp=tick(4)), tick(4), CURRENT)
    assert (resumed.kind, resumed.reasons) == ("command", ())
    assert safety.filter(None, tick(5), CURRENT).kind == "none"


def test_watchdog_counts_dropped_proposals_as_missed():
    safety = make_filter()
    safety.filter(pose(0.05, 0.0, 0.5), tick(0), CURRENT)
    nan = pose(math.nan, 0.0, 0.5)
    assert safety.filter(nan, tick(1), CURRENT).kind == "none"
    held = safety.filter(nan, tick(2), CURRENT)
    assert (held.kind, held.reasons) == ("hold", ("non-finite action dropped", "watchdog hold"))
    np.testing.assert_array_equal(held.command.position, [0.05, 0.0, 0.5])


def test_watchdog_before_any_proposal_holds_current_pose():
    safety = make_filter()
    assert safety.filter(None, tick(0), CURRENT).kind == "none"
    assert safety.filter(None, tick(1), CURRENT).kind == "none"
    held = safety.filter(None, tick(2), CURRENT)
    assert held.kind == "hold"
    np.testing.assert_array_equal(held.command.as_array(), CURRENT.as_array())
    # once held, the hold stays at that pose even if the measured pose drifts
    held = safety.filter(None, tick(3), pose(0.3, 0.0, 0.5))
    np.testing.assert_array_equal(held.command.position, CURRENT.position)


def test_stop_latch_holds_until_release_even_with_proposals():
    safety = make_filter()
    commanded = safety.filter(pose(0.05, 0.0, 0.5, gripper=1.0), tick(0), CURRENT).command
    safety.stop("operator")
    safety.stop("second press")
    assert safety.stopped
    for k in range(1, 6):
        held = safety.filter(pose(0.5, 0.5, 0.5, gripper=-1.0, stamp=tick(k)), tick(k), CURRENT)
        assert (held.kind, held.reasons) == ("hold", ("stopped: operator",))
        np.testing.assert_array_equal(held.command.position, commanded.position)
        assert held.command.gripper == 1.0
    safety.release()
    assert not safety.stopped
    moved = safety.filter(pose(0.5, 0.0, 0.5, stamp=tick(6)), tick(6), CURRENT)
    assert moved.kind == "command"
    np.testing.assert_allclose(moved.command.position, [0.1, 0.0, 0.5])  # limited from the measured pose


def test_safe_stop_holds_current_pose_when_nothing_commanded():
    safety = make_filter()
    safety.safe_stop()
    held = safety.filter(pose(0.5, 0.0, 0.5), tick(0), CURRENT)
    assert (held.kind, held.reasons) == ("hold", ("stopped: safe stop",))
    np.testing.assert_array_equal(held.command.as_array(), CURRENT.as_array())


def test_counters():
    safety = make_filter()
    safety.filter(pose(2.0, 0.0, 0.5), tick(0), CURRENT)  # clamped and step limited
    safety.filter(pose(0.1, 0.0, 0.5), tick(1), CURRENT)  # within limits
    safety.filter(pose(math.inf, 0.0, 0.5), tick(2), CURRENT)  # dropped, 1 missed
    safety.filter(None, tick(3), CURRENT)  # 2 missed: hold
    safety.filter(None, tick(4), CURRENT)  # hold
    safety.stop("operator")
    safety.filter(None, tick(5), CURRENT)
    assert safety.stats() == {
        "dropped_nonfinite": 1, "dropped_stale": 0, "clamped": 1, "step_limited": 1, "watchdog_holds": 2,
        "stops": 1,
    }


def test_current_pose_must_be_finite_when_used():
    with pytest.raises(ValueError, match="current pose"):
        make_filter().filter(pose(0.0, 0.0, 0.5), tick(0), pose(math.nan, 0.0, 0.5))


def test_wrong_shape_is_named():
    bad = Command(T0, np.zeros(2), np.zeros(3), 1.0)
    with pytest.raises(ValueError, match=r"proposed\.position"):
        make_filter().filter(bad, tick(0), CURRENT)


@pytest.mark.parametrize(
    "field, value",
    [
        ("workspace_min", (0.0, 0.0)),
        ("workspace_max", ("a", 1.0, 1.0)),
        ("workspace_min", (0.0, 2.0, 0.0)),  # above workspace_max on y
        ("max_step_position", 0.0),
        ("max_step_rotation", math.nan),
        ("watchdog_periods", 0),
        ("watchdog_periods", 1.5),
        ("control_period", -1.0),
        ("stale_s", math.inf),
    ],
)
def test_config_names_the_bad_field(field, value):
    kwargs = {"workspace_min": (-1.0, -1.0, 0.0), "workspace_max": (1.0, 1.0, 1.0), field: value}
    with pytest.raises(ValueError, match=field):
        SafetyConfig(**kwargs)


def test_config_defaults():
    config = SafetyConfig(workspace_min=[-1, -1, 0], workspace_max=[1, 1, 1])
    assert config.workspace_min == (-1.0, -1.0, 0.0)
    assert (config.watchdog_periods, config.control_period) == (2, PERIOD)
