"""GPT-2-shaped transformer over a history of DreamVLA timesteps, with the block attention mask.

The input is one token sequence per timestep laid out by a ``TokenLayout``; the backbone adds a
learned timestep (history position) embedding and a learned per-group type embedding, flattens
time into the sequence and attends under ``block_attention_mask`` (a precomputed bool buffer for
the full history; a shorter history uses its top-left block, which is the mask of that length).
``Block`` is also the transformer block of the vision encoder and the world decoders.

Streaming variant (``BackboneConfig.streaming``): no position embedding; queries and keys are rotated
by their timestep (rotary embedding, so attention depends on time differences only), and a timestep
attends to the context of the ``window - 1`` timesteps before it only. A new timestep then needs only
the keys and values of the context tokens of the previous ``window - 1`` timesteps per layer
(``StreamCache``; nobody attends to an earlier timestep's query tokens): ``Backbone.step`` computes
just the new timestep, exactly what ``forward`` over the last ``receptive_field`` timesteps gives it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention_mask import CONTEXT, TokenLayout, block_attention_mask


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
    streaming: bool = False  # rotary time encoding + sliding window: exact key/value caching at run time
    window: int | None = None  # streaming: timesteps a timestep attends to, itself included (None: history)

    def __post_init__(self) -> None:
        check_positive_ints("BackboneConfig", width=self.width, depth=self.depth, heads=self.heads,
                            history=self.history, mlp_ratio=self.mlp_ratio)
        check_dropout("BackboneConfig", self.dropout)
        if self.width % self.heads:
            raise ValueError(f"BackboneConfig.width={self.width} must be divisible by heads={self.heads}")
        if self.window is not None and not self.streaming:
            raise ValueError("BackboneConfig.window only applies with streaming=true")
        if self.streaming:
            if self.window is None:
                self.window = self.history
            check_positive_ints("BackboneConfig", window=self.window)
            if (self.width // self.heads) % 2:
                raise ValueError(f"BackboneConfig: streaming needs an even head width, got {self.width // self.heads}")
            if self.history < self.receptive_field:
                raise ValueError(
                    f"BackboneConfig: streaming with depth={self.depth} and window={self.window} sees "
                    f"{self.receptive_field} timesteps back; history={self.history} must be at least that, so "
                    "training windows hold the whole context a streamed timestep has")

    @property
    def receptive_field(self) -> int:
        """Timesteps the last one depends on (streaming: depth * (window - 1) + 1; else history)."""
        return self.depth * (self.window - 1) + 1 if self.streaming else self.history


def rotate(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary embedding: (B, nh, L, hs) rotated by ``positions`` (L,) (pairs of channels, half-split)."""
    half = x.shape[-1] // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)  # (hs/2,)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None]  # (L, hs/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


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

    def qkv(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Queries, keys, values (B, nh, L, hs); rotated by ``positions`` (L,) when given."""
        B, L, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=-1)  # (B, L, C) each
        q, k, v = (z.view(B, L, self.heads, C // self.heads).transpose(1, 2) for z in (q, k, v))  # (B, nh, L, hs)
        if positions is not None:
            q, k = rotate(q, positions), rotate(k, positions)
        return q, k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        B, _, L, _ = q.shape
        y = y.transpose(1, 2).reshape(B, L, -1)  # (B, L, C)
        return self.resid_drop(self.c_proj(y))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        return self.attend(*self.qkv(x, positions), mask)


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

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask, positions)  # (B, L, C)
        return x + self.mlp(self.ln_2(x))

    def step(self, x: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
             past: tuple[torch.Tensor, torch.Tensor] | None, keep: torch.Tensor
             ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One new timestep x (B, P, C) attending to cached keys/values ``past`` (B, nh, n, hs) and to
        itself; returns its output and the keys/values of its tokens ``keep`` (its context) to cache."""
        q, k, v = self.attn.qkv(self.ln_1(x), positions)
        keys, values = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))
        x = x + self.attn.attend(q, keys, values, mask)
        return x + self.mlp(self.ln_2(x)), (k[:, :, keep], v[:, :, keep])


