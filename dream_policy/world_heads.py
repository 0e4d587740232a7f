"""World-knowledge forecasting heads (training only) and their losses.

Per dream-query kind, one small decoder (``depth`` transformer blocks over the view's dream queries
plus learned mask tokens, one mask token per output patch) forecasts the *future* frame at
``target_size`` x ``target_size``:

- dynamic: logit per pixel of the dynamic-region mask (BCE; the target is area-resized, so soft);
- depth: log depth per pixel (scale-invariant log loss, Eigen et al.; non-positive or non-finite
  target pixels are ignored);
- semantic: ``semantic="ids"``: logits over segmentation ids per pixel (cross-entropy; the simulator
  gives ids), ``semantic="features"``: a feature vector per patch (cosine loss to given features).

Targets (per view, keys as the data loader writes them) and flags::

    targets["dynamic_<view>"]  (B, H, W) bool     targets["depth_<view>"]  (B, H, W) float
    targets["seg_<view>"]      (B, H, W) int ids  targets["semfeat_<view>"] (B, F, h, w) float
    has_target[<key>]          bool or (B,) bool; without a flag, a target whose key is there counts

A kind whose targets are all absent (key missing, or every flag False) yields no loss term.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sim.cameras import SEGMENT_NAMES

from .backbone import Block, check_dropout, check_positive_ints

WORLD_KINDS = ("dynamic", "depth", "semantic")
SEMANTIC_MODES = ("ids", "features")
TARGET_PREFIX = {"dynamic": "dynamic", "depth": "depth", "semantic": "seg"}
FEATURE_PREFIX = "semfeat"


@dataclass
class WorldHeadConfig:
    width: int = 64
    heads: int = 4
    depth: int = 2  # transformer blocks per decoder
    target_size: int = 32  # forecasts are target_size x target_size
    patch: int = 8  # pixels per mask token side
    semantic: str = "ids"  # one of SEMANTIC_MODES
    num_classes: int = len(SEGMENT_NAMES)  # semantic="ids"
    feature_dim: int = 64  # semantic="features"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check_positive_ints("WorldHeadConfig", width=self.width, heads=self.heads, depth=self.depth,
                            target_size=self.target_size, patch=self.patch, num_classes=self.num_classes,
                            feature_dim=self.feature_dim)
        check_dropout("WorldHeadConfig", self.dropout)
        if self.semantic not in SEMANTIC_MODES:
            raise ValueError(f"WorldHeadConfig.semantic {self.semantic!r} is not one of {list(SEMANTIC_MODES)}")
        if self.target_size % self.patch:
            raise ValueError(f"WorldHeadConfig.target_size={self.target_size} must be divisible by "
                             f"patch={self.patch}")
        if self.width % self.heads:
            raise ValueError(f"WorldHeadConfig.width={self.width} must be divisible by heads={self.heads}")

    @property
    def grid(self) -> int:
        return self.target_size // self.patch


# ---- losses (pure; each returns one loss per sample, shape (B,)) ------------------------------


def dynamic_region_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample BCE of logits (B, H, W) against a (soft) mask target (B, H, W) in [0, 1]."""
    return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none").flatten(1).mean(1)


