"""Reading a physical snapshot as CALVIN's symbolic state, and the tasks that state allows."""

from __future__ import annotations

from typing import Any

import numpy as np

from sim import snapshot as S
from sim.chains import next_states, task_names
from sim.scene_config import SceneConfig
from sim.scene_xml import TABLE_TOP_Z

DRAWER_OPEN_THRESHOLD = 0.11  # m; CALVIN's drawer is "open" beyond half of its 0.22 m travel
STACK_DZ = 0.02  # a touching block counts as "below" when its centre is this much lower
BELOW_TABLE_TOP = 0.02  # a block centre this far under the table top is inside the drawer
TABLE_SUPPORTS = (S.DRAWER, S.PLANK, S.TABLE_TOP, "floor")

SymbolicState = dict[str, Any]


def _symbol(block: str) -> str:
    """``block_red`` -> ``red_block`` (CALVIN's symbolic key)."""
    return f"{block.removeprefix('block_')}_block"


def _slider_side(pos: np.ndarray, cfg: SceneConfig) -> str:
    """Left or right half of the shelf, split midway between the two slider surfaces."""
    surf = cfg.surfaces
    middle = (surf["slider_left"][:, 0].mean() + surf["slider_right"][:, 0].mean()) / 2
    return "slider_left" if pos[0] < middle else "slider_right"


def _shelf_boundary_y(cfg: SceneConfig) -> float:
    """y between the table's sampling surface and the shelf's (a block's centre past it is on the shelf)."""
    surf = cfg.surfaces
    return float((surf["table"][1, 1] + surf["slider_left"][0, 1]) / 2)


def _place_by_position(pos: np.ndarray, cfg: SceneConfig) -> str:
    """Where a block without a supporting contact (in flight, just spawned) belongs."""
    if pos[2] < cfg.layout.drawer[2]:
        return "floor"
    if pos[2] < TABLE_TOP_Z - BELOW_TABLE_TOP:
        return "drawer"
    if pos[1] > _shelf_boundary_y(cfg):
        return _slider_side(pos, cfg)
    return "table"


def _place_by_support(support: str, pos: np.ndarray, contacts: frozenset[str], cfg: SceneConfig) -> str:
    if support == S.DRAWER:
        return "drawer"
    if support == S.PLANK and (S.TABLE_TOP not in contacts or pos[1] > _shelf_boundary_y(cfg)):
        return _slider_side(pos, cfg)
    if support == "floor":
        return "floor"
    return "table"


def _blocks_below(snapshot: S.Snapshot, block: str) -> list[str]:
    z = snapshot.block_pos(block)[2]
    return [b for b in snapshot.touching(block) & set(S.BLOCKS) if snapshot.block_pos(b)[2] < z - STACK_DZ]


def block_places(snapshot: S.Snapshot, cfg: SceneConfig) -> dict[str, str]:
    """Each block's symbolic place (keys ``block_red`` ...), from contacts, then position.

    Order of evidence: resting on a lower block (stacked_top, the lower one stacked_bottom),
    touching only the robot (grasped), a table support (drawer > plank > table top > floor),
    else the block's position. Besides CALVIN's values a block can be "floor" (fell off).
    """
    places: dict[str, str] = {}
    bottoms: set[str] = set()
    for block in S.BLOCKS:
        contacts = snapshot.touching(block)
        pos = snapshot.block_pos(block)
        below = _blocks_below(snapshot, block)
        supports = [s for s in TABLE_SUPPORTS if s in contacts]
        if below:
            places[block] = "stacked_top"
            bottoms.update(below)
        elif contacts == {S.ROBOT} or (S.ROBOT in contacts and not supports):
            places[block] = "grasped"
        elif supports:
            places[block] = _place_by_support(supports[0], pos, contacts, cfg)
        else:
            places[block] = _place_by_position(pos, cfg)
    for block in bottoms:
        if places[block] != "stacked_top":
            places[block] = "stacked_bottom"
    return places


def symbolic_state(snapshot: S.Snapshot, cfg: SceneConfig) -> SymbolicState:
    """CALVIN's symbolic state (keys in CALVIN's order) of a physical snapshot in scene ``cfg``."""
    scene = np.asarray(snapshot.scene_obs, dtype=float)
    if scene.shape != (24,):
        raise ValueError(f"snapshot.scene_obs has shape {scene.shape}; expected (24,)")
    places = block_places(snapshot, cfg)
    return {
        "led": round(float(scene[S.LED_IDX])),
        "lightbulb": round(float(scene[S.LIGHTBULB_IDX])),
        "slider": "left" if scene[S.SLIDER_IDX] > cfg.layout.slide_range / 2 else "right",
        "drawer": "open" if scene[S.DRAWER_IDX] > DRAWER_OPEN_THRESHOLD else "closed",
        **{_symbol(block): place for block, place in places.items()},
        "grasped": int(any(place == "grasped" for place in places.values())),
    }


def feasible_tasks(state: SymbolicState) -> list[str]:
    """Task names (in ``symbolic_tasks.json`` order) whose conditions match exactly one branch."""
    return [task for task in task_names() if len(next_states(state, task)) == 1]
