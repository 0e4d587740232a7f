"""Statistics of ``robot_obs`` and ``rel_actions`` (one streaming pass) and the ``Normalizer``.

Statistics are computed once, reading only the two low-dimensional keys of each frame file,
in batches merged with Chan's parallel Welford update (memory independent of the split size);
``stride`` > 1 reads every stride-th frame of huge splits. They are stored as JSON
(``normalization_stats.json`` beside the split, or a given path) and reused afterwards.
``statistics.yaml`` is reused only when it holds mean, std, min and max of both keys: the
collector's holds only mean/std and real CALVIN's holds transform configs, so both are recomputed.

Normalisation: proprioception is standardised with mean/std. Actions are left as they are,
because CALVIN's relative actions are already scaled to [-1, 1] (position, orientation); they
are only clipped to [-1, 1] and the gripper dimension is snapped to ±1 (> 0 open, else close).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import yaml

from sim.calvin_dataset import STATISTICS_FILE, CalvinDataset, frame_file

from .features import feature, read_frame

STATS_KEYS = ("robot_obs", "rel_actions")
STATS_FILE = "normalization_stats.json"
GRIPPER_DIM = 6
ACTION_LIMIT = 1.0
Array = TypeVar("Array")  # np.ndarray or torch.Tensor


@dataclass
class RunningStats:
    """Per-dimension count, mean, sum of squared deviations, min and max, merged batch by batch."""

    dim: int
    count: int = 0

    def __post_init__(self) -> None:
        self.mean = np.zeros(self.dim)
        self.m2 = np.zeros(self.dim)
        self.min = np.full(self.dim, np.inf)
        self.max = np.full(self.dim, -np.inf)

    def update(self, batch: np.ndarray) -> None:
        """Merge a (B, dim) batch (Chan et al.'s pairwise update, stable for long streams)."""
        batch = np.asarray(batch, np.float64).reshape(-1, self.dim)
        n = len(batch)
        if n == 0:
            return
        b_mean = batch.mean(0)
        delta = b_mean - self.mean
        total = self.count + n
        self.m2 += ((batch - b_mean) ** 2).sum(0) + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.count = total
        self.min = np.minimum(self.min, batch.min(0))
        self.max = np.maximum(self.max, batch.max(0))

    def to_dict(self) -> dict[str, Any]:
        if self.count == 0:
            raise ValueError("no frames were read; cannot compute statistics")
        std = np.sqrt(self.m2 / self.count)  # population std, like numpy's default
        return {"mean": self.mean.tolist(), "std": std.tolist(), "min": self.min.tolist(),
                "max": self.max.tolist(), "count": self.count}


def _frame_ids(episodes: Sequence[tuple[int, int]], stride: int) -> Iterator[int]:
    """Every ``stride``-th frame id of the split, counted across episodes."""
    index = 0
    for start, end in episodes:
        for frame_id in range(start, end + 1):
            if index % stride == 0:
                yield frame_id
            index += 1


def compute_statistics(root: str | Path, stride: int = 1, batch: int = 4096,
                       keys: Sequence[str] = STATS_KEYS) -> dict[str, dict[str, Any]]:
    """Mean, std, min, max and count of ``keys`` over every ``stride``-th frame of the split ``root``."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    root = Path(root)
    running = {k: RunningStats(feature(k).shape[0]) for k in keys}
    pending: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for frame_id in _frame_ids(CalvinDataset(root).episodes(), stride):
        for key, value in read_frame(frame_file(root, frame_id), keys).items():
            pending[key].append(value)
        if len(pending[keys[0]]) >= batch:
            for key in keys:
                running[key].update(np.stack(pending[key]))
                pending[key] = []
    for key in keys:
        running[key].update(np.asarray(pending[key]).reshape(-1, running[key].dim))
    return {k: {**running[k].to_dict(), "stride": stride} for k in keys}


def _complete(stats: Any, keys: Sequence[str]) -> bool:
    """True when ``stats`` has mean, std, min and max of the right length for every key."""
    try:
        return all(len(stats[k][s]) == feature(k).shape[0] for k in keys for s in ("mean", "std", "min", "max"))
    except (KeyError, TypeError):
        return False


def load_or_compute_statistics(root: str | Path, path: str | Path | None = None,
                               stride: int = 1) -> dict[str, dict[str, Any]]:
    """The statistics at ``path`` (default: beside the split); else from a complete
    ``statistics.yaml``; else computed once and saved to ``path``. Delete the JSON to recompute."""
    root = Path(root)
    path = Path(path) if path is not None else root / STATS_FILE
    if path.is_file():
        stats = json.loads(path.read_text(encoding="utf-8"))
        if not _complete(stats, STATS_KEYS):
            raise ValueError(f"{path}: expected mean/std/min/max of {STATS_KEYS}; delete it to recompute")
        return stats
    yaml_path = root / STATISTICS_FILE
    if yaml_path.is_file():
        stats = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
        if _complete(stats, STATS_KEYS):
            return {k: stats[k] for k in STATS_KEYS}
    stats = compute_statistics(root, stride)
    try:
        path.write_text(json.dumps(stats, indent=1), encoding="utf-8")
    except OSError as e:
        raise OSError(f"cannot save statistics to {path} ({e}); pass a writable stats path") from e
    return stats


def _as(value: np.ndarray, like: Array) -> Any:
    """``value`` as the array type (numpy or torch), dtype and device of ``like``."""
    if isinstance(like, np.ndarray):
        return value.astype(like.dtype if like.dtype.kind == "f" else np.float32)
    return like.new_tensor(value)  # torch, without importing it here


def clip_actions(actions: Array) -> Array:
    """Clip relative actions (..., 7) to [-1, 1] and snap the gripper to ±1 (> 0 open, else close)."""
    if isinstance(actions, np.ndarray):
        out = np.clip(actions, -ACTION_LIMIT, ACTION_LIMIT)
        out[..., GRIPPER_DIM] = np.where(actions[..., GRIPPER_DIM] > 0, 1.0, -1.0)
        return out
    out = actions.clamp(-ACTION_LIMIT, ACTION_LIMIT)
    out[..., GRIPPER_DIM] = (actions[..., GRIPPER_DIM] > 0).to(out.dtype) * 2 - 1
    return out


@dataclass(frozen=True, eq=False)
class Normalizer:
    """Proprio standardisation and action clipping; saved as a dict beside checkpoints.

    Dimensions whose std is below ``min_std`` (constant in the data) are only centred.
    """

    obs_mean: np.ndarray
    obs_std: np.ndarray
    min_std: float = 1e-4

    @classmethod
    def from_statistics(cls, stats: dict[str, dict[str, Any]], min_std: float = 1e-4) -> Normalizer:
        """From ``compute_statistics``' dict; warns if rel_actions leave [-1, 1] (they would be clipped)."""
        if "rel_actions" in stats:
            low, high = np.asarray(stats["rel_actions"]["min"]), np.asarray(stats["rel_actions"]["max"])
            outside = np.flatnonzero((low < -ACTION_LIMIT) | (high > ACTION_LIMIT))
            if outside.size:
                warnings.warn(f"rel_actions dims {outside.tolist()} exceed [-1, 1] (min {low[outside]}, "
                              f"max {high[outside]}); they will be clipped", stacklevel=2)
        return cls(np.asarray(stats["robot_obs"]["mean"], np.float64),
                   np.asarray(stats["robot_obs"]["std"], np.float64), min_std)

    @property
    def _scale(self) -> np.ndarray:
        return np.where(self.obs_std < self.min_std, 1.0, self.obs_std)

    def normalize_obs(self, obs: Array) -> Array:
        return (obs - _as(self.obs_mean, obs)) / _as(self._scale, obs)

    def unnormalize_obs(self, obs: Array) -> Array:
        return obs * _as(self._scale, obs) + _as(self.obs_mean, obs)

    def normalize_actions(self, actions: Array) -> Array:
        """Dataset actions -> policy targets: already in [-1, 1], so only clipped."""
        return clip_actions(actions)

    def unnormalize_actions(self, actions: Array) -> Array:
        """Policy outputs -> env actions: clipped, gripper ±1."""
        return clip_actions(actions)

    def to_dict(self) -> dict[str, Any]:
        return {"obs_mean": self.obs_mean.tolist(), "obs_std": self.obs_std.tolist(), "min_std": self.min_std}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        try:
            return cls(np.asarray(d["obs_mean"], np.float64), np.asarray(d["obs_std"], np.float64),
                       float(d["min_std"]))
        except KeyError as e:
            raise KeyError(f"normalizer dict lacks {e}; expected obs_mean, obs_std, min_std") from None
