"""A small DiT action head: denoises an action chunk, conditioned on action-query features.

Each block has three residual sub-blocks (self-attention, cross-attention to the condition
tokens, feed-forward), each modulated adaLN-Zero style by the timestep embedding. A sub-block's
residual increment is computed by one method, ``SubBlock.increment``, so Block-wise Adaptive
Caching can reuse increments through ``forward(..., block_hook=...)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

SUB_BLOCK_KINDS = ("attn", "cross", "ff")

# block_hook(block_index, kind, compute) -> increment (B, chunk, width); compute() gives the fresh one.
BlockHook = Callable[[int, str, Callable[[], torch.Tensor]], torch.Tensor]


@dataclass
class DiTConfig:
    action_dim: int = 7
    chunk: int = 3  # actions per predicted chunk
    width: int = 128
    depth: int = 4  # number of blocks
    heads: int = 4
    cond_dim: int = 128  # width of the condition tokens (the backbone's action-query features)
    cond_tokens: int = 3  # condition tokens per sample (action queries)
    mlp_ratio: int = 4
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in (f.name for f in fields(self) if f.name != "dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DiTConfig.{name} must be a positive int, got {value!r}")
        if self.width % self.heads:
            raise ValueError(f"DiTConfig.width={self.width} must be divisible by heads={self.heads}")
        if self.width % 2:
            raise ValueError(f"DiTConfig.width={self.width} must be even (sinusoidal timestep embedding)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DiTConfig.dropout must be in [0, 1), got {self.dropout!r}")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B, dim) of (possibly fractional) timesteps t (B,)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)  # (half,)
    angles = t.float()[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.dim = config.width
        self.mlp = nn.Sequential(
            nn.Linear(config.width, config.width), nn.SiLU(), nn.Linear(config.width, config.width)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.dim))  # (B, C)


class Attention(nn.Module):
    """Multi-head attention of x over memory (memory = x for self-attention)."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.dropout = config.dropout
        self.q = nn.Linear(config.width, config.width)
        self.kv = nn.Linear(config.width, 2 * config.width)
        self.proj = nn.Linear(config.width, config.width)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        S = memory.shape[1]
        q = self.q(x).view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, nh, T, hs)
        k, v = self.kv(memory).split(C, dim=-1)  # (B, S, C) each
        k = k.view(B, S, self.heads, C // self.heads).transpose(1, 2)  # (B, nh, S, hs)
        v = v.view(B, S, self.heads, C // self.heads).transpose(1, 2)  # (B, nh, S, hs)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.proj(y)


class FeedForward(nn.Module):
    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        hidden = config.mlp_ratio * config.width
        self.fc = nn.Linear(config.width, hidden)
        self.proj = nn.Linear(hidden, config.width)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class SubBlock(nn.Module):
    """adaLN-Zero frame of one residual sub-block: norm, shift/scale by the timestep, gate."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(config.width, 3 * config.width)  # zero-initialised: starts as identity

    def modulate(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised, modulated x (B, T, C) and the gate (B, 1, C) from timestep embedding c (B, C)."""
        shift, scale, gate = self.modulation(F.silu(c)).unsqueeze(1).chunk(3, dim=-1)  # (B, 1, C) each
        return self.norm(x) * (1 + scale) + shift, gate

    def increment(self, x: torch.Tensor, c: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """The residual increment (B, T, C) this sub-block adds to x (B, T, C)."""
        raise NotImplementedError


class SelfAttentionBlock(SubBlock):
    def __init__(self, config: DiTConfig) -> None:
        super().__init__(config)
        self.attn = Attention(config)

    def increment(self, x: torch.Tensor, c: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        h, gate = self.modulate(x, c)
        return gate * self.attn(h, h)


class CrossAttentionBlock(SubBlock):
    def __init__(self, config: DiTConfig) -> None:
        super().__init__(config)
        self.attn = Attention(config)

    def increment(self, x: torch.Tensor, c: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        h, gate = self.modulate(x, c)
        return gate * self.attn(h, memory)


class FeedForwardBlock(SubBlock):
    def __init__(self, config: DiTConfig) -> None:
        super().__init__(config)
        self.mlp = FeedForward(config)

    def increment(self, x: torch.Tensor, c: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        h, gate = self.modulate(x, c)
        return gate * self.mlp(h)


class DiTBlock(nn.Module):
    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.attn = SelfAttentionBlock(config)
        self.cross = CrossAttentionBlock(config)
        self.ff = FeedForwardBlock(config)

    def sub_blocks(self) -> tuple[tuple[str, SubBlock], ...]:
        """(kind, sub-block) in execution order; kinds are ``SUB_BLOCK_KINDS``."""
        return tuple((kind, getattr(self, kind)) for kind in SUB_BLOCK_KINDS)


class FinalLayer(nn.Module):
    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(config.width, 2 * config.width)
        self.out = nn.Linear(config.width, config.action_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(F.silu(c)).unsqueeze(1).chunk(2, dim=-1)  # (B, 1, C) each
        return self.out(self.norm(x) * (1 + scale) + shift)  # (B, T, action_dim)


class DiT(nn.Module):
    """Predicts the noise in a noisy action chunk given the timestep and condition tokens."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        self.action_in = nn.Linear(config.action_dim, config.width)
        self.action_pos = nn.Parameter(torch.zeros(1, config.chunk, config.width))
        self.time_embed = TimestepEmbedder(config)
        self.cond_in = nn.Linear(config.cond_dim, config.width)
        self.cond_pos = nn.Parameter(torch.zeros(1, config.cond_tokens, config.width))
        self.null_cond = nn.Parameter(torch.zeros(1, config.cond_tokens, config.cond_dim))
        self.blocks = nn.ModuleList(DiTBlock(config) for _ in range(config.depth))
        self.final = FinalLayer(config)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's initialisation: xavier linears, adaLN modulations and output layer at zero."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for p in (self.action_pos, self.cond_pos, self.null_cond):
            nn.init.normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, (SubBlock, FinalLayer)):
                nn.init.zeros_(m.modulation.weight)
                nn.init.zeros_(m.modulation.bias)
        nn.init.zeros_(self.final.out.weight)
        nn.init.zeros_(self.final.out.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def mask_condition(self, cond: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """cond (B, N, D) with the samples where drop (B,) is True replaced by the null condition."""
        if drop.dtype != torch.bool or drop.shape != cond.shape[:1]:
            raise ValueError(
                f"drop must be bool (B,) = ({cond.shape[0]},), got {drop.dtype} {tuple(drop.shape)}"
            )
        return torch.where(drop[:, None, None], self.null_cond.to(cond.dtype), cond)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None,
        block_hook: BlockHook | None = None,
    ) -> torch.Tensor:
        """Noise (B, chunk, action_dim) predicted from x (B, chunk, action_dim), t (B,), cond (B, N, D).

        ``cond=None`` uses the learned null condition (the unconditional branch of guidance).
        """
        self._check_inputs(x, t, cond)
        B = x.shape[0]
        if cond is None:
            cond = self.null_cond.expand(B, -1, -1)
        c = self.time_embed(t)  # (B, C)
        memory = self.cond_in(cond) + self.cond_pos  # (B, N, C)
        h = self.action_in(x) + self.action_pos  # (B, chunk, C)
        for i, block in enumerate(self.blocks):
            for kind, sub in block.sub_blocks():
                if block_hook is None:
                    h = h + sub.increment(h, c, memory)
                else:
                    h = h + block_hook(i, kind, partial(sub.increment, h, c, memory))
        return self.final(h, c)  # (B, chunk, action_dim)

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> None:
        cfg = self.config
        if x.dim() != 3 or x.shape[1:] != (cfg.chunk, cfg.action_dim):
            raise ValueError(f"x must be (B, {cfg.chunk}, {cfg.action_dim}), got {tuple(x.shape)}")
        if t.shape != x.shape[:1]:
            raise ValueError(f"t must be (B,) = ({x.shape[0]},), got {tuple(t.shape)}")
        if cond is not None and cond.shape != (x.shape[0], cfg.cond_tokens, cfg.cond_dim):
            raise ValueError(
                f"cond must be (B, {cfg.cond_tokens}, {cfg.cond_dim}) = "
                f"({x.shape[0]}, {cfg.cond_tokens}, {cfg.cond_dim}) or None, got {tuple(cond.shape)}"
            )
