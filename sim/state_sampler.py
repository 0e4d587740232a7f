"""Random valid play-table states (for data collection and default resets)."""

from __future__ import annotations

import numpy as np

from sim import snapshot as S
from sim.chains import symbolic_initial_states
from sim.scene_config import SceneConfig
from sim.scene_xml import DOOR_HALF_THICKNESS, DOOR_Y, DRAWER_RANGE, SHELF_HALF_WIDTH, SWITCH_RANGE
from sim.symbolic_state import place_blocks

NEUTRAL_ROBOT_OBS = np.array([
    0.02586889, -0.2313129, 0.5712808, 3.09045411, -0.02908596, 1.50013585, 0.07999963,
    -1.21779124, 1.03987629, 2.11978254, -2.34205014, -0.87015899, 1.64119093, 0.55344928, 1.0,
])
MIN_BLOCK_GAP = 0.09


def clear_of_fixtures(xy: np.ndarray, yaw: float, size, place: str, cfg: SceneConfig) -> bool:
    """Whether a block's footprint stays off the sliding door (and, on the shelf, its walls):
    CALVIN's surfaces bound only block centres."""
    c, s = abs(np.cos(yaw)), abs(np.sin(yaw))
    ext_x, ext_y = c * size[0] / 2 + s * size[1] / 2, s * size[0] / 2 + c * size[1] / 2
    door_front, door_back = DOOR_Y - DOOR_HALF_THICKNESS - 0.002, DOOR_Y + DOOR_HALF_THICKNESS + 0.002
    if place == "table":
        return xy[1] + ext_y < door_front
    inner = cfg.layout.plank[0] + np.array([-SHELF_HALF_WIDTH, SHELF_HALF_WIDTH])
    return bool(xy[1] - ext_y > door_back and inner[0] < xy[0] - ext_x and xy[0] + ext_x < inner[1])


def default_robot_obs() -> np.ndarray:
    """CALVIN's neutral robot state (also the evaluation's start state)."""
    return NEUTRAL_ROBOT_OBS.copy()


def sample_scene_obs(rng: np.random.Generator, cfg: SceneConfig, table_blocks: int | None = None) -> np.ndarray:
    """A random scene: articulations anywhere in range, blocks resting apart on the surfaces.

    ``table_blocks`` fixes how many blocks start on the table (the rest go to the slider shelf).
    """
    scene = np.zeros(24)
    scene[S.SLIDER_IDX] = rng.choice([0.0, cfg.layout.slide_range]) if rng.random() < 0.7 else \
        rng.uniform(0, cfg.layout.slide_range)
    scene[S.DRAWER_IDX] = rng.choice([0.0, DRAWER_RANGE]) if rng.random() < 0.7 else rng.uniform(0, DRAWER_RANGE)
    bulb = int(rng.integers(2))
    scene[S.SWITCH_IDX] = SWITCH_RANGE if bulb else 0.0
    scene[S.LIGHTBULB_IDX] = bulb
    scene[S.LED_IDX] = int(rng.integers(2))
    n_table = int(rng.integers(1, 4)) if table_blocks is None else table_blocks
    places = ["table"] * n_table + list(rng.permutation(["slider_left", "slider_right"]))[: 3 - n_table]
    places = list(rng.permutation(places))
    surf = cfg.surfaces
    placed: list[np.ndarray] = []
    for block, place in zip(S.BLOCKS, places):
        lo, hi = surf[place]  # CALVIN's surfaces bound the block centre (z is the resting height)
        for _ in range(500):
            xy, yaw = rng.uniform(lo[:2], hi[:2]), rng.uniform(-np.pi, np.pi)
            apart = all(np.linalg.norm(xy - p) > MIN_BLOCK_GAP for p in placed)
            if apart and clear_of_fixtures(xy, yaw, cfg.block_sizes[block], place, cfg):
                break
        placed.append(xy)
        scene[S.BLOCK_SLICES[block]] = [xy[0], xy[1], lo[2] + 1e-3, 0.0, 0.0, yaw]
    return scene


def calvin_start(rng: np.random.Generator) -> np.ndarray:
    """scene_obs (24,) of a start like the evaluation's: one of CALVIN's 192 symbolic initial states, drawn
    uniformly, built as CALVIN's reset builds it (blocks in its two table slots or on the slider shelf, yaws
    within pi/2 +- pi/8) but from ``rng``'s draws, so the yaws are fresh rather than the evaluation's own."""
    states = symbolic_initial_states()
    return place_blocks(states[int(rng.integers(len(states)))], rng)
