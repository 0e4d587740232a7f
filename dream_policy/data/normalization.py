"""Statistics of ``robot_obs`` and ``rel_actions`` (one streaming pass) and the ``Normalizer``.

Statistics are computed once, reading only the two low-dimensional keys of each frame file,
in batches merged with Chan's parallel Welford update (memory independent of the split size);
``stride`` > 1 reads every stride-th frame of huge splits. They are stored as JSON
(``normalization_stats.json`` beside the split, or a given path) and reused afterwards.
``statistics.yaml`` is reused only when it holds mean, std, min and max of both keys: the
collector's holds only mean/std and real CALVIN's holds transform configs, so both are recomputed.

Angles: the TCP's Euler angles in ``robot_obs`` (dims 3-5) wrap at +-pi, and a gripper pointing down
has its roll right at the wrap (+3.13 one step, -3.14 the next). Their statistics are therefore also
kept as circular ones (``circ_mean``, ``circ_std``, from the same pass: sums of sin and cos), and a
``Normalizer`` built from them measures each angle as its wrapped difference from the circular mean,
so a tiny turn across the wrap is a tiny change of the input instead of a jump by 2 pi / std.
Normalisers saved without ``angle_dims`` (older checkpoints) keep the linear treatment.

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
ANGLE_DIMS = {"robot_obs": (3, 4, 5)}  # the TCP's xyz Euler angles (radians, wrapping at +-pi)
STATS_FILE = "normalization_stats.json"
GRIPPER_DIM = 6
ACTION_LIMIT = 1.0
Array = TypeVar("Array")  # np.ndarray or torch.Tensor


def wrap_angle(angle: Array) -> Array:
    """Angles (numpy or torch) wrapped into [-pi, pi)."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


@dataclass
class RunningStats:
    """Per-dimension count, mean, sum of squared deviations, min and max, merged batch by batch;
    for ``angle_dims`` also the sums of their sines and cosines (circular mean and std)."""

    dim: int
    count: int = 0
    angle_dims: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.mean = np.zeros(self.dim)
        self.m2 = np.zeros(self.dim)
        self.min = np.full(self.dim, np.inf)
        self.max = np.full(self.dim, -np.inf)
        self.angle_dims = tuple(int(d) for d in self.angle_dims)
        if any(not 0 <= d < self.dim for d in self.angle_dims):
            raise ValueError(f"angle_dims {self.angle_dims} outside 0..{self.dim - 1}")
        self.sin = np.zeros(len(self.angle_dims))
        self.cos = np.zeros(len(self.angle_dims))

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
        if self.angle_dims:
            angles = batch[:, list(self.angle_dims)]
            self.sin += np.sin(angles).sum(0)
            self.cos += np.cos(angles).sum(0)

    def to_dict(self) -> dict[str, Any]:
        if self.count == 0:
            raise ValueError("no frames were read; cannot compute statistics")
        std = np.sqrt(self.m2 / self.count)  # population std, like numpy's default
        out = {"mean": self.mean.tolist(), "std": std.tolist(), "min": self.min.tolist(),
               "max": self.max.tolist(), "count": self.count}
        if self.angle_dims:
            resultant = np.clip(np.hypot(self.sin, self.cos) / self.count, 1e-12, 1.0)
            out.update(angle_dims=list(self.angle_dims), circ_mean=np.arctan2(self.sin, self.cos).tolist(),
                       circ_std=np.sqrt(-2.0 * np.log(resultant)).tolist())
        return out


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
    running = {k: RunningStats(feature(k).shape[0], angle_dims=ANGLE_DIMS.get(k, ())) for k in keys}
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


