"""One feature schema (key, dtype, shape) for the dataset, the policy, the sim and later ROS.

Keys, kinds and shapes come from ``sim.calvin_dataset`` (the layout the collector writes and real
CALVIN uses); this module adds the dtype the policy receives, whether a dataset may lack the
key, and the role the key plays. Files may store another width of the same kind (real CALVIN
keeps ``robot_obs`` as float64), so validation compares dtype kinds, not widths.

It also defines the derived world-knowledge target "dynamic region": the pixels whose
segmentation id belongs to a scene object whose state in ``scene_obs`` changed.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim.calvin_dataset import EXTRA_FRAME_KEYS, FRAME_KEYS
from sim.language import EMBEDDING_DIM
from sim.snapshot import BLOCK_SLICES, BUTTON_IDX, DRAWER_IDX, SEGMENT_NAMES, SLIDER_IDX, SWITCH_IDX

ROLES = ("observation", "action", "target")
_DTYPE_OF_KIND = {"u": "uint8", "f": "float32"}
_SCHEMA = {**FRAME_KEYS, **EXTRA_FRAME_KEYS}


class FrameError(ValueError):
    """A frame file that does not match the feature schema (missing key, wrong shape, corrupt)."""


@dataclass(frozen=True)
class Feature:
    """One per-frame array: ``dtype`` is what the policy gets; ``optional`` keys may be absent."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    role: str = "observation"
    optional: bool = False

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"feature {self.key!r}: role {self.role!r} is not one of {ROLES}")
        np.dtype(self.dtype)  # fails naming an unknown dtype

    @property
    def kind(self) -> str:
        return np.dtype(self.dtype).kind

    def check(self, value: np.ndarray, source: str | Path) -> None:
        """Fail naming ``source`` unless ``value`` has this feature's dtype kind and shape."""
        if value.shape != self.shape or value.dtype.kind != self.kind:
            raise FrameError(f"{source}: key {self.key!r} is {value.dtype} {value.shape}; "
                             f"expected {self.dtype} (kind {self.kind!r}) {self.shape}")


def calvin_feature(key: str, role: str = "observation", optional: bool = False) -> Feature:
    """The feature ``key`` with kind and shape from ``sim.calvin_dataset``'s schema."""
    if key not in _SCHEMA:
        raise KeyError(f"{key!r} is not a CALVIN frame key; valid keys: {sorted(_SCHEMA)}")
    kind, shape = _SCHEMA[key]
    return Feature(key, _DTYPE_OF_KIND[kind], shape, role, optional)


POLICY_FEATURES: tuple[Feature, ...] = (
    calvin_feature("rgb_static"),
    calvin_feature("rgb_gripper"),
    calvin_feature("robot_obs"),
    calvin_feature("rel_actions", role="action"),
    calvin_feature("depth_static", role="target", optional=True),
    calvin_feature("depth_gripper", role="target", optional=True),
    calvin_feature("seg_static", role="target", optional=True),
    calvin_feature("seg_gripper", role="target", optional=True),
    calvin_feature("scene_obs", role="target", optional=True),  # sim-only (real robots: bag2data)
)
FEATURES: dict[str, Feature] = {f.key: f for f in POLICY_FEATURES}
# Per-sample, not per-frame: the MiniLM embedding of the instruction (auto_lang_ann language.emb).
LANG_FEATURE = Feature("lang_emb", "float32", (EMBEDDING_DIM,))


def feature(key: str) -> Feature:
    """The registered feature ``key``; the error lists the valid names."""
    if key not in FEATURES:
        raise KeyError(f"unknown feature {key!r}; registered: {sorted(FEATURES)}")
    return FEATURES[key]


def validate_frame(frame: Mapping[str, np.ndarray], features: Iterable[Feature],
                   source: str | Path = "frame") -> None:
    """Fail naming ``source`` and the key if a required key is missing or any has a wrong dtype/shape."""
    for f in features:
        if f.key in frame:
            f.check(np.asarray(frame[f.key]), source)
        elif not f.optional:
            raise FrameError(f"{source}: missing key {f.key!r} (expected {f.dtype} {f.shape}); "
                             f"it has {sorted(frame)}")


_CORRUPT = (zipfile.BadZipFile, EOFError, OSError, ValueError)  # what np.load raises on a bad npz


def _corrupt(path: Path, e: Exception) -> FrameError:
    return FrameError(f"{path}: truncated or corrupt npz ({type(e).__name__}: {e})")


def frame_keys(path: Path) -> list[str]:
    """The keys stored in the frame file ``path`` (reads only the zip directory)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        with np.load(path) as data:
            return sorted(data.files)
    except _CORRUPT as e:
        raise _corrupt(path, e) from e


def read_frame(path: Path, keys: Sequence[str], features: Mapping[str, Feature] = FEATURES
               ) -> dict[str, np.ndarray]:
    """Only ``keys`` of the frame file ``path`` (np.load reads members lazily), each checked
    against ``features``; a missing file, missing key, wrong shape or corrupt file names ``path``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        with np.load(path) as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise FrameError(f"{path}: missing key(s) {missing}; it has {sorted(data.files)}")
            frame = {k: data[k] for k in keys}
    except FrameError:
        raise
    except _CORRUPT as e:
        raise _corrupt(path, e) from e
    validate_frame(frame, [features[k] for k in keys if k in features], path)
    return frame


# ---- derived target: dynamic region ------------------------------------------------------------

# scene_obs entries whose change moves a rendered object: (segment name, entries, angular?).
# The lightbulb and LED (entries 4, 5) are logical states without a segment of their own.
_SCENE_OBJECTS: tuple[tuple[str, slice, bool], ...] = (
    ("slider", slice(SLIDER_IDX, SLIDER_IDX + 1), False),
    ("drawer", slice(DRAWER_IDX, DRAWER_IDX + 1), False),
    ("button", slice(BUTTON_IDX, BUTTON_IDX + 1), False),
    ("switch", slice(SWITCH_IDX, SWITCH_IDX + 1), False),
    *((name, slice(s.start, s.start + 3), False) for name, s in BLOCK_SLICES.items()),
    *((name, slice(s.start + 3, s.stop), True) for name, s in BLOCK_SLICES.items()),
)


def moved_segment_ids(scene_a: np.ndarray, scene_b: np.ndarray, pos_tol: float = 1e-3,
                      rot_tol: float = 1e-2) -> list[int]:
    """Segment ids (``sim.snapshot.SEGMENT_NAMES``) of objects whose pose differs between two scene_obs."""
    moved = set()
    for name, entries, angular in _SCENE_OBJECTS:
        delta = np.asarray(scene_b[entries], np.float64) - np.asarray(scene_a[entries], np.float64)
        if angular:
            delta = (delta + np.pi) % (2 * np.pi) - np.pi  # euler angles wrap at ±pi
        if np.max(np.abs(delta)) > (rot_tol if angular else pos_tol):
            moved.add(SEGMENT_NAMES.index(name))
    return sorted(moved)


def dynamic_mask(seg_a: np.ndarray, seg_b: np.ndarray, moved_ids: Iterable[int]) -> np.ndarray:
    """Pixels showing a moved object in either image: where it was and where it went."""
    ids = np.fromiter(moved_ids, dtype=np.int64)
    return np.isin(seg_a, ids) | np.isin(seg_b, ids)
