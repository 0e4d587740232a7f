"""Tests for sim.task_oracle: one success and one near-miss per CALVIN task, plus edge rules."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pytest

from sim.snapshot import (
    BLOCK_SLICES,
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
from sim.task_oracle import TASK_NAMES, TASK_RULES, TaskOracle, task_rule

YAML_TASKS = [
    "rotate_red_block_right", "rotate_red_block_left",
    "rotate_blue_block_right", "rotate_blue_block_left",
    "rotate_pink_block_right", "rotate_pink_block_left",
    "push_red_block_right", "push_red_block_left",
    "push_blue_block_right", "push_blue_block_left",
    "push_pink_block_right", "push_pink_block_left",
    "move_slider_left", "move_slider_right", "open_drawer", "close_drawer",
    "lift_red_block_table", "lift_red_block_slider", "lift_red_block_drawer",
    "lift_blue_block_table", "lift_blue_block_slider", "lift_blue_block_drawer",
    "lift_pink_block_table", "lift_pink_block_slider", "lift_pink_block_drawer",
    "place_in_slider", "place_in_drawer",
    "stack_block", "unstack_block",
    "turn_on_lightbulb", "turn_off_lightbulb", "turn_on_led", "turn_off_led",
    "push_into_drawer",
]  # fmt: skip

TABLE_XYZ = {
    "block_red": (0.0, -0.05, 0.46),
    "block_blue": (0.15, -0.05, 0.46),
    "block_pink": (-0.15, -0.05, 0.46),
}
ORACLE = TaskOracle()


def snap(
    *,
    state: Mapping[int, float] | None = None,
    moves: Mapping[str, Iterable[float]] | None = None,
    turns: Mapping[str, Iterable[float]] | None = None,
    contacts: Mapping[str, Iterable[str]] | None = None,
    velocities: Mapping[str, Iterable[float]] | None = None,
) -> Snapshot:
    """Blocks at rest on the table top, joints and lights at 0; overrides by keyword.

    ``state``: scene_obs index -> value; ``moves``: block -> xyz offset (m); ``turns``: block ->
    xyz euler (deg); ``contacts``/``velocities`` replace a block's defaults.
    """
    scene = np.zeros(24)
    for block, xyz in TABLE_XYZ.items():
        position = np.add(xyz, (moves or {}).get(block, (0.0, 0.0, 0.0)))
        euler = np.radians(list((turns or {}).get(block, (0.0, 0.0, 0.0))))
        scene[BLOCK_SLICES[block]] = np.concatenate([position, euler])
    for index, value in (state or {}).items():
        scene[index] = value
    touching = {block: frozenset({TABLE_TOP}) for block in BLOCKS}
    touching.update({block: frozenset(c) for block, c in (contacts or {}).items()})
    speeds = {block: np.zeros(6) for block in BLOCKS}
    speeds.update({block: np.asarray(v, dtype=float) for block, v in (velocities or {}).items()})
    return Snapshot(np.zeros(15), scene, touching, speeds)


def _task_cases() -> dict[str, tuple[Snapshot, Snapshot, Snapshot]]:
    """task -> (start, success end, near-miss end)."""
    cases = {}
    for block in BLOCKS:
        color = block.removeprefix("block_")
        for side, sign in (("left", 1), ("right", -1)):
            cases[f"rotate_{color}_block_{side}"] = (
                snap(),
                snap(turns={block: (0, 0, sign * 90)}),
                snap(turns={block: (0, 0, sign * 59)}),
            )
            cases[f"push_{color}_block_{side}"] = (
                snap(),
                snap(moves={block: (-sign * 0.12, 0, 0)}),
                snap(moves={block: (-sign * 0.09, 0, 0)}),
            )
        for where, surface, dz in (
            ("table", TABLE_TOP, 0.05),
            ("slider", PLANK, 0.03),
            ("drawer", DRAWER, 0.05),
        ):
            cases[f"lift_{color}_block_{where}"] = (
                snap(contacts={block: {surface}}),
                snap(moves={block: (0, 0, dz + 0.01)}, contacts={block: {ROBOT}}),
                snap(moves={block: (0, 0, dz - 0.01)}, contacts={block: {ROBOT}}),
            )
    for name, index, start, delta, threshold in (
        ("move_slider_left", SLIDER_IDX, 0.2, 1, 0.15),
        ("move_slider_right", SLIDER_IDX, 0.2, -1, 0.15),
        ("open_drawer", DRAWER_IDX, 0.1, 1, 0.12),
        ("close_drawer", DRAWER_IDX, 0.15, -1, 0.12),
    ):
        cases[name] = (
            snap(state={index: start}),
            snap(state={index: start + delta * (threshold + 0.01)}),
            snap(state={index: start + delta * (threshold - 0.01)}),
        )
    for name, destination in (("place_in_slider", PLANK), ("place_in_drawer", DRAWER)):
        cases[name] = (
            snap(moves={"block_red": (0, 0, 0.1)}, contacts={"block_red": {ROBOT}}),
            snap(contacts={"block_red": {destination}}),
            snap(contacts={"block_red": {destination, ROBOT}}),
        )
    stacked = {"block_red": {"block_blue"}, "block_blue": {TABLE_TOP, "block_red"}}
    cases["stack_block"] = (
        snap(),
        snap(moves={"block_red": (0.15, 0, 0.05)}, contacts=stacked),
        snap(
            moves={"block_red": (0.15, 0, 0.05)},
            contacts=stacked,
            velocities={"block_red": (0, 0, -1.0, 0, 0, 0)},
        ),
    )
    cases["unstack_block"] = (
        snap(contacts=stacked),
        snap(),
        snap(contacts={"block_red": {TABLE_TOP, "block_blue"}}),
    )
    for light, index in (("lightbulb", LIGHTBULB_IDX), ("led", LED_IDX)):
        cases[f"turn_on_{light}"] = (snap(state={index: 0}), snap(state={index: 1}), snap(state={index: 0}))
        cases[f"turn_off_{light}"] = (snap(state={index: 1}), snap(state={index: 0}), snap(state={index: 1}))
    cases["push_into_drawer"] = (
        snap(),
        snap(contacts={"block_pink": {DRAWER}}),
        snap(contacts={"block_pink": {DRAWER, ROBOT}}),
    )
    return cases


CASES = _task_cases()


def test_cases_cover_every_task() -> None:
    assert sorted(CASES) == sorted(YAML_TASKS)


@pytest.mark.parametrize("task", YAML_TASKS)
def test_success_case(task: str) -> None:
    start, success, _ = CASES[task]
    assert ORACLE.succeeded(task, start, success)


@pytest.mark.parametrize("task", YAML_TASKS)
def test_near_miss_case(task: str) -> None:
    start, _, near_miss = CASES[task]
    assert not ORACLE.succeeded(task, start, near_miss)


RED, BLUE, PINK = BLOCKS
SLID_RIGHT = {RED: (0.12, 0, 0)}
EDGE_CASES = [
    pytest.param(
        "rotate_red_block_left", snap(), snap(turns={RED: (0, 0, 90)}, moves={RED: (0.11, 0, 0)}), False,
        id="rotate-moved-too-far",
    ),
    pytest.param(
        "rotate_red_block_left", snap(), snap(turns={RED: (0, 0, 90)}, contacts={RED: {ROBOT}}), False,
        id="rotate-still-held",
    ),
    pytest.param("rotate_red_block_left", snap(), snap(turns={RED: (31, 0, 90)}), False, id="rotate-tilted"),
    pytest.param(
        "rotate_red_block_right", snap(), snap(turns={RED: (0, 0, 179)}), False, id="rotate-wrong-way"
    ),
    pytest.param(
        "rotate_blue_block_left", snap(turns={BLUE: (0, 0, 170)}), snap(turns={BLUE: (0, 0, -100)}), True,
        id="rotate-relative-across-180",
    ),
    pytest.param(
        "rotate_pink_block_right", snap(),
        snap(turns={PINK: (0, 0, -90)}, contacts={PINK: {ROBOT, RED}}), True,
        id="rotate-resting-on-block",
    ),
    pytest.param(
        "push_red_block_right", snap(contacts={RED: {ROBOT}}), snap(moves=SLID_RIGHT), False,
        id="push-held-at-start",
    ),
    pytest.param(
        "push_red_block_right", snap(contacts={RED: {TABLE_TOP, BLUE}}), snap(moves=SLID_RIGHT), False,
        id="push-lost-a-support",
    ),
    pytest.param(
        "push_red_block_right", snap(contacts={RED: {PLANK}}), snap(moves=SLID_RIGHT), True,
        id="push-table-links-are-one-body",
    ),
    pytest.param(
        "push_red_block_right", snap(contacts={RED: {TABLE_TOP, ROBOT}}),
        snap(moves=SLID_RIGHT, contacts={RED: {TABLE_TOP, ROBOT}}), True,
        id="push-robot-contact-ignored",
    ),
    pytest.param("push_red_block_left", snap(), snap(moves={RED: (0, -0.2, 0)}), False, id="push-along-y"),
    pytest.param(
        "lift_red_block_table", snap(),
        snap(moves={RED: (0, 0, 0.1)}, contacts={RED: {ROBOT, TABLE_TOP}}), False,
        id="lift-still-on-table",
    ),
    pytest.param(
        "lift_red_block_slider", snap(), snap(moves={RED: (0, 0, 0.1)}, contacts={RED: {ROBOT}}), False,
        id="lift-from-other-surface",
    ),
    pytest.param(
        "place_in_drawer", snap(contacts={RED: {ROBOT}, BLUE: {ROBOT}}),
        snap(contacts={RED: {DRAWER}}), False,
        id="place-two-blocks-held",
    ),
    pytest.param(
        "place_in_drawer", snap(contacts={RED: {ROBOT, TABLE_TOP}}), snap(contacts={RED: {DRAWER}}), False,
        id="place-held-block-on-table",
    ),
    pytest.param(
        "place_in_slider", snap(contacts={RED: {ROBOT}}), snap(contacts={RED: {DRAWER}}), False,
        id="place-wrong-destination",
    ),
    pytest.param(
        "stack_block", snap(), snap(contacts={RED: {BLUE, ROBOT}, BLUE: {TABLE_TOP, RED}}), False,
        id="stack-still-held",
    ),
    pytest.param(
        "stack_block", snap(contacts={RED: {TABLE_TOP, BLUE}}), snap(contacts={RED: {BLUE}}), False,
        id="stack-touched-block-at-start",
    ),
    pytest.param(
        "unstack_block", snap(contacts={RED: {BLUE}}, velocities={RED: (0, 0, 0, 0, 1.5, 0)}), snap(), False,
        id="unstack-moving-at-start",
    ),
    pytest.param(
        "unstack_block", snap(contacts={RED: {BLUE, TABLE_TOP}}), snap(), False,
        id="unstack-also-on-table-at-start",
    ),
    pytest.param(
        "push_into_drawer", snap(contacts={PINK: {TABLE_TOP, ROBOT}}), snap(contacts={PINK: {DRAWER}}), False,
        id="push-into-held-at-start",
    ),
    pytest.param(
        "push_into_drawer", snap(contacts={PINK: {PLANK}}), snap(contacts={PINK: {DRAWER}}), False,
        id="push-into-from-plank",
    ),
    pytest.param(
        "push_into_drawer", snap(), snap(contacts={BLUE: {DRAWER, TABLE_TOP}}), True,
        id="push-into-any-block",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("task", "start", "end", "expected"), EDGE_CASES)
def test_rule_edges(task: str, start: Snapshot, end: Snapshot, expected: bool) -> None:
    assert ORACLE.succeeded(task, start, end) is expected


def test_registry_matches_yaml() -> None:
    assert len(TASK_NAMES) == 34
    assert list(TASK_NAMES) == YAML_TASKS
    assert list(TASK_RULES) == YAML_TASKS


def test_completed_returns_only_tasks_that_hold() -> None:
    start = snap(state={DRAWER_IDX: 0.05})
    end = snap(state={DRAWER_IDX: 0.2, LED_IDX: 1}, moves={"block_red": (0.12, 0, 0)})
    assert ORACLE.completed(start, end) == {"push_red_block_right", "open_drawer", "turn_on_led"}
    assert ORACLE.completed(start, start) == set()


def test_oracle_restricted_to_subset() -> None:
    oracle = TaskOracle(["open_drawer", "turn_on_led"])
    end = snap(state={DRAWER_IDX: 0.2, LED_IDX: 1}, moves={"block_red": (0.12, 0, 0)})
    assert oracle.completed(snap(), end) == {"open_drawer", "turn_on_led"}


def test_unknown_task_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="valid tasks:.*rotate_red_block_right.*push_into_drawer"):
        ORACLE.succeeded("open_door", snap(), snap())
    with pytest.raises(ValueError, match="open_door"):
        TaskOracle(["open_door"])
    with pytest.raises(ValueError, match="valid tasks"):
        task_rule("lift_green_block_table")


def test_missing_velocity_names_the_block() -> None:
    start = snap()
    end = Snapshot(
        start.robot_obs, start.scene_obs, {**start.contacts, "block_red": frozenset({"block_blue"})}, {}
    )
    with pytest.raises(ValueError, match="block_red"):
        ORACLE.succeeded("stack_block", start, end)


def test_bad_scene_obs_shape_is_rejected() -> None:
    bad = Snapshot(np.zeros(15), np.zeros(23))
    with pytest.raises(ValueError, match=r"current.scene_obs has shape \(23,\); expected \(24,\)"):
        ORACLE.completed(snap(), bad)