def _complete(stats: Any, keys: Sequence[str], circular: bool = True) -> bool:
    """True when ``stats`` has mean, std, min and max of the right length for every key, and (with
    ``circular``) the circular statistics of its angles."""
    try:
        return (all(len(stats[k][s]) == feature(k).shape[0] for k in keys for s in ("mean", "std", "min", "max"))
                and (not circular or all(len(stats[k][s]) == len(ANGLE_DIMS[k]) for k in keys
                                         if k in ANGLE_DIMS for s in ("circ_mean", "circ_std"))))
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
        if _complete(stats, STATS_KEYS):
            return stats
        if not _complete(stats, STATS_KEYS, circular=False):
            raise ValueError(f"{path}: expected mean/std/min/max of {STATS_KEYS}; delete it to recompute")
        warnings.warn(f"{path} predates the circular statistics of the angles; recomputing it", stacklevel=2)
    yaml_path = root / STATISTICS_FILE
    if yaml_path.is_file():
        stats = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
        if _complete(stats, STATS_KEYS, circular=False):  # given with the data: used as given
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

    Dimensions whose std is below ``min_std`` (constant in the data) are only centred. For
    ``angle_dims`` the difference from the mean is wrapped into [-pi, pi) before scaling (mean and
    std are then the circular ones).
    """

    obs_mean: np.ndarray
    obs_std: np.ndarray
    min_std: float = 1e-4
    angle_dims: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "angle_dims", tuple(int(d) for d in self.angle_dims))
        if any(not 0 <= d < len(self.obs_mean) for d in self.angle_dims):
            raise ValueError(f"angle_dims {self.angle_dims} outside the {len(self.obs_mean)} proprio dims")

    @classmethod
    def from_statistics(cls, stats: dict[str, dict[str, Any]], min_std: float = 1e-4) -> Normalizer:
        """From ``compute_statistics``' dict; warns if rel_actions leave [-1, 1] (they would be clipped)."""
        if "rel_actions" in stats:
            low, high = np.asarray(stats["rel_actions"]["min"]), np.asarray(stats["rel_actions"]["max"])
            outside = np.flatnonzero((low < -ACTION_LIMIT) | (high > ACTION_LIMIT))
            if outside.size:
                warnings.warn(f"rel_actions dims {outside.tolist()} exceed [-1, 1] (min {low[outside]}, "
                              f"max {high[outside]}); they will be clipped", stacklevel=2)
        obs = stats["robot_obs"]
        mean, std = np.asarray(obs["mean"], np.float64).copy(), np.asarray(obs["std"], np.float64).copy()
        dims = tuple(int(d) for d in obs.get("angle_dims", ()))
        if dims:
            mean[list(dims)], std[list(dims)] = obs["circ_mean"], obs["circ_std"]
        return cls(mean, std, min_std, dims)

    def with_angles(self, stats: dict[str, dict[str, Any]]) -> Normalizer:
        """This normaliser with its angles measured circularly, about ``stats``' circular mean and std
        (fine-tuning a checkpoint saved before angles were wrapped); the other dims are kept."""
        obs = stats["robot_obs"]
        if "circ_mean" not in obs:
            raise ValueError("statistics without circ_mean/circ_std: recompute them (delete the stats file)")
        dims = tuple(int(d) for d in obs["angle_dims"])
        mean, std = self.obs_mean.copy(), self.obs_std.copy()
        mean[list(dims)], std[list(dims)] = obs["circ_mean"], obs["circ_std"]
        return Normalizer(mean, std, self.min_std, dims)

    @property
    def _scale(self) -> np.ndarray:
        return np.where(self.obs_std < self.min_std, 1.0, self.obs_std)

    def normalize_obs(self, obs: Array) -> Array:
        centred = obs - _as(self.obs_mean, obs)
        if self.angle_dims:
            dims = list(self.angle_dims)
            centred[..., dims] = wrap_angle(centred[..., dims])
        return centred / _as(self._scale, obs)

    def unnormalize_obs(self, obs: Array) -> Array:
        """The inverse of ``normalize_obs``; angles come back wrapped into [-pi, pi)."""
        out = obs * _as(self._scale, obs) + _as(self.obs_mean, obs)
        if self.angle_dims:
            dims = list(self.angle_dims)
            out[..., dims] = wrap_angle(out[..., dims])
        return out

    def normalize_actions(self, actions: Array) -> Array:
        """Dataset actions -> policy targets: already in [-1, 1], so only clipped."""
        return clip_actions(actions)

    def unnormalize_actions(self, actions: Array) -> Array:
        """Policy outputs -> env actions: clipped, gripper ±1."""
        return clip_actions(actions)

    def to_dict(self) -> dict[str, Any]:
        return {"obs_mean": self.obs_mean.tolist(), "obs_std": self.obs_std.tolist(), "min_std": self.min_std,
                "angle_dims": list(self.angle_dims)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        try:
            return cls(np.asarray(d["obs_mean"], np.float64), np.asarray(d["obs_std"], np.float64),
                       float(d["min_std"]), tuple(d.get("angle_dims", ())))
        except KeyError as e:
            raise KeyError(f"normalizer dict lacks {e}; expected obs_mean, obs_std, min_std") from None
