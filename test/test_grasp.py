"""Tests for sim.grasp: yaw band, finger geometry, grasp yaw candidates and clear grasp choice."""

from __future__ import annotations

import numpy as np
import pytest

from sim import snapshot as S
from sim.grasp import (
    GRIPPER_SPAN,
    PAD_CENTRE,
    PAD_HALF,
    YAW_BAND,
    choose_grasp,
    finger_axis,
    in_rectangle,
    to_yaw_band,
    yaw_candidates,
)
from sim.scene_config import SceneConfig
from sim.scene_xml import SHELF_HALF_WIDTH

CFG = SceneConfig(name="D", render=False)
SIZES = CFG.block_sizes  # D: red 0.056 x 0.04, blue 0.04 x 0.04, pink 0.08 x 0.04
Z = 0.46


def scene(**blocks) -> np.ndarray:
    """Blocks far apart (red and blue on the table, pink on the shelf) unless given (x, y, yaw)."""
    out = np.zeros(24)
    poses = {"block_red": (0.05, -0.10, 0.0), "block_blue": (0.28, -0.10, 0.0), "block_pink": (-0.24, 0.09, 0.0)}
    poses.update(blocks)
    for b, (x, y, yaw) in poses.items():
        out[S.BLOCK_SLICES[b]] = [x, y, Z, 0, 0, yaw]
    return out


def rect(centre, x_axis, half) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x_axis = np.asarray(x_axis, dtype=float)
    return np.asarray(centre, dtype=float)[:2], np.stack([x_axis, [-x_axis[1], x_axis[0]]]), np.asarray(half)


def overlap(a, b) -> bool:
    """Exact separating-axis test for two oriented rectangles (centre, axes (2, 2), half extents)."""
    for axis in (*a[1], *b[1]):
        ra = sum(h * abs(ax @ axis) for h, ax in zip(a[2], a[1]))
        rb = sum(h * abs(ax @ axis) for h, ax in zip(b[2], b[1]))
        if abs((a[0] - b[0]) @ axis) > ra + rb:
            return False
    return True


def pads(xy, yaw: float) -> list:
    axis = finger_axis(yaw)
    return [rect(np.asarray(xy)[:2] + side * PAD_CENTRE * axis, axis, PAD_HALF) for side in (1, -1)]


def footprint(scene_obs: np.ndarray, block: str) -> tuple:
    x, y, _, _, _, yaw = scene_obs[S.BLOCK_SLICES[block]]
    return rect((x, y), (np.cos(yaw), np.sin(yaw)), np.asarray(SIZES[block][:2]) / 2)


def test_overlap_helper():
    unit = rect((0, 0), (1, 0), (0.5, 0.5))
    assert overlap(unit, rect((0.9, 0), (1, 0), (0.5, 0.5)))
    assert not overlap(unit, rect((1.1, 0), (1, 0), (0.5, 0.5)))
    diamond = rect((1.15, 0), (np.sqrt(0.5), np.sqrt(0.5)), (0.2, 0.2))  # corner reaches x = 0.867
    assert not overlap(unit, diamond)
    assert overlap(unit, rect((1.05, 0), (np.sqrt(0.5), np.sqrt(0.5)), (0.5, 0.5)))


# ---- pure helpers ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("yaw", "expected"),
    [(0.5, 0.5), (-1.8, -1.8), (3.7, 3.7), (-3.0, -3.0 + 2 * np.pi), (5.0, 5.0 - 2 * np.pi), (-2.9, -2.9 + 2 * np.pi)],
)
def test_to_yaw_band_maps_into_the_band(yaw, expected):
    assert to_yaw_band(yaw) == pytest.approx(expected)


