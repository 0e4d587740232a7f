"""CALVIN's 34 subtask success rules as pure functions of (start, current) snapshots.

Each rule family mirrors one base task of ``calvin_env.envs.tasks.Tasks``; the registry
binds family parameters per task name, in the order of ``tasks_new_playtable_tasks.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from types import MappingProxyType

import numpy as np
from scipy.spatial.transform import Rotation

from sim.snapshot import (
    BLOCKS,
    DRAWER,
    DRAWER_IDX,
    LED_IDX,
    LIGHTBULB_IDX,
    PLANK,
    ROBOT,
    SLIDER_IDX,
    TABLE_TOP,
    Snapshot,
)

Rule = Callable[[Snapshot, Snapshot], bool]

SCENE_OBS_DIM = 24
MAX_REST_VELOCITY = 1.0  # CALVIN's max_vel for stack/unstack
_TABLE_BODY = TABLE_TOP.split("/", 1)[0]
_BLOCK_SET = frozenset(BLOCKS)


def _body(contact: str) -> str:
    """Collapse a table link to the table body: CALVIN compares PyBullet body ids."""
    return _TABLE_BODY if contact.startswith(_TABLE_BODY + "/") else contact


def _non_robot_bodies(snapshot: Snapshot, block: str) -> frozenset[str]:
    return frozenset(_body(c) for c in snapshot.touching(block)) - {ROBOT}


def _at_rest(snapshot: Snapshot, block: str) -> bool:
    """All linear and angular velocity components below CALVIN's max_vel."""
    if block not in snapshot.velocities:
        raise ValueError(f"velocities[{block!r}] is missing; expected a (6,) lin+ang velocity")
    velocity = np.asarray(snapshot.velocities[block], dtype=float)
    if velocity.shape != (6,):
        raise ValueError(f"velocities[{block!r}] has shape {velocity.shape}; expected (6,)")
    return bool(np.all(np.abs(velocity) < MAX_REST_VELOCITY))


def rotate_block(
    block: str,
    degrees: float,
    start: Snapshot,
    current: Snapshot,
    xy_threshold: float = 30.0,
    z_threshold: float = 180.0,
    movement_threshold: float = 0.1,
) -> bool:
    """Block turned past ``degrees`` about z (sign = direction), barely tilted or moved, not held."""
    if np.linalg.norm(current.block_pos(block) - start.block_pos(block)) > movement_threshold:
        return False
    if not current.touching(block) - {ROBOT}:
        return False
    start_rot = Rotation.from_euler("xyz", start.block_euler(block))
    end_rot = Rotation.from_euler("xyz", current.block_euler(block))
    x, y, z = (end_rot * start_rot.inv()).as_euler("xyz", degrees=True)
    turned = degrees < z < z_threshold if degrees > 0 else -z_threshold < z < degrees
    return turned and abs(x) < xy_threshold and abs(y) < xy_threshold


def push_block(block: str, dx: float, start: Snapshot, current: Snapshot) -> bool:
    """Block slid more than ``dx`` along world x while keeping its (non-robot) supports."""
    start_support = _non_robot_bodies(start, block)
    end_support = _non_robot_bodies(current, block)
    if not start_support or not end_support or not start_support <= end_support:
        return False
    moved = current.block_pos(block)[0] - start.block_pos(block)[0]
    return moved > dx if dx > 0 else moved < dx


def move_joint(index: int, threshold: float, start: Snapshot, current: Snapshot) -> bool:
    """Scene joint ``scene_obs[index]`` changed by more than ``threshold`` in its sign's direction."""
    delta = current.scene_obs[index] - start.scene_obs[index]
    return bool(0 < threshold < delta or 0 > threshold > delta)


def lift_block(block: str, dz: float, surface: str, start: Snapshot, current: Snapshot) -> bool:
    """Block rose more than ``dz`` from ``surface`` and now touches only the robot."""
    rose = current.block_pos(block)[2] - start.block_pos(block)[2] > dz
    return rose and current.touching(block) == {ROBOT} and surface in start.touching(block)


def place_block(destination: str, start: Snapshot, current: Snapshot) -> bool:
    """The one block the robot held (touching nothing else) was released onto ``destination``."""
    held = [block for block in BLOCKS if ROBOT in start.touching(block)]
    if len(held) != 1:
        return False
    block = held[0]
    end_contacts = current.touching(block)
    return start.touching(block) == {ROBOT} and ROBOT not in end_contacts and destination in end_contacts


