"""Symbolic state -> CALVIN's physical reset state (robot_obs, scene_obs)."""

import numpy as np
import pytest

from sim.chains import symbolic_initial_states
from sim.symbolic_state import (
    ROBOT_OBS,
    SLOTS,
    TABLE_SLOTS,
    YAW_RANGE,
    canonical_state,
    fnv1_32,
    physical_state,
)

STATE = {"led": 1, "lightbulb": 1, "slider": "left", "drawer": "open", "red_block": "slider_left",
         "blue_block": "table", "pink_block": "slider_right", "grasped": 0}
BLOCK_XYZ = {"red_block": slice(6, 9), "blue_block": slice(12, 15), "pink_block": slice(18, 21)}
BLOCK_YAW = {"red_block": 11, "blue_block": 17, "pink_block": 23}


def test_fnv1_32_known_values():
    assert fnv1_32(b"") == 2166136261
    # By hand: (2166136261 * 16777619) mod 2**32 = 84696351, then xor 0x61 ("a").
    assert fnv1_32(b"a") == 84696351 ^ 0x61 == 0x050C5D7E
    assert fnv1_32(b"foobar") == 0x31F0B262  # published FNV-1 test vector


def test_seed_text_is_calvins_dict_values_text():
    shuffled = {k: np.int64(v) if isinstance(v, int) else v for k, v in reversed(STATE.items())}
    text = str(canonical_state(shuffled).values())
    assert text == "dict_values([1, 1, 'left', 'open', 'slider_left', 'table', 'slider_right', 0])"
    assert physical_state(shuffled)[1].tolist() == physical_state(STATE)[1].tolist()


def test_robot_obs_is_calvins_reset_pose():
    robot_obs, _ = physical_state(STATE)
    assert robot_obs.shape == (15,)
    np.testing.assert_allclose(robot_obs[:3], [0.02587, -0.23131, 0.57128], atol=1e-5)
    np.testing.assert_allclose(robot_obs[3:6], [3.09045, -0.02909, 1.50014], atol=1e-5)
    np.testing.assert_allclose(robot_obs[6], 0.08, atol=1e-6)
    np.testing.assert_allclose(robot_obs[7:14], [-1.21779, 1.03988, 2.11978, -2.34205, -0.87016, 1.64119,
                                                 0.55345], atol=1e-5)
    assert robot_obs[14] == 1.0
    robot_obs[0] = 9.0
    assert ROBOT_OBS[0] != 9.0


def test_articulations_and_lights():
    _, scene = physical_state(STATE)
    assert scene.shape == (24,)
    assert scene[:6].tolist() == [0.28, 0.22, 0.0, 0.088, 1.0, 1.0]
    off = dict(STATE, slider="right", drawer="closed", lightbulb=0, led=0)
    assert physical_state(off)[1][:6].tolist() == [0.0] * 6


def test_first_chain_state_regression():
    # Values this implementation gives for the first CALVIN chain's state (pins the draw order).
    _, scene = physical_state(STATE)
    np.testing.assert_allclose(scene[6:9], SLOTS["slider_left"])
    np.testing.assert_allclose(scene[12:15], TABLE_SLOTS[0])
    np.testing.assert_allclose(scene[18:21], SLOTS["slider_right"])
    np.testing.assert_allclose(scene[[11, 17, 23]], [1.24548221, 1.43209378, 1.34867642], atol=1e-8)


@pytest.mark.parametrize("state", symbolic_initial_states())
def test_blocks_take_their_slots(state):
    _, scene = physical_state(state)
    table_slots = []
    for block in ("red_block", "blue_block", "pink_block"):
        xyz = scene[BLOCK_XYZ[block]]
        if state[block] == "table":
            assert any(np.array_equal(xyz, slot) for slot in TABLE_SLOTS)
            table_slots.append(tuple(xyz))
        else:
            assert np.array_equal(xyz, SLOTS[state[block]])
        assert YAW_RANGE[0] <= scene[BLOCK_YAW[block]] <= YAW_RANGE[1]
        assert scene[BLOCK_XYZ[block].stop : BLOCK_YAW[block]].tolist() == [0.0, 0.0]
    assert len(set(table_slots)) == len(table_slots)  # no two blocks share a table slot


def test_deterministic_and_global_rng_untouched():
    np.random.seed(5)
    before = np.random.get_state()
    first = physical_state(STATE)
    after = np.random.get_state()
    assert np.array_equal(before[1], after[1]) and before[2] == after[2]
    second = physical_state(STATE)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_different_states_get_different_yaws():
    yaws = {tuple(physical_state(s)[1][[11, 17, 23]]) for s in symbolic_initial_states()}
    assert len(yaws) == 192


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({k: v for k, v in STATE.items() if k != "drawer"}, "'drawer'"),
        (dict(STATE, slider="middle"), "slider='middle'"),
        (dict(STATE, led=True), "led=True"),
        (dict(STATE, colour="red"), "colour"),
    ],
)
def test_bad_state_is_rejected(state, message):
    with pytest.raises(ValueError, match=message):
        physical_state(state)


def test_non_mapping_is_rejected():
    with pytest.raises(TypeError, match="mapping"):
        physical_state([1, 2, 3])