def test_to_yaw_band_keeps_the_heading():
    for yaw in np.random.default_rng(0).uniform(-2 * np.pi - 1.8, 2 * np.pi + 3.7, 200):
        out = to_yaw_band(yaw)
        assert np.cos(out) == pytest.approx(np.cos(yaw)) and np.sin(out) == pytest.approx(np.sin(yaw))
        heading_in_band = any(YAW_BAND[0] <= yaw + k * 2 * np.pi <= YAW_BAND[1] for k in (-1, 0, 1))
        assert (YAW_BAND[0] <= out <= YAW_BAND[1]) == heading_in_band
    assert to_yaw_band(4.0) == pytest.approx(4.0)  # the heading 4.0 (= -2.28) is outside the band


def test_finger_axis_is_a_unit_vector_turning_with_yaw():
    np.testing.assert_allclose(finger_axis(0.0), [0, -1], atol=1e-12)
    np.testing.assert_allclose(finger_axis(np.pi / 2), [1, 0], atol=1e-12)
    for yaw in np.linspace(-3, 3, 7):
        assert np.linalg.norm(finger_axis(yaw)) == pytest.approx(1.0)
        assert finger_axis(yaw) @ finger_axis(yaw + np.pi / 2) == pytest.approx(0.0, abs=1e-12)


def test_in_rectangle():
    points = np.array([[0.0, 0.0], [0.09, 0.0], [0.0, 0.03], [0.11, 0.0], [0.0, 0.05]])
    np.testing.assert_array_equal(in_rectangle(points, (0, 0, 0.46), 0.0, (0.1, 0.04)),
                                  [True, True, True, False, False])
    # turned by 90 degrees the long side lies along y
    np.testing.assert_array_equal(in_rectangle(points, (0, 0), np.pi / 2, (0.1, 0.04)),
                                  [True, False, True, False, True])
    np.testing.assert_array_equal(in_rectangle(np.array([[1.0, 2.05]]), (1.0, 2.0), 0.0, (0.01, 0.06)), [True])


# ---- yaw candidates -------------------------------------------------------------------------
def test_candidates_skip_sides_wider_than_the_gripper():
    assert SIZES["block_pink"][0] > GRIPPER_SPAN >= SIZES["block_pink"][1]
    for block_yaw in (0.0, 0.4, -1.0):
        yaws = yaw_candidates(block_yaw, SIZES["block_pink"], 0.0)
        assert yaws
        for yaw in yaws:  # fingers only close across the 0.04 side: yaw = block yaw + k * pi
            k = (yaw - block_yaw) / np.pi
            assert k == pytest.approx(round(k), abs=1e-9)
    assert len(yaw_candidates(0.0, SIZES["block_red"], 0.0)) > len(yaw_candidates(0.0, SIZES["block_pink"], 0.0))
    assert yaw_candidates(0.0, (0.08, 0.08, 0.04), 0.0) == []


def test_candidates_lie_in_the_band_best_first():
    for ref in (0.0, 1.0, 3.0):
        yaws = yaw_candidates(0.3, SIZES["block_blue"], ref)
        assert yaws and all(YAW_BAND[0] <= y <= YAW_BAND[1] for y in yaws)
        costs = [abs(y - ref) for y in yaws]
        assert costs == sorted(costs)
    assert yaw_candidates(0.0, SIZES["block_red"], 0.0) == pytest.approx([0.0, -np.pi / 2, np.pi / 2, np.pi])


@pytest.mark.parametrize("turn", [1.5, -1.5, np.pi])
def test_candidates_respect_turn(turn):
    free = yaw_candidates(0.0, SIZES["block_blue"], 0.0)
    turned = yaw_candidates(0.0, SIZES["block_blue"], 0.0, turn=turn)
    assert turned and set(turned) < set(free)
    assert all(YAW_BAND[0] <= y + turn <= YAW_BAND[1] for y in turned)
    assert all(not YAW_BAND[0] <= y + turn <= YAW_BAND[1] for y in set(free) - set(turned))


def test_x_fingers_prefers_closing_along_world_x():
    yaws = yaw_candidates(0.0, SIZES["block_red"], 0.0, x_fingers=True)
    assert abs(finger_axis(yaws[0])[0]) == pytest.approx(1.0)
    assert yaw_candidates(0.0, SIZES["block_red"], 0.0)[0] == 0.0


