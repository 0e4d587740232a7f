"""Training checkpoints: one folder per saved step, written atomically, with a ``latest`` pointer.

Layout of ``<root>/step_00001000/``::

    model.safetensors     model weights (state_dict, CPU copies)
    ema.safetensors       EMA weights (only when EMA is on)
    config.yaml           the resolved run config (plain containers)
    normalization.json    the normaliser's ``to_dict()`` (or any JSON-able dict)
    trainer_state.pt      optimizer, EMA counter, RNG states, data position, global step

A save writes everything into ``<root>/.tmp-*`` and renames it into place, then rewrites
``<root>/latest`` (the folder name, replaced atomically) and prunes to the last ``keep_last``
folders, so an interrupted save leaves the previous checkpoint and pointer untouched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS = "model.safetensors"
EMA_WEIGHTS = "ema.safetensors"
CONFIG = "config.yaml"
NORMALIZATION = "normalization.json"
TRAINER_STATE = "trainer_state.pt"
LATEST = "latest"
_PREFIX, _TMP = "step_", ".tmp-"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or does not fit the model."""


@dataclass
class KeyReport:
    """How a weights file's keys compare with a model's state_dict."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    grown: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)  # missing keys that were allowed: they keep their initialisation

    def describe(self) -> str:
        lines = []
        if self.missing:
            lines.append(f"missing keys (in the model, not in the file): {self.missing}")
        if self.unexpected:
            lines.append(f"unexpected keys (in the file, not in the model): {self.unexpected}")
        for key, file_shape, model_shape in self.mismatched:
            lines.append(f"shape mismatch for {key!r}: file {file_shape} vs model {model_shape}")
        for key, file_shape, model_shape in self.grown:
            lines.append(f"grown {key!r}: file {file_shape} -> model {model_shape} (the rest keeps its initialisation)")
        return "\n  ".join(lines)


def checkpoint_name(step: int) -> str:
    return f"{_PREFIX}{step:08d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest step first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX))


def latest_checkpoint(root: str | Path) -> Path | None:
    """The folder ``<root>/latest`` points to, or None when nothing was saved yet."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    path = Path(root) / pointer.read_text().strip()
    if not path.is_dir():
        raise CheckpointError(f"{pointer} points to {path.name!r}, which does not exist")
    return path


def resolve_checkpoint(path: str | Path, root: str | Path) -> Path:
    """A checkpoint folder from a path or ``"latest"`` (looked up under ``root``)."""
    if str(path) == LATEST:
        found = latest_checkpoint(root)
        if found is None:
            raise CheckpointError(f"resume='latest' but {Path(root) / LATEST} does not exist: nothing saved")
        return found
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder {path} does not exist")
    return path


def checkpoint_folder(path: str | Path) -> Path:
    """The checkpoint folder ``path`` names: a folder holding ``config.yaml`` as it is, else what a
    ``latest`` pointer says, given the pointer itself, the checkpoints root holding it, or a training
    run's ``out_dir`` (``<out_dir>/checkpoints/latest``)."""
    path = Path(path)
    if path.is_file() and path.name == LATEST:
        found = latest_checkpoint(path.parent)
        assert found is not None
        return found
    if not path.is_dir() or (path / CONFIG).is_file():
        return path
    for root in (path, path / "checkpoints"):
        found = latest_checkpoint(root)
        if found is not None:
            return found
    return path


# ---- saving ------------------------------------------------------------------------------------


def save_checkpoint(root: str | Path, step: int, model_state: Mapping[str, torch.Tensor], *,
                    ema_state: Mapping[str, torch.Tensor] | None = None, config: Any = None,
                    normalization: Mapping[str, Any] | None = None,
                    trainer_state: Mapping[str, Any] | None = None, keep_last: int = 3) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; point ``latest`` at it; keep the last N."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(root)
    final = root / checkpoint_name(step)
    tmp = root / f"{_TMP}{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_files(tmp, model_state, ema_state, config, normalization, trainer_state)
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_text_atomic(root / LATEST, final.name)
    _prune(root, keep_last, final)
    return final


def _write_files(folder: Path, model_state: Mapping[str, torch.Tensor],
                 ema_state: Mapping[str, torch.Tensor] | None, config: Any,
                 normalization: Mapping[str, Any] | None, trainer_state: Mapping[str, Any] | None) -> None:
    save_file(_cpu_copies(model_state), str(folder / WEIGHTS), metadata={"format": "pt"})
    if ema_state is not None:
        save_file(_cpu_copies(ema_state), str(folder / EMA_WEIGHTS), metadata={"format": "pt"})
    OmegaConf.save(OmegaConf.create(_plain(config) if config is not None else {}), folder / CONFIG)
    (folder / NORMALIZATION).write_text(json.dumps(dict(normalization or {}), indent=2, default=_json_default))
    torch.save(dict(trainer_state or {}), folder / TRAINER_STATE)


