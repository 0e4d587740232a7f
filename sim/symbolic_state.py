"""Symbolic play-table states (as in CALVIN's chains) and the physical state CALVIN resets to."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# Keys and values in CALVIN's enumeration order; the order matters for chain generation
# and for the text that seeds the block placement.
STATE_VALUES: dict[str, tuple[int | str, ...]] = {
    "led": (0, 1),
    "lightbulb": (0, 1),
    "slider": ("right", "left"),
    "drawer": ("closed", "open"),
    "red_block": ("table", "slider_right", "slider_left"),
    "blue_block": ("table", "slider_right", "slider_left"),
    "pink_block": ("table", "slider_right", "slider_left"),
    "grasped": (0,),
}

# CALVIN's reset pose: tcp xyz, tcp euler xyz, gripper width, 7 joints, gripper action (open).
ROBOT_OBS = np.array([
    0.02586889, -0.2313129, 0.5712808,
    3.09045411, -0.02908596, 1.50013585,
    0.07999963,
    -1.21779124, 1.03987629, 2.11978254, -2.34205014, -0.87015899, 1.64119093, 0.55344928,
    1.0,
])  # fmt: skip
SLIDER_OPEN = 0.28
DRAWER_OPEN = 0.22
SWITCH_ON = 0.088
SLOTS = {
    "slider_left": np.array([-2.40851662e-01, 9.24044687e-02, 4.60990009e-01]),
    "slider_right": np.array([7.03416330e-02, 9.24044687e-02, 4.60990009e-01]),
}
TABLE_SLOTS = (
    np.array([5.00000896e-02, -1.20000177e-01, 4.59990009e-01]),
    np.array([2.29995412e-01, -1.19995140e-01, 4.59990010e-01]),
)
YAW_RANGE = (np.pi / 2 - np.pi / 8, np.pi / 2 + np.pi / 8)

FNV1_32_OFFSET = 2166136261
FNV1_32_PRIME = 16777619


def fnv1_32(data: bytes) -> int:
    """32-bit FNV-1 hash (multiply, then xor), the hash CALVIN seeds block placement with."""
    h = FNV1_32_OFFSET
    for byte in data:
        h = (h * FNV1_32_PRIME) % 2**32
        h ^= byte
    return h


def canonical_state(state: Mapping[str, object]) -> dict[str, int | str]:
    """``state`` as a dict in CALVIN's key order with plain int/str values; fails on bad input."""
    if not isinstance(state, Mapping):
        raise TypeError(f"a symbolic state is a mapping of {list(STATE_VALUES)}, got {state!r}")
    unknown = sorted(set(state) - set(STATE_VALUES))
    if unknown:
        raise ValueError(f"unknown symbolic state keys {unknown}; expected {list(STATE_VALUES)}")
    out: dict[str, int | str] = {}
    for key, allowed in STATE_VALUES.items():
        if key not in state:
            raise ValueError(f"symbolic state is missing key {key!r}; expected {list(STATE_VALUES)}")
        value = state[key]
        if isinstance(value, bool) or value not in allowed:
            raise ValueError(f"symbolic state {key}={value!r}; expected one of {allowed}")
        # Take the value from ``allowed`` so numpy scalars become plain int/str.
        out[key] = allowed[allowed.index(value)]
    return out


def _block_xyz(place: object, table_slot: np.ndarray) -> np.ndarray:
    return SLOTS.get(place, table_slot)


def physical_state(initial_state: Mapping[str, object]) -> tuple[np.ndarray, np.ndarray]:
    """(robot_obs (15,), scene_obs (24,)) for a symbolic initial state, as CALVIN builds it.

    Table slots and block yaws are random under a seed derived from the state, so each
    symbolic state always maps to the same physical state.
    """
    state = canonical_state(initial_state)
    seed = fnv1_32(str(state.values()).encode("utf-8"))
    # RandomState(seed) replays what CALVIN draws from the global RNG after np.random.seed(seed);
    # the draws (shuffle, then red, blue, pink yaw) must stay in this order.
    return ROBOT_OBS.copy(), place_blocks(state, np.random.RandomState(seed))


def place_blocks(state: Mapping[str, object], rng: np.random.RandomState | np.random.Generator) -> np.ndarray:
    """scene_obs (24,) of a symbolic state as CALVIN's reset builds it, its draws (the table slots'
    order, then the red, blue and pink yaws) taken from ``rng``: CALVIN's own seeded generator in
    ``physical_state``, any generator for fresh starts of the same kind (``calvin_start``)."""
    state = canonical_state(state)
    table = list(TABLE_SLOTS)
    rng.shuffle(table)
    scene_obs = np.zeros(24)
    scene_obs[0] = SLIDER_OPEN if state["slider"] == "left" else 0.0
    scene_obs[1] = DRAWER_OPEN if state["drawer"] == "open" else 0.0
    scene_obs[3] = SWITCH_ON if state["lightbulb"] == 1 else 0.0
    scene_obs[4] = state["lightbulb"]
    scene_obs[5] = state["led"]
    scene_obs[6:9] = _block_xyz(state["red_block"], table[0])
    scene_obs[11] = rng.uniform(*YAW_RANGE)
    blue_table_slot = table[1] if state["red_block"] == "table" else table[0]
    scene_obs[12:15] = _block_xyz(state["blue_block"], blue_table_slot)
    scene_obs[17] = rng.uniform(*YAW_RANGE)
    scene_obs[18:21] = _block_xyz(state["pink_block"], table[1])
    scene_obs[23] = rng.uniform(*YAW_RANGE)
    return scene_obs
