"""``dream-policy train``: the DreamVLA model, the streaming CALVIN loader and the generic trainer,
wired from one Hydra config (``configs/train.yaml``). Multi-GPU: ``torchrun --nproc_per_node=N
-m dream_policy train ...`` (the trainer joins the process group; datasets shard by rank)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch


def has_episodes(split: Path) -> bool:
    """Whether ``split`` is a split folder with at least one episode (a data set too small for a
    validation episode may hold an empty validation/; training then runs without validation)."""
    ids = split / "ep_start_end_ids.npy"
    if not ids.is_file():
        return False
    if np.load(ids).size:
        return True
    print(f"note: {split} holds no episode; training without validation")
    return False


def data_roots(data: Any) -> list[Path]:
    """``data=DIR`` or, for packed data, ``data=[DIR,DIR,...]`` (their samples pooled)."""
    if isinstance(data, (str, Path)):
        return [Path(data)]
    roots = [Path(str(d)) for d in data]
    if not roots:
        raise ValueError("data=[] names no data set")
    return roots


def _packed_datasets(cfg: Mapping[str, Any], roots: list[Path], model_cfg: Any, device: torch.device,
                     normalizer: Any = None) -> tuple[Any, Any, Any]:
    """Datasets from packed copies (``dream-policy pack``), on the training device when it is a GPU
    and ``data_device`` is auto (every batch is then a few gathers on the GPU). Several roots are
    pooled (``PackedUnion``) and normalised with ``normalizer`` or the first root's statistics."""
    from dream_policy.data.packed import PackedUnion, PackedWindowDataset

    where = str(cfg.get("data_device") or "auto")
    if where not in ("auto", "cpu"):
        raise ValueError(f"data_device must be 'auto' or 'cpu', got {where!r}")
    common = {"history": model_cfg.backbone.history, "chunk": model_cfg.chunk, "forecast_n": int(cfg["forecast_n"]),
              "device": device if where == "auto" else "cpu", "image_size": model_cfg.vision.image_size,
              "target_size": model_cfg.world.target_size}
    train_parts, val_parts = [], []
    for root in roots:
        train_parts.append(PackedWindowDataset(
            root, "training", normalizer=normalizer, start_repeat=int(cfg.get("start_repeat", 1)),
            start_frames=int(cfg.get("start_frames", 15)), pad_history=bool(cfg.get("pad_history", False)),
            colour_negatives=model_cfg.colour_weight > 0, **common))
        normalizer = train_parts[0].normalizer
        if has_episodes(root / "validation"):
            val_parts.append(PackedWindowDataset(root, "validation", normalizer=normalizer,
                                                 colour_negatives=model_cfg.colour_weight > 0, **common))
    if len(roots) > 1:
        say("pooled: " + ", ".join(f"{root} ({len(part)} samples)" for root, part in zip(roots, train_parts)))
    train = train_parts[0] if len(train_parts) == 1 else PackedUnion(train_parts)
    val = None if not val_parts else val_parts[0] if len(val_parts) == 1 else PackedUnion(val_parts)
    return train, val, normalizer


def say(message: str) -> None:
    """Print once per run: on the first process of a torchrun group (``RANK`` 0) or a plain run."""
    if os.environ.get("RANK", "0") == "0":
        print(message)


def _datasets(cfg: Mapping[str, Any], model_cfg: Any, normalizer: Any = None) -> tuple[Any, Any, Any]:
    """Training and validation sets (validation None when the split is empty) and the normaliser
    (``normalizer``, e.g. a fine-tuned checkpoint's, or the training split's statistics)."""
    from dream_policy.data.loader import CalvinWindowDataset
    from dream_policy.data.packed import is_packed
    from dream_policy.trainer import init_distributed

    ctx = init_distributed()
    rank, world = ctx.rank, ctx.world_size
    roots = data_roots(cfg["data"])
    if all(is_packed(r) for r in roots):
        return _packed_datasets(cfg, roots, model_cfg, ctx.device, normalizer)
    if len(roots) > 1:
        raise ValueError(f"data={[str(r) for r in roots]}: several data sets must all be packed "
                         f"(dream-policy pack data=DIR out=...)")
    root = roots[0]
    if int(cfg.get("start_repeat", 1)) != 1 or cfg.get("pad_history") or model_cfg.colour_weight > 0:
        raise ValueError(f"start_repeat={cfg.get('start_repeat', 1)}, pad_history={cfg.get('pad_history', False)}, "
                         f"colour_weight={model_cfg.colour_weight} need packed data "
                         f"(dream-policy pack data={root} out=...)")
    history, chunk = model_cfg.backbone.history, model_cfg.chunk
    common = {"history": history, "chunk": chunk, "forecast_n": int(cfg["forecast_n"]), "rank": rank,
              "world_size": world, "seed": int(cfg["trainer"]["seed"]), "shuffle_buffer": cfg.get("shuffle_buffer")}
    stats = Path(cfg["trainer"]["out_dir"]) / "normalization_stats.json"
    stats.parent.mkdir(parents=True, exist_ok=True)
    train = CalvinWindowDataset(root, "training", stats_path=stats, stats_stride=int(cfg["stats_stride"]),
                                normalizer=normalizer, **common)
    val = None
    if has_episodes(root / "validation"):
        val = CalvinWindowDataset(root, "validation", normalizer=train.normalizer, **{**common, "shuffle_buffer": None})
    return train, val, train.normalizer


