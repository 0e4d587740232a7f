"""Tests for sim.scene_reading: physical snapshots read as CALVIN symbolic states, feasible tasks."""

from __future__ import annotations

import numpy as np
import pytest

from sim.chains import symbolic_initial_states
from sim.scene_config import SceneConfig
from sim.scene_reading import feasible_tasks, symbolic_state
from sim.snapshot import BLOCK_SLICES, BLOCKS, DRAWER_IDX, PLANK, ROBOT, SLIDER_IDX, TABLE_TOP, Snapshot
from sim.state_sampler import default_robot_obs
from sim.symbolic_state import physical_state

CFG = SceneConfig("D", render=False)
HOLD = np.array([0, 0, 0, 0, 0, 0, 1.0])
TABLE_XYZ = [(0.05, -0.12, 0.461), (0.23, -0.12, 0.461), (0.14, -0.07, 0.461)]


@pytest.fixture(scope="module")
def env():
    from sim.env import PlayTableEnv

    env = PlayTableEnv(CFG)
    yield env
    env.close()


def scene_obs(blocks=TABLE_XYZ, slider: float = 0.0, drawer: float = 0.0) -> np.ndarray:
    scene = np.zeros(24)
    scene[SLIDER_IDX], scene[DRAWER_IDX] = slider, drawer
    for block, xyz in zip(BLOCKS, blocks):
        scene[BLOCK_SLICES[block]] = [*xyz, 0.0, 0.0, np.pi / 2]
    return scene


def settled(env, scene: np.ndarray, steps: int = 10) -> Snapshot:
    _, info = env.reset(options={"robot_obs": default_robot_obs(), "scene_obs": scene})
    for _ in range(steps):
        _, _, _, _, info = env.step(HOLD)
    return info["snapshot"]


def places(state: dict) -> tuple[str, str, str]:
    return state["red_block"], state["blue_block"], state["pink_block"]


def test_blocks_on_table_and_both_slider_sides(env):
    snap = settled(env, scene_obs([(0.05, -0.12, 0.461), (-0.24, 0.092, 0.462), (0.07, 0.092, 0.462)], 0.28))
    state = symbolic_state(snap, CFG)
    assert places(state) == ("table", "slider_left", "slider_right")
    assert state["slider"] == "left" and state["drawer"] == "closed" and state["grasped"] == 0


def test_block_in_open_drawer(env):
    snap = settled(env, scene_obs([(0.18, -0.30, 0.37), (0.23, -0.12, 0.461), (0.07, 0.092, 0.462)], drawer=0.22))
    state = symbolic_state(snap, CFG)
    assert places(state) == ("drawer", "table", "slider_right")
    assert state["drawer"] == "open"


def test_stacked_blocks(env):
    snap = settled(env, scene_obs([(0.05, -0.12, 0.461), (0.05, -0.12, 0.505), (0.23, -0.12, 0.461)]))
    assert places(symbolic_state(snap, CFG)) == ("stacked_bottom", "stacked_top", "table")


@pytest.mark.parametrize("index", range(0, 192, 8))
def test_calvin_initial_states_read_back(env, index):
    """CALVIN's symbolic initial states, built physically and settled, read as themselves."""
    initial = symbolic_initial_states()[index]
    robot, scene = physical_state(initial)
    _, info = env.reset(options={"robot_obs": robot, "scene_obs": scene})
    for _ in range(5):
        _, _, _, _, info = env.step(HOLD)
    assert symbolic_state(info["snapshot"], CFG) == initial


@pytest.mark.parametrize(("slider", "drawer", "expected"), [
    (0.0, 0.0, ("right", "closed")),
    (0.13, 0.10, ("right", "closed")),
    (0.15, 0.12, ("left", "open")),
    (0.28, 0.22, ("left", "open")),
])
def test_slider_and_drawer_thresholds(env, slider, drawer, expected):
    _, info = env.reset(options={"robot_obs": default_robot_obs(), "scene_obs": scene_obs(slider=slider, drawer=drawer)})
    state = symbolic_state(info["snapshot"], CFG)
    assert (state["slider"], state["drawer"]) == expected


def hand_snapshot(contacts: dict, blocks=TABLE_XYZ, lights=(0, 0)) -> Snapshot:
    scene = scene_obs(blocks)
    scene[4], scene[5] = lights
    return Snapshot(default_robot_obs(), scene, {b: frozenset(contacts.get(b, ())) for b in BLOCKS})


def test_block_touching_only_robot_is_grasped():
    snap = hand_snapshot({"block_red": {ROBOT}, "block_blue": {TABLE_TOP}, "block_pink": {TABLE_TOP, ROBOT}},
                         lights=(1, 0))
    state = symbolic_state(snap, CFG)
    assert places(state) == ("grasped", "table", "table")
    assert state["grasped"] == 1 and state["lightbulb"] == 1 and state["led"] == 0


def test_plank_and_table_contact_decided_by_centre():
    blocks = [(0.07, 0.05, 0.46), (0.1, -0.02, 0.46), (0.2, -0.1, 0.46)]
    snap = hand_snapshot({b: {PLANK, TABLE_TOP} for b in BLOCKS[:2]} | {"block_pink": {TABLE_TOP}}, blocks)
    assert places(symbolic_state(snap, CFG)) == ("slider_right", "table", "table")


def test_without_contacts_the_position_decides():
    blocks = [(0.18, -0.3, 0.37), (-0.24, 0.09, 0.5), (0.3, -0.5, 0.1)]
    assert places(symbolic_state(hand_snapshot({}, blocks), CFG)) == ("drawer", "slider_left", "floor")


def test_bad_snapshot_is_rejected():
    with pytest.raises(ValueError, match="scene_obs"):
        symbolic_state(Snapshot(default_robot_obs(), np.zeros(5)), CFG)


FIRST_CHAIN_STATE = {"led": 1, "lightbulb": 1, "slider": "left", "drawer": "open", "red_block": "slider_left",
                     "blue_block": "table", "pink_block": "slider_right", "grasped": 0}


def test_feasible_tasks_of_calvins_first_chain_state():
    assert feasible_tasks(FIRST_CHAIN_STATE) == [
        "rotate_blue_block_right", "rotate_blue_block_left", "push_blue_block_right", "push_blue_block_left",
        "move_slider_right", "close_drawer", "lift_blue_block_table", "lift_pink_block_slider",
        "turn_off_lightbulb", "turn_off_led", "push_into_drawer",
    ]


def test_feasible_tasks_with_a_grasped_block_exclude_ambiguous_stacking():
    state = {**FIRST_CHAIN_STATE, "red_block": "grasped", "pink_block": "table", "grasped": 1}
    # stack_block matches two branches (onto blue or pink), so CALVIN's rule rejects it.
    assert feasible_tasks(state) == ["place_in_slider", "place_in_drawer"]
    state["pink_block"] = "slider_right"
    assert feasible_tasks(state) == ["place_in_slider", "place_in_drawer", "stack_block"]


def test_feasible_tasks_of_a_stack():
    state = {**FIRST_CHAIN_STATE, "red_block": "stacked_top", "blue_block": "stacked_bottom"}
    tasks = feasible_tasks(state)
    assert "unstack_block" in tasks
    assert not any("red_block" in t or "blue_block" in t for t in tasks)
