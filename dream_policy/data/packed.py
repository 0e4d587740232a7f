"""A packed copy of a CALVIN-format split at the model's resolution, and batches gathered from it.

The streaming loader (``loader.CalvinWindowDataset``) reads one ``.npz`` per frame at full
resolution (200x200 static, 84x84 gripper, plus depth and segmentation) and the model shrinks
the images to 64x64 (tiny) anyway. On a GPU that file reading, not the model, bounds training
(~1,250 samples/s with 14 loader workers). ``dream-policy pack`` writes each split once as
fixed-shape arrays (``.npy``) already at model resolution:

    <split>/packed.json            format, image_size, target_size, forecast_n, arrays, source
    <split>/frame_ids.npy          (N,) int64: the source frame id of every packed row
    <split>/rgb_static.npy         (N, S, S, 3) uint8   resized as the vision preprocessor does
    <split>/rgb_gripper.npy        (N, S, S, 3) uint8
    <split>/robot_obs.npy          (N, 15) float32      raw (normalised at batch time)
    <split>/rel_actions.npy        (N, 7) float32
    <split>/scene_obs.npy          (N, 24) float32      raw; only where the source has it (simulated data)
    <split>/depth_<cam>.npy        (N, s, s) float32    the forecast targets at the world heads'
    <split>/seg_<cam>.npy          (N, s, s) uint8      size s, resized exactly as their losses do
    <split>/dynamic_<cam>.npy      (N, s, s) float16    the dynamic region between row and row+forecast_n
    <split>/ep_start_end_ids.npy, lang_annotations/, normalization_stats.json   (copied / computed)

``PackedWindowDataset`` serves the same samples as ``CalvinWindowDataset`` (same windows,
language, normalisation, clipping; targets already at the world heads' size) but builds whole
batches with tensor indexing (``__getitems__``), and can keep every array on the training GPU
(``device="cuda"``), where a batch costs a few gathers. On the CPU it memory-maps the arrays.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from sim.calvin_dataset import (
    EP_IDS_FILE,
    LANG_FILE,
    SCENE_INFO_FILE,
    CalvinDataset,
    check_annotations,
    frame_file,
    load_pickled,
)

from .colour_negatives import COLOURS, negative_table
from .features import LANG_FEATURE, POLICY_FEATURES, dynamic_mask, moved_segment_ids, read_frame
from .loader import ACTION_KEY, CAMERAS, PROPRIO_KEY, SCENE_KEY, TARGET_NAMES, _available, target_names
from .named_block import NO_BLOCK, block_offsets, named_block_mask, named_blocks
from .normalization import ANGLE_DIMS, STATS_FILE, Normalizer, RunningStats, clip_actions
from .windows import (
    ANN,
    EPISODE,
    NO_ANN,
    T,
    WindowSpec,
    annotated_samples,
    episode_samples,
    first_frames,
    repeat_attempt_starts,
)

FORMAT = "dream_policy.packed/1"
META_FILE = "packed.json"
FRAME_IDS_FILE = "frame_ids.npy"
IMAGE_KEYS = tuple(f"rgb_{cam}" for cam in CAMERAS)
LOWDIM_KEYS = (PROPRIO_KEY, ACTION_KEY)
CHUNK_FRAMES = 256  # frames per packing task (bounds a worker's memory on long real-CALVIN episodes)


class PackedDataError(ValueError):
    """A packed split that is missing, corrupt, or was packed for another model or forecast."""


# ---- resizing: the same operations the model applies ---------------------------------------------


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, size, size, 3) uint8, by the vision preprocessor's resize
    (``encoders.resize_image``: bilinear with antialiasing on [0, 1] floats), rounded back to uint8."""
    from dream_policy.encoders import resize_image

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    x = resize_image(x, size)
    return (x * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def resize_targets(targets: np.ndarray, size: int, mode: str) -> np.ndarray:
    """(N, H, W) -> (N, size, size) float32, by the world heads' ``resize_target`` (their losses
    apply it to full-resolution targets; on targets already at ``size`` it is the identity)."""
    from dream_policy.world_heads import resize_target

    return resize_target(torch.from_numpy(np.ascontiguousarray(targets)), size, mode).numpy()


# ---- packing -------------------------------------------------------------------------------------


def _array_specs(available: Sequence[str], targets: Sequence[str], image_size: int,
                 target_size: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Packed array name -> (per-row shape, dtype)."""
    specs: dict[str, tuple[tuple[int, ...], str]] = {k: ((image_size, image_size, 3), "uint8") for k in IMAGE_KEYS}
    specs[PROPRIO_KEY], specs[ACTION_KEY] = ((15,), "float32"), ((7,), "float32")
    if SCENE_KEY in available:
        specs[SCENE_KEY] = ((24,), "float32")
    for name in targets:
        kind = name.split("_", 1)[0]
        specs[name] = ((target_size, target_size), {"depth": "float32", "seg": "uint8", "dynamic": "float16"}[kind])
    missing = [k for k in (*IMAGE_KEYS, *LOWDIM_KEYS) if k not in available]
    if missing:
        raise PackedDataError(f"cannot pack: the split lacks {missing}")
    return specs


def _tasks(episodes: Sequence[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
    """(first packed row, first frame id, last frame id, episode end) per chunk of an episode."""
    tasks, row = [], 0
    for start, end in episodes:
        for first in range(start, end + 1, CHUNK_FRAMES):
            last = min(first + CHUNK_FRAMES - 1, end)
            tasks.append((row, first, last, end))
            row += last - first + 1
    return tasks


def _pack_chunk(src: str, dst: str, specs: dict[str, tuple[tuple[int, ...], str]], forecast_n: int,
                task: tuple[int, int, int, int]) -> int:
    """Pack frames ``first..last`` into rows ``row..``; dynamic regions look ahead to the episode end."""
    torch.set_num_threads(1)
    row, first, last, end = task
    src_path, dst_path = Path(src), Path(dst)
    names = list(specs)
    dynamic = [n for n in names if n.startswith("dynamic_")]
    direct = [n for n in names if not n.startswith("dynamic_")]
    look_ahead = min(last + forecast_n, end) if dynamic else last
    need_seg = sorted({n.replace("dynamic_", "seg_", 1) for n in dynamic})
    frames = []
    for frame_id in range(first, look_ahead + 1):
        keys = [*(k for k in direct if frame_id <= last), *need_seg, *([SCENE_KEY] if dynamic else [])]
        frames.append(read_frame(frame_file(src_path, frame_id), sorted(set(keys))))
    count = last - first + 1
    size = specs[IMAGE_KEYS[0]][0][0]
    arrays: dict[str, np.ndarray] = {}
    for name in direct:
        stacked = np.stack([f[name] for f in frames[:count]])
        if name in IMAGE_KEYS:
            arrays[name] = resize_images(stacked, size)
        elif name.startswith("depth_"):
            arrays[name] = resize_targets(stacked, specs[name][0][0], "nearest")
        elif name.startswith("seg_"):
            arrays[name] = resize_targets(stacked, specs[name][0][0], "nearest").astype(np.uint8)
        else:
            arrays[name] = stacked.astype(np.float32)
    for name in dynamic:
        seg, masks = name.replace("dynamic_", "seg_", 1), []
        for i in range(count):
            j = i + forecast_n
            if j >= len(frames):  # no forecast frame in this episode: no sample uses this row's target
                masks.append(np.zeros_like(frames[i][seg], dtype=bool))
                continue
            moved = moved_segment_ids(frames[i][SCENE_KEY], frames[j][SCENE_KEY])
            masks.append(dynamic_mask(frames[i][seg], frames[j][seg], moved))
        arrays[name] = resize_targets(np.stack(masks), specs[name][0][0], "area").astype(np.float16)
    for name, value in arrays.items():
        out = np.load(dst_path / f"{name}.npy", mmap_mode="r+")
        out[row:row + count] = value
        out.flush()
        del out
    return count


def pack_split(src: str | Path, dst: str | Path, image_size: int, target_size: int, forecast_n: int,
               workers: int = 1) -> dict[str, Any]:
    """Pack one CALVIN-format split folder ``src`` into ``dst`` (created; must not exist). Returns the meta."""
    src, dst = Path(src), Path(dst)
    calvin = CalvinDataset(src)
    episodes = calvin.episodes()
    if not episodes:
        raise PackedDataError(f"{src}: no episodes in its {EP_IDS_FILE}")
    available = _available(src, episodes[0][0], POLICY_FEATURES)
    targets = target_names(available, forecast_n)
    specs = _array_specs(list(available), targets, image_size, target_size)
    frame_ids = np.concatenate([np.arange(s, e + 1, dtype=np.int64) for s, e in episodes])
    dst.mkdir(parents=True)
    for name, (shape, dtype) in specs.items():
        np.lib.format.open_memmap(dst / f"{name}.npy", mode="w+", dtype=dtype, shape=(len(frame_ids), *shape))
    tasks = _tasks(episodes)
    bar = tqdm(total=len(frame_ids), desc=f"pack {src.name}", unit="frame")
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            futures = [pool.submit(_pack_chunk, str(src), str(dst), specs, forecast_n, t) for t in tasks]
            for future in futures:
                bar.update(future.result())
    else:
        for task in tasks:
            bar.update(_pack_chunk(str(src), str(dst), specs, forecast_n, task))
    bar.close()
    np.save(dst / FRAME_IDS_FILE, frame_ids)
    shutil.copy2(src / EP_IDS_FILE, dst / EP_IDS_FILE)
    for extra in (LANG_FILE, Path(SCENE_INFO_FILE)):
        if (src / extra).is_file():
            (dst / extra).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / extra, dst / extra)
    stats = {key: packed_statistics(dst, key) for key in LOWDIM_KEYS}
    (dst / STATS_FILE).write_text(json.dumps(stats, indent=1), encoding="utf-8")
    meta = {"format": FORMAT, "image_size": image_size, "target_size": target_size, "forecast_n": forecast_n,
            "frames": len(frame_ids), "targets": targets, "source": str(src.resolve()),
            "arrays": {name: {"shape": list(shape), "dtype": dtype} for name, (shape, dtype) in specs.items()}}
    (dst / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return meta


def pack_dataset(src: str | Path, dst: str | Path, image_size: int, target_size: int, forecast_n: int,
                 workers: int = 1, splits: Sequence[str] = ("training", "validation"),
                 overwrite: bool = False) -> dict[str, dict[str, Any]]:
    """Pack every split of ``src`` that exists into ``dst``; written to a temporary folder and renamed,
    so an interrupted run leaves no half-packed dataset behind."""
    src, dst = Path(src), Path(dst)
    found = [s for s in splits if (src / s).is_dir() and (not (src / s / EP_IDS_FILE).is_file()
                                                          or np.load(src / s / EP_IDS_FILE).size)]
    if not found:
        raise FileNotFoundError(f"{src}: none of the splits {list(splits)} exists")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists; pass overwrite=true to replace it")
    tmp = dst.with_name(dst.name + ".packing")
    shutil.rmtree(tmp, ignore_errors=True)
    metas = {split: pack_split(src / split, tmp / split, image_size, target_size, forecast_n, workers)
             for split in found}
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    return metas


def packed_statistics(split: Path, key: str) -> dict[str, Any]:
    """Statistics of one low-dimensional array of a packed split (with the angles' circular ones)."""
    values = np.load(split / f"{key}.npy", mmap_mode="r")
    running = RunningStats(values.shape[1], angle_dims=ANGLE_DIMS.get(key, ()))
    running.update(values)
    return {**running.to_dict(), "stride": 1}


def load_packed_statistics(split: Path) -> dict[str, Any]:
    """The split's statistics; a copy packed before the angles' circular statistics were kept gets
    them added (from its own ``robot_obs.npy``, a quick pass) and saved."""
    path = split / STATS_FILE
    stats = json.loads(path.read_text(encoding="utf-8"))
    if PROPRIO_KEY in stats and "circ_mean" not in stats[PROPRIO_KEY]:
        stats[PROPRIO_KEY] = packed_statistics(split, PROPRIO_KEY)
        try:
            path.write_text(json.dumps(stats, indent=1), encoding="utf-8")
        except OSError:
            pass  # read-only copy: recomputed next time, same values
    return stats


def is_packed(root: str | Path, split: str = "training") -> bool:
    """True when ``root/split`` is a packed split (``dream-policy pack`` output)."""
    return (Path(root) / split / META_FILE).is_file()


def read_meta(split_dir: Path) -> dict[str, Any]:
    path = split_dir / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackedDataError(f"{path} is missing: {split_dir} is not a packed split (dream-policy pack)") from None
    except json.JSONDecodeError as e:
        raise PackedDataError(f"{path}: corrupt ({e})") from None
    if meta.get("format") != FORMAT:
        raise PackedDataError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}; re-pack the data")
    return meta


# ---- serving batches -----------------------------------------------------------------------------


GROUND_SEG = "seg_static"  # the segmentation the named-block mask is read from


class PackedWindowDataset(Dataset):
    """Training samples from a packed split, built a batch at a time.

    Same samples and sample layout as ``CalvinWindowDataset`` (see its docstring), except that
    images are at ``image_size`` and targets at ``target_size`` already. ``dataset[i]`` is one
    sample; ``dataset.__getitems__(indices)`` (what a DataLoader with this dataset's ``collate``
    calls) is a whole batch, gathered by tensor indexing on ``device``. ``device`` other than
    the CPU loads every array there once (GPU training); on the CPU the arrays are memory-mapped.
    ``pad_history`` adds the samples anchored in the first ``history - 1`` frames of each annotated
    window, their history padded with its first frame (``windows.annotated_samples``).
    ``colour_negatives`` adds to each sample ``lang_neg`` (the embedding of its instruction with another block
    colour; ``text_encoder``, default MiniLM, embeds them once) and ``has_neg`` (False where the instruction
    names no single colour), for the model's colour-contrast loss (``colour_negatives.py``).
    ``start_repeat`` > 1 repeats the samples anchored in the first ``start_frames`` frames of their
    annotated window that many times (``windows.repeat_attempt_starts``).
    Language samples of a split packed with ``scene_obs`` carry ``block_offset`` (B, 3): the block their
    task names relative to the gripper (``named_block.py``), zeros and ``has_block`` False where it names none.
    With the world targets on (``forecast_n`` > 0) they also carry ``named_mask_static`` (B, s, s) bool: the
    pixels of the current static frame's segmentation that show that block (``named_block.named_block_mask``).
    """

    def __init__(self, root: str | Path, split: str | None = "training", history: int = 1, chunk: int = 1,
                 forecast_n: int = 0, language: bool = True, normalizer: Normalizer | None = None,
                 device: str | torch.device = "cpu", image_size: int | None = None,
                 target_size: int | None = None, start_repeat: int = 1, start_frames: int = 15,
                 pad_history: bool = False, colour_negatives: bool = False, text_encoder: Any = None) -> None:
        super().__init__()
        self.root = Path(root) / split if split else Path(root)
        self.meta = read_meta(self.root)
        self.spec = WindowSpec(history, chunk, forecast_n)
        self.device = torch.device(device)
        self._check_sizes(image_size, target_size)
        self.target_names = list(self.meta["targets"]) if forecast_n else []
        if self.target_names and forecast_n != self.meta["forecast_n"]:
            raise PackedDataError(f"{self.root}: packed with forecast_n={self.meta['forecast_n']}, asked for "
                                  f"forecast_n={forecast_n}; re-pack with forecast_n={forecast_n}")
        calvin_episodes = np.load(self.root / EP_IDS_FILE)
        episodes = [(int(s), int(e)) for s, e in calvin_episodes]
        self.lang_emb: np.ndarray | None = None
        if language:
            lang = load_pickled(self.root / LANG_FILE)
            check_annotations(lang, self.root / LANG_FILE)
            self.lang_emb = np.asarray(lang["language"]["emb"], np.float32)[:, 0]
            if self.lang_emb.shape[1:] != LANG_FEATURE.shape:
                raise PackedDataError(f"{self.root}: language embeddings are {self.lang_emb.shape[1:]}, "
                                      f"expected {LANG_FEATURE.shape}")
            windows = [(int(s), int(e)) for s, e in lang["info"]["indx"]]
            blocks = named_blocks(list(lang["language"].get("task", [])))
            self.samples = repeat_attempt_starts(annotated_samples(episodes, windows, self.spec, pad_history),
                                                 windows, start_frames, start_repeat)
        elif start_repeat != 1 or pad_history or colour_negatives:
            raise PackedDataError(f"{self.root}: start_repeat={start_repeat}, pad_history={pad_history}, "
                                  f"colour_negatives={colour_negatives} need language-annotated samples")
        else:
            self.samples = episode_samples(episodes, self.spec)
        if not len(self.samples):
            raise PackedDataError(f"{self.root}: no window of {self.spec} fits inside "
                                  f"{'an annotated window' if language else 'an episode'}")
        frame_ids = np.load(self.root / FRAME_IDS_FILE)
        if len(frame_ids) != self.meta["frames"]:
            raise PackedDataError(f"{self.root / FRAME_IDS_FILE}: {len(frame_ids)} rows, packed.json says "
                                  f"{self.meta['frames']}")
        row_of = np.full(int(frame_ids.max()) + 1, -1, np.int64)
        row_of[frame_ids] = np.arange(len(frame_ids))
        rows = row_of[self.samples[:, T]]
        if np.any(rows < 0):
            raise PackedDataError(f"{self.root}: sample frames missing from {FRAME_IDS_FILE}")
        self.normalizer = normalizer or Normalizer.from_statistics(load_packed_statistics(self.root))
        self.observation_keys = [*IMAGE_KEYS, PROPRIO_KEY]
        self._rows = torch.from_numpy(rows).to(self.device)
        self._first_rows = None  # pad_history: each sample's earliest history row
        if pad_history:
            self._first_rows = torch.from_numpy(row_of[first_frames(self.samples, episodes, windows)]).to(self.device)
        self._meta_cols = torch.from_numpy(self.samples).to(self.device)
        self._lang = None if self.lang_emb is None else torch.from_numpy(self.lang_emb).to(self.device)
        self._blocks = None  # per annotation: the block its task names (named_block.py)
        if language and SCENE_KEY in self.meta["arrays"]:
            if len(blocks) != len(self.lang_emb):
                raise PackedDataError(f"{self.root / LANG_FILE}: {len(blocks)} task names for "
                                      f"{len(self.lang_emb)} annotations")
            self._blocks = torch.from_numpy(blocks).to(self.device)
        self._negatives: tuple[torch.Tensor, torch.Tensor] | None = None
        if colour_negatives:
            self._negatives = self._embed_negatives([str(a) for a in lang["language"]["ann"]], text_encoder)
        self._arrays: dict[str, torch.Tensor] | None = None
        if self.device.type != "cpu":
            self._load()

    def _embed_negatives(self, sentences: list[str], text_encoder: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings (M, 384) of the distinct colour-swapped sentences, per annotation the row of its first
        one or -1)."""
        negatives, first = negative_table(sentences)
        if text_encoder is None:
            from dream_policy.encoders import MiniLMTextEncoder

            text_encoder = MiniLMTextEncoder()
        embeddings = text_encoder.encode(negatives).float() if negatives else torch.zeros(0, *LANG_FEATURE.shape)
        if embeddings.shape != (len(negatives), *LANG_FEATURE.shape):
            raise PackedDataError(f"{self.root}: the text encoder gave {tuple(embeddings.shape)} for "
                                  f"{len(negatives)} sentences, expected (N, {LANG_FEATURE.shape[0]}) like the data's")
        return embeddings.to(self.device), torch.tensor(first, dtype=torch.long, device=self.device)

    def _check_sizes(self, image_size: int | None, target_size: int | None) -> None:
        for name, want in (("image_size", image_size), ("target_size", target_size)):
            if want is not None and want != self.meta[name]:
                raise PackedDataError(f"{self.root}: packed with {name}={self.meta[name]}, but the model uses "
                                      f"{name}={want}; re-pack with dream-policy pack {name}={want}")

    def _load(self) -> dict[str, torch.Tensor]:
        """Every array as a tensor: memory-mapped on the CPU, copied once to another device."""
        if self._arrays is None:
            arrays = {}
            for name, spec in self.meta["arrays"].items():
                if name.startswith(("depth_", "seg_", "dynamic_")) and name not in self.target_names:
                    continue
                path = self.root / f"{name}.npy"
                try:
                    array = np.load(path, mmap_mode="r")
                except (OSError, ValueError) as e:
                    raise PackedDataError(f"{path}: unreadable ({e})") from None
                want = (self.meta["frames"], *spec["shape"])
                if array.shape != want or array.dtype != np.dtype(spec["dtype"]):
                    raise PackedDataError(f"{path}: {array.dtype} {array.shape}, packed.json says "
                                          f"{spec['dtype']} {want} (truncated or replaced?)")
                with warnings.catch_warnings():  # read-only memory map: tensors are only read
                    warnings.simplefilter("ignore", UserWarning)
                    tensor = torch.from_numpy(array)
                arrays[name] = tensor if self.device.type == "cpu" else tensor.to(self.device)
            self._arrays = arrays
        return self._arrays

    def __len__(self) -> int:
        return len(self.samples)

    @staticmethod
    def collate(batch: dict[str, Any]) -> dict[str, Any]:
        """``__getitems__`` already returns a batch: the DataLoader's collate passes it through."""
        return batch

    def __getitem__(self, index: int) -> dict[str, Any]:
        batch = self.__getitems__([index])
        return _unbatch(batch)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        arrays = self._load()
        idx = torch.as_tensor(list(indices), dtype=torch.long, device=self.device)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise IndexError(f"sample index out of range [0, {len(self)}): {indices}")
        rows = self._rows[idx]  # (B,)
        cols = self._meta_cols[idx]  # (B, 3)
        spec = self.spec
        hist = rows[:, None] + torch.arange(-spec.before, 1, device=self.device)  # (B, H)
        if self._first_rows is not None:  # frames before the annotated window: its first frame
            hist = torch.maximum(hist, self._first_rows[idx][:, None])
        history = {k: self._take(arrays[k], hist).permute(0, 1, 4, 2, 3).contiguous() for k in IMAGE_KEYS}
        history[PROPRIO_KEY] = self.normalizer.normalize_obs(self._take(arrays[PROPRIO_KEY], hist))
        acts = rows[:, None] + torch.arange(spec.chunk, device=self.device)  # (B, chunk)
        out: dict[str, Any] = {"sample_id": idx, "frame_id": cols[:, T], "episode": cols[:, EPISODE],
                               "ann_index": cols[:, ANN]}
        if self._lang is not None:
            ann = cols[:, ANN]
            if bool((ann == NO_ANN).any()):
                raise PackedDataError("a language sample without annotation index")
            out["lang_emb"] = self._lang[ann]
            if self._negatives is not None:  # one of the swapped colours, alternating with the sample index
                embeddings, first = self._negatives
                out["has_neg"] = first[ann] >= 0
                pick = first[ann].clamp(min=0) + idx % (len(COLOURS) - 1)
                out["lang_neg"] = embeddings[pick] if len(embeddings) else torch.zeros_like(out["lang_emb"])
            if self._blocks is not None:
                block = self._blocks[ann]
                out["has_block"] = block != NO_BLOCK
                out["block_offset"] = block_offsets(self._take(arrays[SCENE_KEY], rows),
                                                    self._take(arrays[PROPRIO_KEY], rows), block)
                if GROUND_SEG in arrays:  # where the named block is in the current static image
                    out["named_mask_static"] = named_block_mask(self._take(arrays[GROUND_SEG], rows), block)
        out["history"] = history
        history_acts = hist[:, :, None] + torch.arange(spec.chunk, device=self.device)  # (B, H, chunk)
        out["actions_history"] = clip_actions(self._take(arrays[ACTION_KEY], history_acts))  # (B, H, chunk, 7)
        out["actions"] = clip_actions(self._take(arrays[ACTION_KEY], acts))
        future = rows + spec.forecast_n  # depth and segmentation of the forecast frame; a dynamic
        out["targets"] = {name: self._take(arrays[name], rows if name.startswith("dynamic_") else future)
                          for name in self.target_names}  # region is stored at its first frame
        out["has_target"] = {name: torch.full((len(idx),), name in out["targets"], dtype=torch.bool,
                                              device=self.device) for name in TARGET_NAMES}
        return out

    def _take(self, array: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``array[index]`` on this dataset's device; floats as float32."""
        picked = array[index.to(array.device)].to(self.device)
        return picked.float() if picked.dtype.is_floating_point else picked

    def __getstate__(self) -> dict[str, Any]:
        """Loader workers re-open the memory maps themselves instead of receiving copies."""
        if self.device.type != "cpu":
            raise RuntimeError("a PackedWindowDataset on a GPU cannot go to DataLoader workers: use num_workers=0")
        state = self.__dict__.copy()
        state["_arrays"] = None
        return state


class PackedUnion(Dataset):
    """Several packed data sets served as one (e.g. expert demonstrations plus DAgger data): sample
    ``i`` is the first set's ``i``, then the second's, and so on. The parts must give the same
    batch layout (same history, chunk, targets) and share one normaliser."""

    def __init__(self, parts: Sequence[PackedWindowDataset]) -> None:
        super().__init__()
        if not parts:
            raise PackedDataError("a union of packed data sets needs at least one")
        first = parts[0]
        for part in parts[1:]:
            if part.spec != first.spec or part.target_names != first.target_names:
                raise PackedDataError(f"{part.root} gives {part.spec} with targets {part.target_names}, "
                                      f"{first.root} {first.spec} with {first.target_names}: pack both alike")
            if part.normalizer is not first.normalizer:
                raise PackedDataError(f"{part.root}: the parts of a union must share one normaliser")
            if (part._negatives is None) != (first._negatives is None):
                raise PackedDataError(f"{part.root}: colour negatives on some parts only")
            if (part._blocks is None) != (first._blocks is None):
                raise PackedDataError(f"{part.root}: scene_obs packed in some parts only: re-pack the older ones")
            if part.device != first.device:
                raise PackedDataError(f"{part.root} is held on {part.device}, {first.root} on {first.device}")
        self.parts = list(parts)
        self.normalizer = first.normalizer
        self.device = first.device  # where the batches are built (the trainer pins only CPU ones)
        self.offsets = np.cumsum([0] + [len(part) for part in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    collate = staticmethod(PackedWindowDataset.collate)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return _unbatch(self.__getitems__([index]))

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        idx = np.asarray(list(indices), dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"sample index out of range [0, {len(self)}): {list(indices)}")
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        batches = []
        for k in np.unique(which):
            batch = self.parts[k].__getitems__((idx[which == k] - self.offsets[k]).tolist())
            batch["sample_id"] = batch["sample_id"] + int(self.offsets[k])
            batches.append(batch)
        return _concat(batches)


def _concat(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """Batches with the same keys joined along the first dimension (nested dicts key by key)."""
    out: dict[str, Any] = {}
    for key, value in batches[0].items():
        if isinstance(value, dict):
            out[key] = _concat([b[key] for b in batches])
        else:
            out[key] = torch.cat([b[key].to(value.device) for b in batches])
    return out


def _unbatch(batch: dict[str, Any]) -> dict[str, Any]:
    """The only sample of a batch of one, with ints and bools as Python values (like the loader's)."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, dict):
            out[key] = _unbatch(value)
        elif value.dtype == torch.bool and value.ndim == 1:  # flags; masks stay tensors
            out[key] = bool(value[0])
        elif key in ("sample_id", "frame_id", "episode", "ann_index"):
            out[key] = int(value[0])
        else:
            out[key] = value[0]
    return out


# ---- CLI -----------------------------------------------------------------------------------------


def pack_command(cfg: Any) -> None:
    """``dream-policy pack data=DIR out=DIR``: pack the training and validation splits."""
    model = cfg.get("model") or {}
    image_size = int(cfg.get("image_size") or model.get("vision", {}).get("image_size", 64))
    target_size = int(cfg.get("target_size") or model.get("world", {}).get("target_size", 32))
    workers = int(cfg.get("workers") or 1)
    metas = pack_dataset(cfg["data"], cfg["out"], image_size, target_size, int(cfg["forecast_n"]), workers,
                         overwrite=bool(cfg.get("overwrite")))
    for split, meta in metas.items():
        size = sum((Path(cfg["out"]) / split / f"{n}.npy").stat().st_size for n in meta["arrays"]) / 2**20
        print(f"{split}: {meta['frames']} frames, {size:.0f} MiB, images {image_size}x{image_size}, "
              f"targets {meta['targets'] or 'none'} at {target_size}x{target_size}")
    print(f"packed to {cfg['out']}; train with: dream-policy train data={cfg['out']}")