def initial_model(init: str | Path, changes: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
    """Fine-tuning: checkpoint ``init``'s network (its model config with ``changes`` merged in, EMA
    weights; tensors a change enlarged keep the saved part) and the normaliser it was trained with."""
    from dream_policy.checkpoint import load_normalization
    from dream_policy.data.normalization import Normalizer
    from dream_policy.model import DreamVLA

    network = DreamVLA.from_checkpoint(init, grow=True, **dict(changes or {}))
    return network, Normalizer.from_dict(load_normalization(init))


def data_statistics(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The statistics of the first data root's training split (packed or not), as its loader reads them."""
    from dream_policy.data.normalization import load_or_compute_statistics
    from dream_policy.data.packed import is_packed, load_packed_statistics

    root = data_roots(cfg["data"])[0]
    if is_packed(root):
        return load_packed_statistics(root / "training")
    stats = Path(cfg["trainer"]["out_dir"]) / "normalization_stats.json"
    stats.parent.mkdir(parents=True, exist_ok=True)
    return load_or_compute_statistics(root / "training", stats, int(cfg.get("stats_stride", 1)))


def train_command(cfg: Mapping[str, Any]) -> None:
    """CLI: build the model and data from ``cfg`` and train (or resume)."""
    from omegaconf import OmegaConf

    from dream_policy.model import DreamVLA, DreamVLAConfig, load_model_config
    from dream_policy.trainer import Trainer, TrainerConfig

    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg["torch_threads"]))
    init, normalizer = cfg.get("init"), None
    if init:  # fine-tuning: the checkpoint's architecture, weights and normalisation
        changes = cfg.get("init_model") or {}
        if OmegaConf.is_config(changes):
            changes = OmegaConf.to_container(changes, resolve=True)
        network, normalizer = initial_model(init, changes)
        model_cfg = network.config
        say(f"fine-tuning {init} (its model config and normalisation; the 'model' group is not used)"
            + (f"; changed: {changes}" if changes else ""))
        for key in network.grown:
            say(f"  {key}: saved values kept in the leading part, the rest newly initialised")
        for key in network.fresh:
            say(f"  {key}: added by the change, starts from its initialisation")
        if cfg.get("wrap_angles") and not normalizer.angle_dims:
            normalizer = normalizer.with_angles(data_statistics(cfg))
            say(f"  angles {list(normalizer.angle_dims)} of robot_obs now measured circularly (wrap_angles=true)")
    else:
        model = cfg["model"]
        if isinstance(model, str):  # a plain mapping (tests, scripts) may still name the config
            model_cfg = load_model_config(model)
        else:
            plain = OmegaConf.to_container(model, resolve=True) if OmegaConf.is_config(model) else dict(model)
            model_cfg = DreamVLAConfig.from_dict(plain)
        network = DreamVLA(model_cfg)
    train, val, normalizer = _datasets(cfg, model_cfg, normalizer)
    if model_cfg.block_weight > 0 and not all(getattr(part, "_blocks", None) is not None
                                              for part in getattr(train, "parts", [train])):
        raise ValueError(f"block_weight={model_cfg.block_weight} needs the named block's position: packed data "
                         f"packed with scene_obs (simulated data; dream-policy pack data=... out=...)")
    if model_cfg.ground_weight > 0 and not all(getattr(part, "_blocks", None) is not None and "seg_static" in
                                               part.target_names for part in getattr(train, "parts", [train])):
        raise ValueError(f"ground_weight={model_cfg.ground_weight} needs where the named block is in the image: "
                         "packed data with scene_obs and the world targets (forecast_n > 0)")
    trainer_cfg = TrainerConfig.from_dict(OmegaConf.to_container(cfg["trainer"], resolve=True))
    full = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    full["model_config"] = model_cfg.to_dict()
    trainer = Trainer(network, train, val, trainer_cfg, normalization=normalizer.to_dict(),
                      full_config=full, resume=cfg.get("resume"))
    trainer.fit()
    trainer.close()
    say(f"trained to step {trainer.global_step} of {trainer_cfg.total_steps}; last checkpoint: {trainer.last_checkpoint}")
    say(f"metrics: {Path(trainer_cfg.out_dir) / 'metrics.csv'}, plot: {Path(trainer_cfg.out_dir) / 'loss.png'}")
