"""Tests for sim.state_sampler: random play-table states are valid, reproducible and at rest."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sim import snapshot as S
from sim.chains import symbolic_initial_states
from sim.physics import PlayTablePhysics
from sim.scene_config import SCENES, SceneConfig
from sim.scene_xml import DRAWER_RANGE, SWITCH_RANGE
from sim.state_sampler import (
    MIN_BLOCK_GAP,
    NEUTRAL_ROBOT_OBS,
    calvin_start,
    default_robot_obs,
    sample_scene_obs,
)
from sim.symbolic_state import SLOTS, TABLE_SLOTS, YAW_RANGE, physical_state

STILL_STEPS = 10


def _surface_of(xy: np.ndarray, cfg: SceneConfig) -> str | None:
    for name, (lo, hi) in cfg.surfaces.items():
        if np.all(xy >= lo[:2]) and np.all(xy <= hi[:2]):
            return name
    return None


def test_default_robot_obs_is_calvins_neutral_state():
    robot = default_robot_obs()
    np.testing.assert_allclose(robot[:3], [0.02587, -0.23131, 0.57128], atol=1e-5)
    np.testing.assert_allclose(robot[7:14], [-1.21779, 1.03988, 2.11978, -2.34205, -0.87016, 1.64119, 0.55345],
                               atol=1e-5)
    assert robot[6] == pytest.approx(0.08, abs=1e-6) and robot[14] == 1.0
    robot[:] = 0  # a copy: the module constant is untouched
    assert NEUTRAL_ROBOT_OBS[0] != 0


@pytest.mark.parametrize("scene", SCENES)
def test_sampled_scenes_are_valid(scene):
    cfg = SceneConfig(name=scene, render=False)
    rng = np.random.default_rng(0)
    for _ in range(50):
        obs = sample_scene_obs(rng, cfg)
        assert obs.shape == (24,)
        assert 0 <= obs[S.SLIDER_IDX] <= cfg.layout.slide_range
        assert 0 <= obs[S.DRAWER_IDX] <= DRAWER_RANGE
        assert obs[S.BUTTON_IDX] == 0
        assert obs[S.SWITCH_IDX] in (0.0, SWITCH_RANGE)
        assert obs[S.LIGHTBULB_IDX] == (obs[S.SWITCH_IDX] > SWITCH_RANGE / 2)
        assert obs[S.LED_IDX] in (0, 1)
        places = []
        for block in S.BLOCKS:
            x, y, z, roll, pitch, yaw = obs[S.BLOCK_SLICES[block]]
            place = _surface_of(np.array([x, y]), cfg)
            assert place is not None, f"{block} at ({x:.3f}, {y:.3f}) lies on no surface of scene {scene}"
            places.append(place)
            assert z == pytest.approx(cfg.surfaces[place][0][2], abs=2e-3)
            assert roll == 0 and pitch == 0 and -np.pi <= yaw <= np.pi
        assert "table" in places
        assert places.count("slider_left") <= 1 and places.count("slider_right") <= 1
        for a, b in itertools.combinations(S.BLOCKS, 2):
            gap = np.linalg.norm(obs[S.BLOCK_SLICES[a]][:2] - obs[S.BLOCK_SLICES[b]][:2])
            assert gap > MIN_BLOCK_GAP


@pytest.mark.parametrize("n_table", [1, 2, 3])
def test_table_blocks_fixes_how_many_start_on_the_table(n_table):
    cfg = SceneConfig(name="D", render=False)
    rng = np.random.default_rng(1)
    for _ in range(10):
        obs = sample_scene_obs(rng, cfg, table_blocks=n_table)
        places = [_surface_of(obs[S.BLOCK_SLICES[b]][:2], cfg) for b in S.BLOCKS]
        assert places.count("table") == n_table


def test_sampling_is_reproducible_with_the_same_seed():
    cfg = SceneConfig(name="D", render=False)
    a = sample_scene_obs(np.random.default_rng(42), cfg)
    b = sample_scene_obs(np.random.default_rng(42), cfg)
    c = sample_scene_obs(np.random.default_rng(43), cfg)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sampling_covers_the_articulation_range():
    cfg = SceneConfig(name="D", render=False)
    rng = np.random.default_rng(2)
    obs = np.array([sample_scene_obs(rng, cfg) for _ in range(100)])
    assert obs[:, S.SLIDER_IDX].min() == 0 and obs[:, S.SLIDER_IDX].max() == pytest.approx(0.28)
    assert obs[:, S.DRAWER_IDX].min() == 0 and obs[:, S.DRAWER_IDX].max() == pytest.approx(DRAWER_RANGE)
    assert set(obs[:, S.LED_IDX]) == {0, 1} and set(obs[:, S.LIGHTBULB_IDX]) == {0, 1}


@pytest.fixture(scope="module")
def physics() -> PlayTablePhysics:
    return PlayTablePhysics(SceneConfig(name="D", render=False))


def _block_drift_after_still_steps(p: PlayTablePhysics, scene: np.ndarray) -> float:
    p.set_state(default_robot_obs(), scene)
    q = p.arm_joints()
    for _ in range(STILL_STEPS):
        p.step(q, True)
    after = p.scene_obs()
    return max(np.linalg.norm(after[S.BLOCK_SLICES[b]][:3] - scene[S.BLOCK_SLICES[b]][:3]) for b in S.BLOCKS)


def test_blocks_sampled_on_the_table_stay_in_place(physics):
    rng = np.random.default_rng(5)
    for _ in range(10):
        assert _block_drift_after_still_steps(physics, sample_scene_obs(rng, physics.cfg, table_blocks=3)) < 0.01


def test_sampled_blocks_start_clear_of_fixtures_and_stay_in_place(physics):
    rng = np.random.default_rng(0)
    worst_depth, worst_drift = 0.0, 0.0
    for _ in range(10):
        scene = sample_scene_obs(rng, physics.cfg)
        physics.set_state(default_robot_obs(), scene)  # runs mj_forward: contacts are current
        d, blocks = physics.data, set(physics.block_geom.values())
        depths = [-d.contact[i].dist for i in range(d.ncon) if {d.contact[i].geom1, d.contact[i].geom2} & blocks]
        worst_depth = max([worst_depth, *depths])
        worst_drift = max(worst_drift, _block_drift_after_still_steps(physics, scene))
    assert worst_depth < 0.002, f"a sampled block starts {worst_depth * 1000:.0f} mm inside a fixture"
    assert worst_drift < 0.01


def test_calvin_starts_are_calvins_reset_states_with_fresh_yaws():
    rng = np.random.default_rng(0)
    starts = [calvin_start(rng) for _ in range(200)]
    articulations = {tuple(physical_state(state)[1][:6]) for state in symbolic_initial_states()}
    slots = np.array([*TABLE_SLOTS, *SLOTS.values()])
    for scene in starts:
        assert tuple(scene[:6]) in articulations
        places = [int(np.argmin(np.linalg.norm(slots - scene[i:i + 3], axis=1))) for i in (6, 12, 18)]
        assert all(np.allclose(slots[p], scene[i:i + 3]) for p, i in zip(places, (6, 12, 18)))
        assert len(set(places)) == 3  # one block a slot
        assert all(YAW_RANGE[0] <= scene[i] <= YAW_RANGE[1] for i in (11, 17, 23))
    assert len({tuple(s[:6]) for s in starts}) == len(articulations)  # every articulation state comes up
    table_slots = {tuple(s[i:i + 3]) for s in starts for i in (6, 12, 18) if s[i + 2] < 0.4605}
    assert len(table_slots) == 2  # both of CALVIN's table slots
    assert len({round(float(s[11]), 6) for s in starts}) == 200  # yaws are drawn afresh, not the evaluation's
    np.testing.assert_array_equal(calvin_start(np.random.default_rng(5)), calvin_start(np.random.default_rng(5)))
