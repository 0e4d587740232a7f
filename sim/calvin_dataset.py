"""A minimal reader (and the layout) of a CALVIN dataset split folder.

Layout of one split (``training/`` or ``validation/``)::

    episode_%07d.npz                  one frame per file, FRAME_KEYS (+ extra keys)
    ep_start_end_ids.npy              int (E, 2): inclusive [start, end] frame ids
    scene_info.npy                    pickled {"calvin_scene_D": [first_id, last_id], ...}
    statistics.yaml                   {key: {"mean": [...], "std": [...]}} for STATISTICS_KEYS
    lang_annotations/auto_lang_ann.npy
        pickled {"language": {"ann": [str], "task": [str], "emb": (N, 1, 384) float32},
                 "info": {"episodes": [], "indx": [(start, end), ...]}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

# CALVIN's per-frame keys: name -> (dtype kind, shape). Extra keys (seg_*) are allowed.
FRAME_KEYS: dict[str, tuple[str, tuple[int, ...]]] = {
    "actions": ("f", (7,)),
    "rel_actions": ("f", (7,)),
    "robot_obs": ("f", (15,)),
    "scene_obs": ("f", (24,)),
    "rgb_static": ("u", (200, 200, 3)),
    "rgb_gripper": ("u", (84, 84, 3)),
    "depth_static": ("f", (200, 200)),
    "depth_gripper": ("f", (84, 84)),
}
EXTRA_FRAME_KEYS: dict[str, tuple[str, tuple[int, ...]]] = {
    "seg_static": ("u", (200, 200)),
    "seg_gripper": ("u", (84, 84)),
}
STATISTICS_KEYS = ("robot_obs", "actions", "rel_actions")
EP_IDS_FILE = "ep_start_end_ids.npy"
SCENE_INFO_FILE = "scene_info.npy"
STATISTICS_FILE = "statistics.yaml"
LANG_FILE = Path("lang_annotations") / "auto_lang_ann.npy"


def frame_file(root: str | Path, frame_id: int) -> Path:
    return Path(root) / f"episode_{frame_id:07d}.npz"


def load_pickled(path: Path) -> Any:
    """The object ``np.save`` stored at ``path`` (a dict saved as a 0-d object array)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    return np.load(path, allow_pickle=True).item()


def check_annotations(ann: Any, source: str | Path) -> None:
    """Fail naming ``source`` unless ``ann`` has CALVIN's auto_lang_ann structure."""
    try:
        lang, info = ann["language"], ann["info"]
        n, emb, indx = len(lang["ann"]), np.asarray(lang["emb"]), info["indx"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{source}: expected {{'language': {{'ann', 'task', 'emb'}}, 'info': {{'indx'}}}}, "
                         f"missing {e}") from None
    if len(lang["task"]) != n or len(indx) != n or emb.ndim != 3 or emb.shape[:2] != (n, 1):
        raise ValueError(f"{source}: {n} sentences, {len(lang['task'])} tasks, {len(indx)} windows and "
                         f"embeddings of shape {emb.shape}; expected equal counts and emb (N, 1, D)")


class CalvinDataset:
    """One CALVIN split folder: episode ranges, frames by id, language annotations."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"CALVIN split folder {self.root} does not exist")
        self._episodes = self._read_episodes()
        for start, end in self._episodes:
            for frame_id in (start, end):
                if not frame_file(self.root, frame_id).is_file():
                    raise FileNotFoundError(f"{frame_file(self.root, frame_id)} is missing "
                                            f"(episode [{start}, {end}] of {self.root / EP_IDS_FILE})")

    def _read_episodes(self) -> list[tuple[int, int]]:
        path = self.root / EP_IDS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; is {self.root} a CALVIN split folder?")
        ids = np.load(path)
        if ids.size == 0:
            return []
        if ids.ndim != 2 or ids.shape[1] != 2 or ids.dtype.kind not in "iu" or np.any(ids[:, 0] > ids[:, 1]):
            raise ValueError(f"{path}: expected an int array (E, 2) of [start, end] with start <= end, "
                             f"got {ids.dtype} {ids.shape}")
        ordered = ids[np.argsort(ids[:, 0])]
        if np.any(ordered[1:, 0] <= ordered[:-1, 1]):
            raise ValueError(f"{path}: episode ranges overlap")
        return [(int(s), int(e)) for s, e in ids]

    def episodes(self) -> list[tuple[int, int]]:
        """Inclusive [start, end] frame ids of each episode."""
        return list(self._episodes)

    def __len__(self) -> int:
        return sum(end - start + 1 for start, end in self._episodes)

    def frame(self, frame_id: int, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """All arrays of frame ``frame_id`` (or only ``keys``); CALVIN's keys must be present."""
        path = frame_file(self.root, frame_id)
        if not path.is_file():
            raise FileNotFoundError(f"frame {frame_id}: {path} is missing")
        with np.load(path) as data:
            wanted = tuple(FRAME_KEYS) if keys is None else keys
            missing = [k for k in wanted if k not in data.files]
            if missing:
                raise KeyError(f"{path} lacks key(s) {missing}; it has {sorted(data.files)}")
            return {k: data[k] for k in (data.files if keys is None else keys)}

    def annotations(self) -> dict[str, Any]:
        """The ``auto_lang_ann`` dict (language.ann/task/emb, info.indx)."""
        path = self.root / LANG_FILE
        ann = load_pickled(path)
        check_annotations(ann, path)
        return ann

    def scene_info(self) -> dict[str, list[int]]:
        return load_pickled(self.root / SCENE_INFO_FILE)

    def statistics(self) -> dict[str, dict[str, list[float]]]:
        path = self.root / STATISTICS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing")
        return yaml.safe_load(path.read_text(encoding="utf-8"))