def save_tensors(state: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """Write ``state`` as one safetensors file, atomically (a killed write leaves the old file as it was)."""
    path = Path(path)
    tmp = path.with_name(f"{_TMP}{path.name}-{uuid.uuid4().hex[:8]}")
    save_file(_cpu_copies(state), str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)
    return path


def _cpu_copies(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Separate contiguous CPU tensors (safetensors refuses tensors that share memory, e.g. tied weights)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def _plain(config: Any) -> Any:
    """Resolved plain containers from a dataclass, a DictConfig or a dict."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return _plain(dataclasses.asdict(config))
    if isinstance(config, (DictConfig, ListConfig)):
        return OmegaConf.to_container(config, resolve=True)
    if isinstance(config, Mapping):
        return {str(k): _plain(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [_plain(v) for v in config]
    return config


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"normalization value of type {type(value).__name__} is not JSON-serialisable")


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; an existing ``dst`` (same step saved again) is swapped out first."""
    if not dst.exists():
        os.replace(src, dst)
        return
    old = dst.with_name(f"{_TMP}old-{dst.name}-{uuid.uuid4().hex[:8]}")
    os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{_TMP}{path.name}-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _remove_stale_temps(root: Path) -> None:
    """Leftovers of saves that were killed mid-write (only rank 0 writes, so none is in progress)."""
    for p in root.glob(f"{_TMP}*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _prune(root: Path, keep_last: int, keep: Path) -> None:
    for old in list_checkpoints(root)[:-keep_last]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


# ---- loading -----------------------------------------------------------------------------------


def _file(folder_or_file: str | Path, name: str) -> Path:
    path = Path(folder_or_file)
    path = path / name if path.is_dir() else path
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    return path


def load_tensors(path: str | Path, name: str = WEIGHTS) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file (``path``: the file, or a checkpoint folder holding ``name``)."""
    file = _file(path, name)
    try:
        return load_file(str(file), device="cpu")
    except Exception as err:
        raise CheckpointError(f"{file}: not a readable safetensors file ({type(err).__name__}: {err})") from err


def compare_keys(model_state: Mapping[str, torch.Tensor], file_state: Mapping[str, torch.Tensor]) -> KeyReport:
    """Missing, unexpected and wrongly shaped keys of ``file_state`` against ``model_state``."""
    return KeyReport(
        missing=sorted(set(model_state) - set(file_state)),
        unexpected=sorted(set(file_state) - set(model_state)),
        mismatched=[(k, tuple(file_state[k].shape), tuple(v.shape)) for k, v in model_state.items()
                    if k in file_state and file_state[k].shape != v.shape],
    )


def grow_tensor(saved: torch.Tensor, initial: torch.Tensor) -> torch.Tensor | None:
    """``initial`` with its leading block replaced by ``saved``, when ``saved`` fits inside it (same
    number of dimensions, none larger); None when it does not. Fine-tuning into a larger model: e.g.
    4 resampler latents (4, C) into 16 (16, C) keeps the 4 trained ones and 12 fresh ones."""
    if saved.ndim != initial.ndim or any(s > i for s, i in zip(saved.shape, initial.shape)):
        return None
    grown = initial.clone()
    grown[tuple(slice(0, n) for n in saved.shape)] = saved.to(initial.dtype)
    return grown


def load_weights(path: str | Path, model: nn.Module, strict: bool = True, name: str = WEIGHTS,
                 grow: bool = False, allow_missing: Collection[str] = ()) -> KeyReport:
    """Copy weights from a checkpoint folder (its ``name`` file) or a safetensors file into ``model``.

    ``strict``: any missing or unexpected key is an error, except missing keys in ``allow_missing``
    (parameters a config change added; listed in ``report.fresh``). Shape mismatches are an error,
    except, with ``grow``, a saved tensor that fits inside the model's (``grow_tensor``; listed in
    ``report.grown``). The error names every offending key.
    """
    file_state = load_tensors(path, name)
    model_state = model.state_dict()
    report = compare_keys(model_state, file_state)
    allowed = set(allow_missing)
    report.fresh = [k for k in report.missing if k in allowed]
    report.missing = [k for k in report.missing if k not in allowed]
    if grow:
        still = []
        for key, file_shape, model_shape in report.mismatched:
            grown = grow_tensor(file_state[key], model_state[key])
            if grown is None:
                still.append((key, file_shape, model_shape))
            else:
                file_state[key] = grown
                report.grown.append((key, file_shape, model_shape))
        report.mismatched = still
    if report.mismatched or (strict and (report.missing or report.unexpected)):
        raise CheckpointError(f"{_file(path, name)}: weights do not fit {type(model).__name__}:\n  "
                              f"{report.describe()}")
    model.load_state_dict({k: v for k, v in file_state.items() if k not in report.unexpected}, strict=False)
    return report


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    file = _file(path, TRAINER_STATE)
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{file}: unreadable trainer state ({type(err).__name__}: {err})") from err


def load_config(path: str | Path) -> dict[str, Any]:
    file = _file(path, CONFIG)
    try:
        return OmegaConf.to_container(OmegaConf.load(file), resolve=True)  # type: ignore[return-value]
    except Exception as err:
        raise CheckpointError(f"{file}: unreadable config ({type(err).__name__}: {err})") from err


def load_normalization(path: str | Path) -> dict[str, Any]:
    file = _file(path, NORMALIZATION)
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{file}: unreadable normalization ({type(err).__name__}: {err})") from err
