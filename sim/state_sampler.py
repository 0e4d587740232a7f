"""Random valid play-table states (for data collection and default resets)."""

from __future__ import annotations

import numpy as np

from sim import snapshot as S
from sim.scene_config import SceneConfig
from sim.scene_xml import DRAWER_RANGE, SWITCH_RANGE

NEUTRAL_ROBOT_OBS = np.array([
    0.02586889, -0.2313129, 0.5712808, 3.09045411, -0.02908596, 1.50013585, 0.07999963,
    -1.21779124, 1.03987629, 2.11978254, -2.34205014, -0.87015899, 1.64119093, 0.55344928, 1.0,
])
MIN_BLOCK_GAP = 0.09


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
        for _ in range(200):
            xy = rng.uniform(lo[:2], hi[:2])
            if all(np.linalg.norm(xy - p) > MIN_BLOCK_GAP for p in placed):
                break
        placed.append(xy)
        scene[S.BLOCK_SLICES[block]] = [xy[0], xy[1], lo[2] + 1e-3, 0.0, 0.0, rng.uniform(-np.pi, np.pi)]
    return scene