def scale_invariant_log_loss(pred_log: torch.Tensor, depth: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """Per-sample scale-invariant log loss mean(d^2) - lam * mean(d)^2, d = pred_log - log(depth).

    Pixels whose target depth is not finite and positive are ignored; a sample without valid
    pixels scores 0.
    """
    valid = (torch.isfinite(depth) & (depth > 0)).flatten(1)  # (B, HW)
    safe = torch.where(valid.view_as(depth), depth, torch.ones_like(depth))
    d = (pred_log - safe.log()).flatten(1) * valid  # (B, HW)
    n = valid.sum(1).clamp(min=1)  # (B,)
    return (d**2).sum(1) / n - lam * (d.sum(1) / n) ** 2


def semantic_ce_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy of logits (B, K, H, W) against segmentation ids (B, H, W)."""
    if ids.min() < 0 or ids.max() >= logits.shape[1]:
        raise ValueError(f"segmentation ids must lie in [0, {logits.shape[1]}), got "
                         f"[{int(ids.min())}, {int(ids.max())}]")
    return F.cross_entropy(logits, ids.long(), reduction="none").flatten(1).mean(1)


def cosine_feature_loss(pred: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Per-sample 1 - cosine similarity of pred (B, F, h, w) and target features (B, F, h, w)."""
    return (1 - F.cosine_similarity(pred, features.to(pred.dtype), dim=1)).flatten(1).mean(1)


def flagged_mean(per_sample: torch.Tensor, flags: torch.Tensor) -> torch.Tensor | None:
    """Mean of per_sample (N,) over the entries whose flag (N,) is True; None when none is."""
    if not bool(flags.any()):
        return None
    return per_sample[flags].mean()


def resize_target(target: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """(B, H, W) or (B, C, H, W) target -> (B, [C,] size, size) float ('nearest' keeps ids exact)."""
    x = target.float().unsqueeze(1) if target.dim() == 3 else target.float()  # (B, C, H, W)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode=mode)
    return x.squeeze(1) if target.dim() == 3 else x


# ---- decoders ---------------------------------------------------------------------------------


class WorldDecoder(nn.Module):
    """Dream queries of one view (B, Q, in_width) -> forecast (B, out_channels, S', S')."""

    def __init__(self, config: WorldHeadConfig, in_width: int, queries: int, num_views: int,
                 out_channels: int, per_pixel: bool = True) -> None:
        super().__init__()
        self.grid, self.patch, self.out_channels = config.grid, config.patch, out_channels
        self.per_pixel = per_pixel
        tokens = queries + config.grid**2
        self.in_proj = nn.Linear(in_width, config.width)
        self.mask_token = nn.Parameter(torch.randn(1, 1, config.width) * 0.02)
        self.pos_emb = nn.Parameter(torch.randn(1, tokens, config.width) * 0.02)
        self.view_emb = nn.Parameter(torch.zeros(num_views, config.width))
        self.blocks = nn.ModuleList(Block(config.width, config.heads, config.dropout) for _ in range(config.depth))
        self.ln_f = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, out_channels * (config.patch**2 if per_pixel else 1))

    def forward(self, queries: torch.Tensor, view: int) -> torch.Tensor:
        B, Q, _ = queries.shape
        masks = self.mask_token.expand(B, self.grid**2, -1)  # (B, G*G, W)
        x = torch.cat([self.in_proj(queries), masks], dim=1) + self.pos_emb + self.view_emb[view]  # (B, Q+GG, W)
        for block in self.blocks:
            x = block(x)
        out = self.head(self.ln_f(x[:, Q:]))  # (B, G*G, out * p*p) or (B, G*G, out)
        return self._unpatchify(out)

    def _unpatchify(self, out: torch.Tensor) -> torch.Tensor:
        B, G, p, C = out.shape[0], self.grid, self.patch if self.per_pixel else 1, self.out_channels
        out = out.view(B, G, G, p, p, C).permute(0, 5, 1, 3, 2, 4)  # (B, C, G, p, G, p)
        return out.reshape(B, C, G * p, G * p)


class WorldHeads(nn.Module):
    """One decoder per dream-query kind; ``forward`` returns the loss of every kind with targets."""

    def __init__(self, config: WorldHeadConfig, in_width: int, views: Sequence[str], dream_per_view: int) -> None:
        super().__init__()
        self.config, self.views, self.per_view = config, tuple(views), dream_per_view
        ids = config.semantic == "ids"
        semantic_channels = config.num_classes if ids else config.feature_dim
        channels = {"dynamic": 1, "depth": 1, "semantic": semantic_channels}
        self.decoders = nn.ModuleDict({
            kind: WorldDecoder(config, in_width, dream_per_view, len(self.views), channels[kind],
                               per_pixel=kind != "semantic" or ids)
            for kind in WORLD_KINDS})

    def target_key(self, kind: str, view: str) -> str:
        prefix = FEATURE_PREFIX if kind == "semantic" and self.config.semantic == "features" else TARGET_PREFIX[kind]
        return f"{prefix}_{view}"

    def forward(self, dream: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
                has_target: Mapping[str, object]) -> dict[str, torch.Tensor]:
        """dream {kind: (B, views * dream_per_view, D)} -> {kind: scalar loss} for kinds with targets."""
        losses = {}
        for kind in WORLD_KINDS:
            per_sample, flags = [], []
            for i, view in enumerate(self.views):
                key = self.target_key(kind, view)
                flag = _flags(has_target.get(key, True), dream[kind].shape[0], dream[kind].device)
                if key not in targets or not bool(flag.any()):
                    continue
                queries = dream[kind][:, i * self.per_view:(i + 1) * self.per_view]  # (B, Q, D)
                per_sample.append(self._loss(kind, self.decoders[kind](queries, i), targets[key]))
                flags.append(flag)
            loss = flagged_mean(torch.cat(per_sample), torch.cat(flags)) if per_sample else None
            if loss is not None:
                losses[kind] = loss
        return losses

    def _loss(self, kind: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample loss (B,) of a forecast (B, C, S, S) against a full-resolution target."""
        size = pred.shape[-1]
        if kind == "dynamic":
            return dynamic_region_loss(pred[:, 0], resize_target(target, size, "area"))
        if kind == "depth":
            return scale_invariant_log_loss(pred[:, 0], resize_target(target, size, "nearest"))
        if self.config.semantic == "ids":
            return semantic_ce_loss(pred, resize_target(target, size, "nearest").long())
        return cosine_feature_loss(pred, resize_target(target, size, "area"))


def _flags(flag: object, batch: int, device: torch.device) -> torch.Tensor:
    """A flag (bool, or (B,) bool tensor as collated by the loader) as a (B,) bool tensor."""
    flags = torch.as_tensor(flag, device=device).bool()
    return flags.expand(batch) if flags.dim() == 0 else flags.view(batch)