def stack_block(start: Snapshot, current: Snapshot) -> bool:
    """Some block that touched no block now rests only on blocks."""
    for block in BLOCKS:
        end_contacts = current.touching(block)
        if (
            not start.touching(block) & _BLOCK_SET
            and end_contacts
            and end_contacts <= _BLOCK_SET
            and _at_rest(current, block)
        ):
            return True
    return False


def unstack_block(start: Snapshot, current: Snapshot) -> bool:
    """Some block that rested only on blocks now touches no block."""
    for block in BLOCKS:
        start_contacts = start.touching(block)
        if (
            start_contacts
            and start_contacts <= _BLOCK_SET
            and not current.touching(block) & _BLOCK_SET
            and _at_rest(start, block)
        ):
            return True
    return False


def toggle_light(index: int, from_state: int, to_state: int, start: Snapshot, current: Snapshot) -> bool:
    """Light's logical state ``scene_obs[index]`` went from ``from_state`` to ``to_state``."""
    return bool(start.scene_obs[index] == from_state and current.scene_obs[index] == to_state)


def push_into(
    blocks: tuple[str, ...], source: str, destination: str, start: Snapshot, current: Snapshot
) -> bool:
    """Some block moved from touching only ``source`` to touching ``destination``, untouched by the robot."""
    return any(
        start.touching(block) == {source}
        and destination in current.touching(block)
        and ROBOT not in current.touching(block)
        for block in blocks
    )


def _task_table() -> Iterator[tuple[str, Rule]]:
    """(name, rule) pairs in the order of CALVIN's tasks_new_playtable_tasks.yaml."""
    colors = [block.removeprefix("block_") for block in BLOCKS]
    for color in colors:
        for side, degrees in (("right", -60.0), ("left", 60.0)):
            yield f"rotate_{color}_block_{side}", partial(rotate_block, f"block_{color}", degrees)
    for color in colors:
        for side, dx in (("right", 0.1), ("left", -0.1)):
            yield f"push_{color}_block_{side}", partial(push_block, f"block_{color}", dx)
    yield "move_slider_left", partial(move_joint, SLIDER_IDX, 0.15)
    yield "move_slider_right", partial(move_joint, SLIDER_IDX, -0.15)
    yield "open_drawer", partial(move_joint, DRAWER_IDX, 0.12)
    yield "close_drawer", partial(move_joint, DRAWER_IDX, -0.12)
    for color in colors:
        for where, dz, surface in (
            ("table", 0.05, TABLE_TOP),
            ("slider", 0.03, PLANK),
            ("drawer", 0.05, DRAWER),
        ):
            yield f"lift_{color}_block_{where}", partial(lift_block, f"block_{color}", dz, surface)
    yield "place_in_slider", partial(place_block, PLANK)
    yield "place_in_drawer", partial(place_block, DRAWER)
    yield "stack_block", stack_block
    yield "unstack_block", unstack_block
    for light, index in (("lightbulb", LIGHTBULB_IDX), ("led", LED_IDX)):
        yield f"turn_on_{light}", partial(toggle_light, index, 0, 1)
        yield f"turn_off_{light}", partial(toggle_light, index, 1, 0)
    yield "push_into_drawer", partial(push_into, BLOCKS, TABLE_TOP, DRAWER)


TASK_RULES: Mapping[str, Rule] = MappingProxyType(dict(_task_table()))
TASK_NAMES: tuple[str, ...] = tuple(TASK_RULES)


def task_rule(name: str) -> Rule:
    """The success rule of task ``name``; unknown names raise ValueError listing the valid ones."""
    try:
        return TASK_RULES[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASK_NAMES)}") from None


def _check_snapshot(snapshot: Snapshot, label: str) -> None:
    shape = np.shape(snapshot.scene_obs)
    if shape != (SCENE_OBS_DIM,):
        raise ValueError(f"{label}.scene_obs has shape {shape}; expected ({SCENE_OBS_DIM},)")


class TaskOracle:
    """Judges which CALVIN subtasks a transition from ``start`` to ``current`` achieved."""

    def __init__(self, tasks: Iterable[str] | None = None) -> None:
        names = TASK_NAMES if tasks is None else tuple(tasks)
        self.rules: dict[str, Rule] = {name: task_rule(name) for name in names}

    def completed(self, start: Snapshot, current: Snapshot) -> set[str]:
        """All tracked tasks whose success rule holds."""
        _check_snapshot(start, "start")
        _check_snapshot(current, "current")
        return {name for name, rule in self.rules.items() if rule(start, current)}

    def succeeded(self, task: str, start: Snapshot, current: Snapshot) -> bool:
        """Whether the success rule of ``task`` holds."""
        rule = task_rule(task)
        _check_snapshot(start, "start")
        _check_snapshot(current, "current")
        return bool(rule(start, current))
