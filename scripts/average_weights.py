"""Average the EMA weights of checkpoints that share a model (a "model soup"), into a new checkpoint folder.

    python scripts/average_weights.py runs/a runs/b --out checkpoints/soup
    python scripts/average_weights.py runs/a runs/b runs/c --weights 2 1 1 --out checkpoints/soup

Each argument is a checkpoint folder with ``ema.safetensors``, ``config.yaml`` and ``normalization.json``
(a step folder or a run's final folder). Every floating-point tensor is averaged; the others must be equal.
The config and normalisation are copied from the last folder, and the normalisation files must agree (the
runs are fine-tunes of one model). ``checkpoints/tiny_D_query`` is the mean of two such fine-tunes.
"""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from dream_policy.checkpoint import EMA_WEIGHTS, CheckpointError, load_tensors

FILES = ("ema.safetensors", "config.yaml", "normalization.json")


def mixing_weights(weights: list[float] | None, count: int) -> list[float]:
    """The weights of a mean of ``count`` checkpoints, summing to 1 (None: equal weights)."""
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise ValueError(f"{len(weights)} weights for {count} checkpoints: give one per checkpoint")
    if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights {weights} must be finite, non-negative and not all zero")
    return [w / sum(weights) for w in weights]


def average(states: list[dict[str, torch.Tensor]], weights: list[float] | None = None) -> dict[str, torch.Tensor]:
    """The element-wise (weighted) mean of state dicts with the same keys and shapes; non-float tensors must
    be equal. ``weights`` are normalised to sum to 1 (None: equal weights)."""
    mix = mixing_weights(weights, len(states))
    keys = set(states[0])
    for k, s in enumerate(states[1:], 1):
        if set(s) != keys:
            raise ValueError(f"weights {k} differ in their tensors from weights 0: {sorted(set(s) ^ keys)[:5]}")
    out = {}
    for name, first in states[0].items():
        if any(s[name].shape != first.shape for s in states):
            raise ValueError(f"{name}: shapes differ {[tuple(s[name].shape) for s in states]}")
        if first.is_floating_point():
            out[name] = sum(w * s[name].double() for w, s in zip(mix, states)).to(first.dtype)
        elif all(torch.equal(s[name], first) for s in states):
            out[name] = first
        else:
            raise ValueError(f"{name}: a non-float tensor that differs between the weights cannot be averaged")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ckpts", nargs="+", type=Path, help="checkpoint folders to average (two or more)")
    parser.add_argument("--out", type=Path, required=True, help="the new checkpoint folder")
    parser.add_argument("--weights", type=float, nargs="+", default=None,
                        help="one weight per checkpoint, normalised to sum to 1 (default: equal)")
    args = parser.parse_args()
    if len(args.ckpts) < 2:
        raise SystemExit("average_weights: give two or more checkpoint folders")
    for folder in args.ckpts:
        missing = [f for f in FILES if not (folder / f).is_file()]
        if missing:
            raise SystemExit(f"{folder}: missing {', '.join(missing)}")
    norms = {(f / "normalization.json").read_text(encoding="utf-8") for f in args.ckpts}
    if len(norms) != 1:
        raise SystemExit("the checkpoints' normalization.json differ: they are not fine-tunes of one model")
    try:
        mix = mixing_weights(args.weights, len(args.ckpts))  # bad weights are refused before any file is read
        state = average([load_tensors(f, EMA_WEIGHTS) for f in args.ckpts], mix)
    except (ValueError, CheckpointError) as err:
        raise SystemExit(f"average_weights: {err}") from None
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} exists and is not empty: choose a new folder")
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out / "ema.safetensors"))
    for name in FILES[1:]:
        shutil.copyfile(args.ckpts[-1] / name, args.out / name)
    shown = ", ".join(f"{w:.3g}" for w in mix)
    print(f"averaged {len(args.ckpts)} checkpoints (weights {shown}; {len(state)} tensors) -> {args.out}")


if __name__ == "__main__":
    main()