# ---- grasp choice ---------------------------------------------------------------------------
def test_isolated_block_gets_a_centred_grasp():
    obs = scene()
    for block in ("block_red", "block_blue"):
        pos, yaw = choose_grasp(obs, CFG, block, reference=0.0)
        np.testing.assert_allclose(pos, obs[S.BLOCK_SLICES[block]][:3])
        assert yaw == yaw_candidates(0.0, SIZES[block], 0.0)[0]


def test_isolated_pink_block_is_taken_across_its_short_side():
    obs = scene(block_pink=(0.1, -0.1, 0.7), block_red=(0.28, -0.05, 0.0), block_blue=(-0.05, -0.08, 0.0))
    pos, yaw = choose_grasp(obs, CFG, "block_pink", reference=0.0)
    np.testing.assert_allclose(pos, [0.1, -0.1, Z])
    assert np.sin(yaw - 0.7) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("block_yaw", [0.0, 0.3, -0.5])
def test_neighbour_three_cm_beside_shifts_the_grasp_clear(block_yaw):
    """Blue cube 3 cm (edge to edge) beside red's 0.04 side, where the centred pad would land."""
    side = -np.array([-np.sin(block_yaw), np.cos(block_yaw)])  # red's local -y in the world
    red_xy = np.array([0.1, -0.08])
    blue_xy = red_xy + side * (0.02 + 0.03 + 0.02)
    obs = scene(block_red=(*red_xy, block_yaw), block_blue=(*blue_xy, block_yaw))
    centred_yaw = choose_grasp(scene(block_red=(*red_xy, block_yaw)), CFG, "block_red", block_yaw)[1]
    assert any(overlap(p, footprint(obs, "block_blue")) for p in pads(red_xy, centred_yaw))

    pos, yaw = choose_grasp(obs, CFG, "block_red", reference=block_yaw)
    assert not np.allclose(pos[:2], red_xy) or yaw != centred_yaw
    for pad in pads(pos, yaw):
        assert not overlap(pad, footprint(obs, "block_blue"))
        assert not overlap(pad, footprint(obs, "block_red"))
    assert np.linalg.norm(pos[:2] - red_xy) <= 0.016 + 1e-9  # a small shift, still on the block
    assert pos[2] == Z


def test_neighbours_on_both_sides_turn_the_grasp():
    obs = scene(block_red=(0.1, -0.09, 0.0), block_blue=(0.1, -0.16, 0.0), block_pink=(0.1, -0.01, 0.0))
    pos, yaw = choose_grasp(obs, CFG, "block_red", reference=0.0)
    assert abs(finger_axis(yaw)[0]) == pytest.approx(1.0)  # fingers now close along x
    for pad in pads(pos, yaw):
        for other in ("block_blue", "block_pink", "block_red"):
            assert not overlap(pad, footprint(obs, other))


def test_pads_keep_off_the_shelf_wall():
    plank_x = CFG.layout.plank[0]
    wall = rect((plank_x - SHELF_HALF_WIDTH - 0.01, 0.105), (1, 0), (0.01, 0.075))
    block_x = plank_x - SHELF_HALF_WIDTH + 0.04
    obs = scene(block_blue=(block_x, 0.09, 0.0))
    centred = pads((block_x, 0.09), np.pi / 2)
    assert any(overlap(p, wall) for p in centred)
    pos, yaw = choose_grasp(obs, CFG, "block_blue", reference=np.pi / 2)
    assert not any(overlap(p, wall) for p in pads(pos, yaw))


def test_no_fitting_yaw_is_refused_by_name():
    # no yaw stays inside the band after turning by more than its width
    with pytest.raises(ValueError, match="no grasp yaw fits block_blue"):
        choose_grasp(scene(), CFG, "block_blue", reference=0.0, turn=YAW_BAND[1] - YAW_BAND[0] + 0.1)