def init_gpt2_(module: nn.Module, depth: int) -> None:
    """GPT-2 initialisation: normal(0.02) linears/embeddings, residual projections scaled by depth."""
    for name, p in module.named_parameters():
        if name.endswith("c_proj.weight"):
            nn.init.normal_(p, std=0.02 / math.sqrt(2 * depth))
        elif p.dim() >= 2:  # 1-D LayerNorm weights keep their default (ones)
            nn.init.normal_(p, std=0.02)
        elif name.endswith("bias"):
            nn.init.zeros_(p)


class StreamCache:
    """Per layer, the keys and values of the context tokens of the last ``window - 1`` timesteps, and
    the number of timesteps streamed so far (the next one's rotary position)."""

    def __init__(self, depth: int) -> None:
        self.layers: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(depth)]
        self.steps = 0

    def past(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        frames = self.layers[layer]
        if not frames:
            return None
        return torch.cat([k for k, _ in frames], 2), torch.cat([v for _, v in frames], 2)


class Backbone(nn.Module):
    """Tokens (B, T, P, D) laid out by ``layout`` per timestep -> features (B, T, P, D)."""

    def __init__(self, config: BackboneConfig, layout: TokenLayout) -> None:
        super().__init__()
        self.config, self.layout = config, layout
        group_ids = [i for i, g in enumerate(layout.groups) for _ in range(g.size)]
        self.register_buffer("group_ids", torch.tensor(group_ids), persistent=False)  # (P,)
        window = config.window if config.streaming else None
        self.register_buffer("mask", block_attention_mask(layout, config.history, window=window),
                             persistent=False)  # (L, L)
        self.time_emb = None if config.streaming else nn.Embedding(config.history, config.width)
        roles = layout.roles()
        self.register_buffer("context", torch.tensor([r == CONTEXT for r in roles]), persistent=False)  # (P,)
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
        x = x + self.type_emb(self.group_ids)[None, None]  # (B, T, P, D)
        positions = None
        if self.time_emb is not None:
            x = x + self.time_emb(torch.arange(T, device=x.device))[None, :, None]
        else:  # streaming: every token of timestep t is rotated by t
            positions = torch.arange(T, device=x.device).repeat_interleave(P)  # (L,)
        x = self.drop(x).reshape(B, T * P, D)  # (B, L, D)
        for block in self.blocks:
            x = block(x, mask, positions)
        return self.ln_f(x).view(B, T, P, D)

    @torch.no_grad()
    def step(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        """Streaming only: one new timestep's tokens (B, P, D) -> its features (B, P, D), using and
        updating ``cache``; equal to the last timestep of ``forward`` over the last receptive_field
        timesteps (or over all of them, when fewer were streamed)."""
        if not self.config.streaming:
            raise RuntimeError("Backbone.step needs a streaming backbone (BackboneConfig.streaming=true)")
        _, P, D = x.shape
        if P != self.layout.tokens_per_step or D != self.config.width:
            raise ValueError(f"step input must be (B, {self.layout.tokens_per_step}, {self.config.width}), "
                             f"got {tuple(x.shape)}")
        past_steps = len(cache.layers[0])
        own = block_attention_mask(self.layout, 1, device=x.device)  # (P, P)
        mask = torch.cat([own.new_ones(P, past_steps * int(self.context.sum())), own], dim=1)
        positions = torch.full((P,), cache.steps, device=x.device)
        x = self.drop(x + self.type_emb(self.group_ids)[None])
        for i, block in enumerate(self.blocks):
            x, kv = block.step(x, mask, positions, cache.past(i), self.context)
            cache.layers[i] = (cache.layers[i] + [kv])[-(self.config.window - 1):] if self.config.window > 1 else []
        cache.steps += 1
        return self.ln_f(x)
