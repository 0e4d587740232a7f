"""Streaming training samples from a CALVIN-format split (collector output or real CALVIN).

Nothing but indices is held in memory: each sample reads only the keys it needs from the frame
files it touches (``np.load`` per file), through a small per-worker LRU of recent frames.
Sample indices (not data) are shuffled per epoch from (seed, epoch) and split across DDP ranks
and DataLoader workers, so one epoch yields every sample once (with several ranks, up to
``world_size - 1`` samples are left out so that every rank yields the same number).

One sample (``default_collate`` batches these dicts)::

    sample_id, frame_id, episode, ann_index   ints (ann_index -1 without language)
    lang_emb      (384,) float32              language-conditioned datasets only
    history       {key: (history, ...)}       observation features: images uint8 (C, H, W),
                                              robot_obs float32 normalised
    actions       (chunk, 7) float32          rel_actions of frames t..t+chunk-1, clipped
    actions_history (history, chunk, 7)       the same chunk for every history frame (the last row
                                              is ``actions``), for the per-timestep action loss
    targets       {name: array}               at t+forecast_n: depth_<cam> float32 (H, W),
                                              seg_<cam> uint8 (H, W), dynamic_<cam> bool (H, W)
    has_target    {name: bool}                for every name in TARGET_NAMES; absent targets
                                              (no depth/seg keys, or forecast_n 0) are False
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from sim.calvin_dataset import CalvinDataset, frame_file
from sim.cameras import CAMERAS as CAMERA_SPECS

from .features import (
    LANG_FEATURE,
    POLICY_FEATURES,
    Feature,
    FrameError,
    dynamic_mask,
    frame_keys,
    moved_segment_ids,
    read_frame,
)
from .normalization import Normalizer, clip_actions, load_or_compute_statistics
from .windows import (
    ANN,
    EPISODE,
    NO_ANN,
    T,
    WindowSpec,
    annotated_samples,
    episode_samples,
    epoch_order,
    shard,
)

CAMERAS = tuple(c.name for c in CAMERA_SPECS)  # "static", "gripper"
TARGET_NAMES = tuple(f"{kind}_{cam}" for cam in CAMERAS for kind in ("depth", "seg", "dynamic"))
ACTION_KEY, PROPRIO_KEY, SCENE_KEY = "rel_actions", "robot_obs", "scene_obs"
Frame = dict[str, np.ndarray]


class FrameCache:
    """LRU of recently read frames (frame id -> the keys read so far) within one worker."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._frames: OrderedDict[int, Frame] = OrderedDict()

    def __len__(self) -> int:
        return len(self._frames)

    def get(self, root: Path, frame_id: int, keys: Sequence[str], features: dict[str, Feature]) -> Frame:
        """The ``keys`` of frame ``frame_id``, reading from its file only the keys not cached."""
        entry = self._frames.pop(frame_id, {})
        missing = [k for k in keys if k not in entry]
        if missing:
            entry = {**entry, **read_frame(frame_file(root, frame_id), missing, features)}
        if self.capacity:
            self._frames[frame_id] = entry
            while len(self._frames) > self.capacity:
                self._frames.popitem(last=False)
        return entry

    def clear(self) -> None:
        self._frames.clear()


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if (rank is None) != (world_size is None):
        raise ValueError(f"give both rank and world_size or neither; got {rank}, {world_size}")
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _available(root: Path, first_frame: int, features: Sequence[Feature]) -> dict[str, Feature]:
    """The features present in the split (judged on its first frame); a missing required one fails."""
    path = frame_file(root, first_frame)
    keys = frame_keys(path)
    missing = [f.key for f in features if not f.optional and f.key not in keys]
    if missing:
        raise FrameError(f"{path}: missing required key(s) {missing}; it has {sorted(keys)}")
    return {f.key: f for f in features if f.key in keys}


def target_names(available: Collection[str], forecast_n: int) -> list[str]:
    """World-knowledge targets the available keys allow: future depth and segmentation, and the
    dynamic-region mask (needs segmentation and scene_obs); none without a forecast frame."""
    if not forecast_n:
        return []
    names = []
    for cam in CAMERAS:
        depth, seg = f"depth_{cam}", f"seg_{cam}"
        names += [k for k in (depth, seg) if k in available]
        if seg in available and SCENE_KEY in available:
            names.append(f"dynamic_{cam}")
    return names


