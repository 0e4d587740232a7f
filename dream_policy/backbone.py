"""GPT-2-shaped transformer over a history of DreamVLA timesteps, with the block attention mask.

The input is one token sequence per timestep laid out by a ``TokenLayout``; the backbone adds a
learned timestep (history position) embedding and a learned per-group type embedding, flattens
time into the sequence and attends under ``block_attention_mask`` (a precomputed bool buffer for
the full history; a shorter history uses its top-left block, which is the mask of that length).
``Block`` is also the transformer block of the vision encoder and the world decoders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention_mask import TokenLayout, block_attention_mask


def check_positive_ints(owner: str, **values: object) -> None:
    """Fail naming ``owner.name`` unless every value is a positive int."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{owner}.{name} must be a positive int, got {value!r}")


def check_dropout(owner: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{owner}.dropout must be in [0, 1), got {value!r}")


@dataclass
class BackboneConfig:
    width: int = 128
    depth: int = 4
    heads: int = 4
    dropout: float = 0.0
    history: int = 4  # timesteps in the window
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        check_positive_ints("BackboneConfig", width=self.width, depth=self.depth, heads=self.heads,
                            history=self.history, mlp_ratio=self.mlp_ratio)
        check_dropout("BackboneConfig", self.dropout)
        if self.width % self.heads:
            raise ValueError(f"BackboneConfig.width={self.width} must be divisible by heads={self.heads}")


class SelfAttention(nn.Module):
    """GPT-2 multi-head self-attention with an optional bool mask (True = may attend)."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"attention width={width} must be divisible by heads={heads}")
        self.heads, self.dropout = heads, dropout
        self.c_attn = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, L, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=-1)  # (B, L, C) each
        q, k, v = (z.view(B, L, self.heads, C // self.heads).transpose(1, 2) for z in (q, k, v))  # (B, nh, L, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, L, C)  # (B, L, C)
        return self.resid_drop(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, width: int, mlp_ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, mlp_ratio * width)
        self.c_proj = nn.Linear(mlp_ratio * width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LayerNorm transformer block (GPT-2 parameter names)."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, dropout)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)  # (B, L, C)
        return x + self.mlp(self.ln_2(x))


def init_gpt2_(module: nn.Module, depth: int) -> None:
    """GPT-2 initialisation: normal(0.02) linears/embeddings, residual projections scaled by depth."""
    for name, p in module.named_parameters():
        if name.endswith("c_proj.weight"):
            nn.init.normal_(p, std=0.02 / math.sqrt(2 * depth))
        elif p.dim() >= 2:  # 1-D LayerNorm weights keep their default (ones)
            nn.init.normal_(p, std=0.02)
        elif name.endswith("bias"):
            nn.init.zeros_(p)


class Backbone(nn.Module):
    """Tokens (B, T, P, D) laid out by ``layout`` per timestep -> features (B, T, P, D)."""

    def __init__(self, config: BackboneConfig, layout: TokenLayout) -> None:
        super().__init__()
        self.config, self.layout = config, layout
        group_ids = [i for i, g in enumerate(layout.groups) for _ in range(g.size)]
        self.register_buffer("group_ids", torch.tensor(group_ids), persistent=False)  # (P,)
        self.register_buffer("mask", block_attention_mask(layout, config.history), persistent=False)  # (L, L)
        self.time_emb = nn.Embedding(config.history, config.width)
        self.type_emb = nn.Embedding(len(layout.groups), config.width)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(config.width, config.heads, config.dropout, config.mlp_ratio) for _ in range(config.depth)
        )
        self.ln_f = nn.LayerNorm(config.width)
        init_gpt2_(self, config.depth)

    def attention_mask(self, steps: int) -> torch.Tensor:
        """Bool (L, L) mask for ``steps`` timesteps: the top-left block of the full-history mask."""
        if not 1 <= steps <= self.config.history:
            raise ValueError(f"steps must be in [1, history={self.config.history}], got {steps}")
        L = steps * self.layout.tokens_per_step
        return self.mask[:L, :L]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, P, D = x.shape
        if P != self.layout.tokens_per_step or D != self.config.width:
            raise ValueError(f"backbone input must be (B, T, {self.layout.tokens_per_step}, "
                             f"{self.config.width}), got {tuple(x.shape)}")
        mask = self.attention_mask(T)  # (L, L)
        time = self.time_emb(torch.arange(T, device=x.device))  # (T, D)
        x = x + time[None, :, None] + self.type_emb(self.group_ids)[None, None]  # (B, T, P, D)
        x = self.drop(x).reshape(B, T * P, D)  # (B, L, D)
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x).view(B, T, P, D)
