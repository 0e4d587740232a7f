"""Tests for dream_policy.data.features: the shared schema, frame validation, dynamic regions."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from dream_policy.data.features import (
    FEATURES,
    LANG_FEATURE,
    POLICY_FEATURES,
    Feature,
    FrameError,
    calvin_feature,
    dynamic_mask,
    feature,
    frame_keys,
    moved_segment_ids,
    read_frame,
    validate_frame,
)
from sim.calvin_dataset import EXTRA_FRAME_KEYS, FRAME_KEYS
from sim.cameras import SEGMENT_NAMES
from sim.snapshot import BLOCK_SLICES, DRAWER_IDX, LED_IDX, SLIDER_IDX

EXPECTED = {
    "rgb_static": ("uint8", (200, 200, 3)), "rgb_gripper": ("uint8", (84, 84, 3)),
    "robot_obs": ("float32", (15,)), "rel_actions": ("float32", (7,)), "scene_obs": ("float32", (24,)),
    "depth_static": ("float32", (200, 200)), "depth_gripper": ("float32", (84, 84)),
    "seg_static": ("uint8", (200, 200)), "seg_gripper": ("uint8", (84, 84)),
}


def good_frame() -> dict[str, np.ndarray]:
    return {k: np.zeros(shape, dtype) for k, (dtype, shape) in EXPECTED.items()}


def test_policy_features_follow_the_calvin_schema() -> None:
    assert {f.key: (f.dtype, f.shape) for f in POLICY_FEATURES} == EXPECTED == {
        k: (f.dtype, f.shape) for k, f in FEATURES.items()}
    schema = {**FRAME_KEYS, **EXTRA_FRAME_KEYS}
    assert all((f.kind, f.shape) == schema[f.key] for f in POLICY_FEATURES)
    assert {f.key for f in POLICY_FEATURES if f.optional} == {"depth_static", "depth_gripper",  # absent in
                                                               "seg_static", "seg_gripper", "scene_obs"}  # real data
    assert feature("scene_obs").role == "target" and feature("rel_actions").role == "action"
    assert LANG_FEATURE.shape == (384,)


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(KeyError, match="registered.*rgb_static"):
        feature("rgb")
    with pytest.raises(KeyError, match="valid keys.*tactile|valid keys.*actions"):
        calvin_feature("tactile")
    with pytest.raises(ValueError, match="role 'input'"):
        Feature("x", "float32", (1,), role="input")


def test_validate_frame_accepts_calvin_frames() -> None:
    frame = good_frame()
    frame["robot_obs"] = np.zeros(15, np.float64)  # real CALVIN stores float64
    validate_frame(frame, POLICY_FEATURES)
    for key in ("depth_static", "seg_static", "seg_gripper"):  # optional keys may be absent
        del frame[key]
    validate_frame(frame, POLICY_FEATURES)


@pytest.mark.parametrize("key, value, message", [
    ("rgb_static", None, r"ep\.npz: missing key 'rgb_static' \(expected uint8 \(200, 200, 3\)\)"),
    ("robot_obs", np.zeros(14), r"ep\.npz: key 'robot_obs' is float64 \(14,\); expected float32 .* \(15,\)"),
    ("rgb_gripper", np.zeros((84, 84, 3)), r"key 'rgb_gripper' is float64 \(84, 84, 3\); expected uint8"),
    ("seg_static", np.zeros((200, 200, 1), np.uint8), r"key 'seg_static' .* expected uint8 .* \(200, 200\)"),
])
def test_validate_frame_names_source_key_and_expected_shape(key: str, value: np.ndarray | None,
                                                            message: str) -> None:
    frame = good_frame()
    if value is None:
        del frame[key]
    else:
        frame[key] = value
    with pytest.raises(FrameError, match=message):
        validate_frame(frame, POLICY_FEATURES, source="ep.npz")


def test_read_frame_reads_only_asked_keys_and_names_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "episode_0000003.npz"
    np.savez(path, **good_frame())
    assert set(read_frame(path, ["robot_obs", "rgb_gripper"])) == {"robot_obs", "rgb_gripper"}
    assert frame_keys(path) == sorted(EXPECTED)
    name = re.escape(str(path))
    with pytest.raises(FrameError, match=rf"{name}: missing key\(s\) \['tactile'\]"):
        read_frame(path, ["tactile"])
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(FrameError, match=rf"{name}: truncated or corrupt npz"):
        read_frame(path, ["robot_obs"])
    with pytest.raises(FrameError, match=rf"{name}: truncated or corrupt npz"):
        frame_keys(path)
    with pytest.raises(FileNotFoundError, match="episode_0000004.npz is missing"):
        read_frame(tmp_path / "episode_0000004.npz", ["robot_obs"])


def test_moved_segment_ids_follow_scene_obs() -> None:
    before = np.zeros(24)
    after = before.copy()
    assert moved_segment_ids(before, after) == []
    after[DRAWER_IDX] = 0.05
    after[LED_IDX] = 1.0  # logical state, no segment of its own
    red = BLOCK_SLICES["block_red"]
    after[red.start + 2] = 0.02  # red block lifted
    assert moved_segment_ids(before, after) == sorted(SEGMENT_NAMES.index(n) for n in ("drawer", "block_red"))
    turned = before.copy()
    turned[BLOCK_SLICES["block_pink"].start + 5] = 0.3
    turned[SLIDER_IDX] = 1e-4  # below the tolerance
    assert moved_segment_ids(before, turned) == [SEGMENT_NAMES.index("block_pink")]


def test_euler_wraparound_is_not_motion() -> None:
    before, after = np.zeros(24), np.zeros(24)
    yaw = BLOCK_SLICES["block_blue"].start + 5
    before[yaw], after[yaw] = np.pi - 1e-3, -np.pi + 1e-3
    assert moved_segment_ids(before, after) == []


def test_dynamic_mask_is_where_moved_objects_were_or_are() -> None:
    red, blue = SEGMENT_NAMES.index("block_red"), SEGMENT_NAMES.index("block_blue")
    seg_a = np.array([[red, 0], [blue, 1]], np.uint8)
    seg_b = np.array([[0, red], [blue, 1]], np.uint8)
    assert dynamic_mask(seg_a, seg_b, [red]).tolist() == [[True, True], [False, False]]
    assert not dynamic_mask(seg_a, seg_b, []).any()