def _seg_of(dynamic: str) -> str:
    return dynamic.replace("dynamic_", "seg_", 1)


def _image_or_vector(values: list[np.ndarray]) -> torch.Tensor:
    """Stacked frames as a tensor: (H, W, C) images become (C, H, W); floats become float32."""
    stacked = np.stack(values)
    if stacked.ndim == 4:
        stacked = stacked.transpose(0, 3, 1, 2)
    if stacked.dtype.kind == "f":
        stacked = stacked.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(stacked))


def preprocess_history(frames: Sequence[Mapping[str, np.ndarray]], keys: Sequence[str],
                       normalizer: Normalizer) -> dict[str, torch.Tensor]:
    """The one observation preprocessing path (training, simulation, ROS): a window of frames as
    tensors, images (T, C, H, W) uint8 and ``robot_obs`` (T, 15) normalised."""
    history = {k: _image_or_vector([frame[k] for frame in frames]) for k in keys}
    if PROPRIO_KEY in history:
        history[PROPRIO_KEY] = normalizer.normalize_obs(history[PROPRIO_KEY])
    return history


class CalvinWindowDataset(IterableDataset):
    """Samples (history, action chunk, forecast targets, language) streamed from one split folder.

    ``root`` is a dataset folder and ``split`` one of its split folders (or ``split=None`` and
    ``root`` the split itself). ``language``: only windows inside annotated spans, each with its
    sentence embedding; otherwise every window of every episode. ``normalizer``: pass the
    training split's one for validation; by default it comes from this split's statistics
    (computed once, see ``normalization``). Call ``set_epoch`` before each epoch to reshuffle.
    """

    def __init__(self, root: str | Path, split: str | None = "training", history: int = 1, chunk: int = 1,
                 forecast_n: int = 0, features: Sequence[Feature] = POLICY_FEATURES,
                 language: bool = True, shuffle: bool = True, shuffle_buffer: int | None = None,
                 seed: int = 0, cache_size: int = 32, normalizer: Normalizer | None = None,
                 stats_path: str | Path | None = None, stats_stride: int = 1,
                 rank: int | None = None, world_size: int | None = None) -> None:
        super().__init__()
        self.root = Path(root) / split if split else Path(root)
        calvin = CalvinDataset(self.root)
        episodes = calvin.episodes()
        if not episodes:
            raise ValueError(f"{self.root}: no episodes in its ep_start_end_ids.npy")
        self.spec = WindowSpec(history, chunk, forecast_n)
        self.features = _available(self.root, episodes[0][0], features)
        if ACTION_KEY not in self.features:
            raise ValueError(f"features must include {ACTION_KEY!r}; got {sorted(self.features)}")
        self.observation_keys = [k for k, f in self.features.items() if f.role == "observation"]
        self.target_names = target_names(self.features, forecast_n)
        self.lang_emb, windows = self._language(calvin) if language else (None, [])
        self.samples = (annotated_samples(episodes, windows, self.spec) if language
                        else episode_samples(episodes, self.spec))
        if not len(self.samples):
            raise ValueError(f"{self.root}: no window of {self.spec} fits inside "
                             f"{'an annotated window' if language else 'an episode'}")
        self.normalizer = normalizer or Normalizer.from_statistics(
            load_or_compute_statistics(self.root, stats_path, stats_stride))
        self.shuffle, self.shuffle_buffer, self.seed, self.epoch = shuffle, shuffle_buffer, seed, 0
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.cache = FrameCache(cache_size)

    def _language(self, calvin: CalvinDataset) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Sentence embeddings (N, 384) and annotated windows (info.indx)."""
        ann = calvin.annotations()
        emb = np.asarray(ann["language"]["emb"], np.float32)[:, 0]
        if emb.shape[1:] != LANG_FEATURE.shape:
            raise ValueError(f"{self.root}: language embeddings are {emb.shape[1:]}, expected {LANG_FEATURE.shape}")
        return emb, [(int(s), int(e)) for s, e in ann["info"]["indx"]]

    # ---- what a sample reads --------------------------------------------------------------------

    def _frame_keys(self, t: int) -> dict[int, list[str]]:
        """Keys to read per frame id for the sample anchored at ``t``."""
        needs: dict[int, set[str]] = {}
        for i in self.spec.history_ids(t):
            needs.setdefault(int(i), set()).update(self.observation_keys)
        for i in np.unique(self.spec.history_action_ids(t)):
            needs.setdefault(int(i), set()).add(ACTION_KEY)
        future = t + self.spec.forecast_n
        for name in self.target_names:
            if name.startswith("dynamic_"):
                for i in (t, future):
                    needs.setdefault(i, set()).update((_seg_of(name), SCENE_KEY))
            else:
                needs.setdefault(future, set()).add(name)
        return {i: sorted(keys) for i, keys in sorted(needs.items())}

    # ---- building a sample ----------------------------------------------------------------------

    def sample(self, index: int) -> dict[str, Any]:
        """Sample number ``index`` of this split (random access; iteration uses it)."""
        t, episode, ann = (int(v) for v in self.samples[index, [T, EPISODE, ANN]])
        frames = {i: self.cache.get(self.root, i, keys, self.features) for i, keys in self._frame_keys(t).items()}
        out: dict[str, Any] = {"sample_id": index, "frame_id": t, "episode": episode, "ann_index": ann}
        if self.lang_emb is not None and ann != NO_ANN:
            out["lang_emb"] = torch.from_numpy(self.lang_emb[ann].copy())
        out["history"] = self._history(frames, t)
        ids = self.spec.history_action_ids(t)  # (history, chunk)
        actions = np.stack([[frames[int(i)][ACTION_KEY] for i in row] for row in ids]).astype(np.float32)
        out["actions_history"] = torch.from_numpy(clip_actions(actions))
        out["actions"] = out["actions_history"][-1].clone()
        out["targets"] = self._targets(frames, t)
        out["has_target"] = {n: n in out["targets"] for n in TARGET_NAMES}
        return out

    def _history(self, frames: dict[int, Frame], t: int) -> dict[str, torch.Tensor]:
        ids = [int(i) for i in self.spec.history_ids(t)]
        return preprocess_history([frames[i] for i in ids], self.observation_keys, self.normalizer)

    def _targets(self, frames: dict[int, Frame], t: int) -> dict[str, torch.Tensor]:
        if not self.target_names:
            return {}
        now, future = frames[t], frames[t + self.spec.forecast_n]
        moved = moved_segment_ids(now[SCENE_KEY], future[SCENE_KEY]) if SCENE_KEY in now else []
        targets = {}
        for name in self.target_names:
            if name.startswith("dynamic_"):
                seg = _seg_of(name)
                targets[name] = torch.from_numpy(dynamic_mask(now[seg], future[seg], moved))
            else:
                targets[name] = _image_or_vector([future[name]])[0]
        return targets

    # ---- iteration ------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch``: call before iterating, like DistributedSampler.set_epoch.

        Workers receive a copy of the dataset when an iteration starts, so this reaches them
        unless the DataLoader keeps ``persistent_workers``."""
        self.epoch = epoch

    def positions(self, worker: int = 0, num_workers: int = 1) -> np.ndarray:
        """Sample indices that (this rank, ``worker``) yields this epoch, in order."""
        order = (epoch_order(self.samples, self.seed, self.epoch, self.shuffle_buffer) if self.shuffle
                 else np.arange(len(self.samples)))
        return shard(order, self.rank, self.world_size, worker, num_workers)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for index in self.positions(worker, num_workers):
            yield self.sample(int(index))

    def __len__(self) -> int:
        """Samples this rank yields per epoch (all workers together)."""
        return len(self.samples) // self.world_size

    def __getstate__(self) -> dict[str, Any]:
        """Worker copies start with an empty cache: only indices travel to workers."""
        state = self.__dict__.copy()
        state["cache"] = FrameCache(self.cache.capacity)
        return state
