"""Plain-data state snapshots: what the task oracle, expert and evaluator exchange."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

BLOCKS = ("block_red", "block_blue", "block_pink")
ROBOT = "robot"
# Links of the fixed table, named as in CALVIN's table URDFs.
TABLE_TOP = "table/base_link"
PLANK = "table/plank_link"
DRAWER = "table/drawer_link"
SLIDER = "table/slide_link"
BUTTON = "table/button_link"
SWITCH = "table/switch_link"

# Segmentation ids (the index in this tuple) of the objects in rendered segmentation images.
SEGMENT_NAMES = ("background", "table", "robot", "block_red", "block_blue", "block_pink",
                 "drawer", "slider", "button", "switch", "floor")

# scene_obs layout (24): slider, drawer, button, switch, lightbulb, led, then xyz+euler per block.
SLIDER_IDX, DRAWER_IDX, BUTTON_IDX, SWITCH_IDX, LIGHTBULB_IDX, LED_IDX = range(6)
BLOCK_SLICES = {name: slice(6 + 6 * i, 12 + 6 * i) for i, name in enumerate(BLOCKS)}


@dataclass(frozen=True)
class Snapshot:
    """State at one instant: CALVIN observations plus contacts and block velocities.

    ``contacts[block]`` is the set of things the block touches: ``ROBOT``, a table link
    constant (``TABLE_TOP`` ...), or another block name. ``velocities[block]`` is (6,)
    linear then angular velocity in the world frame.
    """

    robot_obs: np.ndarray
    scene_obs: np.ndarray
    contacts: Mapping[str, frozenset[str]] = field(default_factory=dict)
    velocities: Mapping[str, np.ndarray] = field(default_factory=dict)

    def block_pos(self, block: str) -> np.ndarray:
        return np.asarray(self.scene_obs[BLOCK_SLICES[block]][:3])

    def block_euler(self, block: str) -> np.ndarray:
        return np.asarray(self.scene_obs[BLOCK_SLICES[block]][3:])

    def touching(self, block: str) -> frozenset[str]:
        return frozenset(self.contacts.get(block, frozenset()))
