"""A small DiT action head: denoises an action chunk, conditioned on action-query features.

Each block has three residual sub-blocks (self-attention, cross-attention to the condition
tokens, feed-forward), each modulated adaLN-Zero style by the timestep embedding. A sub-block's
residual increment is computed by one method, ``SubBlock.increment``, so Block-wise Adaptive
Caching can reuse increments through ``forward(..., block_hook=...)``; a hook with ``regate = True``
caches the sub-block's output before its adaLN gate instead, and the DiT multiplies whatever the hook
returns by the gate of the current timestep.

``forward`` is the training (and one-call) path. DDIM sampling goes through ``DiT.prepare_sampling``
instead: a ``DiTSampler`` computes what depends on the condition once per sampling call (condition
projection, cross-attention keys/values) and runs both classifier-free guidance branches in one batch;
what depends on the weights and step list alone (timestep embeddings, adaLN modulations: a
``StepTable``) the DiT keeps from one sampling call to the next while its weights stay the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

SUB_BLOCK_KINDS = ("attn", "cross", "ff")

# block_hook(block_index, kind, compute) -> increment (B, chunk, width); compute() gives the fresh one.
# A hook with a true ``regate`` attribute gets and returns the ungated output instead (what
# ``SubBlock.residual`` gives), and the DiT adds gate(t) * that: a reused output then follows the
# timestep's gate.
BlockHook = Callable[[int, str, Callable[[], torch.Tensor]], torch.Tensor]
Modulation = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # shift, 1 + scale, gate: (1, C) each


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
        return self.mlp(timestep_embedding(t, self.dim).to(self.mlp[0].weight.dtype))  # (B, C), the weights' dtype


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
        return self.attend(x, *self.memory_kv(memory))

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, nh, S, hs) of memory (B, S, C)."""
        B, S, C = memory.shape
        kv = self.kv(memory).view(B, S, 2, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # (2, B, nh, S, hs)
        k, v = kv.unbind(0)  # (B, nh, S, hs) each
        return k, v

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of x (B, T, C) over keys and values (B, nh, S, hs) from ``memory_kv``: (B, T, C)."""
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, nh, T, hs)
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

    def gate(self, c: torch.Tensor) -> torch.Tensor:
        """The adaLN gate (B, 1, C) for timestep embedding c (B, C), exactly as ``modulate`` gives it."""
        return self.modulation(F.silu(c)).unsqueeze(1).chunk(3, dim=-1)[2]

    def modulations(self, c_act: torch.Tensor) -> list[Modulation]:
        """Per row of SiLU(timestep embedding) c_act (K, C): (shift, 1 + scale, gate), (1, C) each."""
        shift, scale, gate = self.modulation(c_act).unsqueeze(1).chunk(3, dim=-1)  # (K, 1, C) each
        return list(zip(shift.unbind(0), (1 + scale).unbind(0), gate.unbind(0)))

    def context(self, memory: torch.Tensor) -> Any:
        """What ``residual`` needs from the condition tokens memory (B, N, C); None: nothing."""
        return None

    def residual(self, h: torch.Tensor, context: Any) -> torch.Tensor:
        """The sub-block's function (B, T, C) of the modulated input h (B, T, C), before the gate."""
        raise NotImplementedError

    def increment(self, x: torch.Tensor, c: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """The residual increment (B, T, C) this sub-block adds to x (B, T, C)."""
        h, gate = self.modulate(x, c)
        return gate * self.residual(h, self.context(memory))

    def ungated(self, x: torch.Tensor, c: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """``increment`` before the gate: (B, T, C)."""
        h, _ = self.modulate(x, c)
        return self.residual(h, self.context(memory))

    def prepared_ungated(self, x: torch.Tensor, modulation: Modulation, context: Any) -> torch.Tensor:
        """``ungated`` from a precomputed ``modulations`` entry and ``context``."""
        shift, scale1, _ = modulation
        return self.residual(torch.addcmul(shift, self.norm(x), scale1), context)  # norm(x) * scale1 + shift

    def prepared_increment(self, x: torch.Tensor, modulation: Modulation, context: Any) -> torch.Tensor:
        """``increment`` from a precomputed ``modulations`` entry and ``context``."""
        return modulation[2] * self.prepared_ungated(x, modulation, context)


class SelfAttentionBlock(SubBlock):
    def __init__(self, config: DiTConfig) -> None:
        super().__init__(config)
        self.attn = Attention(config)

    def residual(self, h: torch.Tensor, context: Any) -> torch.Tensor:
        return self.attn(h, h)


class CrossAttentionBlock(SubBlock):
    def __init__(self, config: DiTConfig) -> None:
        super().__init__(config)
        self.attn = Attention(config)

    def context(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.attn.memory_kv(memory)

    def residual(self, h: torch.Tensor, context: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.attn.attend(h, *context)


class FeedForwardBlock(SubBlock):
    def __init__(self, config: DiTConfig) -> None:
        super().__init__(config)
        self.mlp = FeedForward(config)

    def residual(self, h: torch.Tensor, context: Any) -> torch.Tensor:
        return self.mlp(h)


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

    def modulations(self, c_act: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per row of SiLU(timestep embedding) c_act (K, C): (shift, 1 + scale), (1, C) each."""
        shift, scale = self.modulation(c_act).unsqueeze(1).chunk(2, dim=-1)  # (K, 1, C) each
        return list(zip(shift.unbind(0), (1 + scale).unbind(0)))

    def prepared(self, x: torch.Tensor, modulation: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``forward`` from a precomputed ``modulations`` entry: (B, T, action_dim)."""
        shift, scale1 = modulation
        return self.out(torch.addcmul(shift, self.norm(x), scale1))  # norm(x) * scale1 + shift


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
        self._step_tables: dict[tuple[int, ...], StepTable] = {}  # see step_table
        self._step_tables_weights: tuple[tuple[int, int], ...] = ()
        self._slots: list[tuple[dict[str, Any], str]] = []  # (module._parameters, name): _parameter_slots

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
        regate = getattr(block_hook, "regate", False)
        for i, kind, sub in self.sub_blocks():
            if block_hook is None:
                h = h + sub.increment(h, c, memory)
            elif regate:
                h = h + sub.gate(c) * block_hook(i, kind, partial(sub.ungated, h, c, memory))
            else:
                h = h + block_hook(i, kind, partial(sub.increment, h, c, memory))
        return self.final(h, c)  # (B, chunk, action_dim)

    def prepare_sampling(
        self,
        cond: torch.Tensor | None,
        timesteps: Sequence[int],
        batch_size: int,
        guided: bool,
        block_hook: BlockHook | None = None,
    ) -> DiTSampler:
        """A ``DiTSampler`` for one DDIM call over ``timesteps`` (the ``ddim_sample`` protocol).

        ``cond`` (B, N, D) or None (the null condition); ``guided`` adds the unconditional branch as rows
        B..2B-1 of every call.
        """
        return DiTSampler(self, cond, timesteps, batch_size, guided, block_hook)

    def sub_blocks(self) -> list[tuple[int, str, SubBlock]]:
        """(block index, kind, sub-block) for every sub-block, in execution order."""
        return [(i, kind, sub) for i, block in enumerate(self.blocks) for kind, sub in block.sub_blocks()]

    def step_table(self, timesteps: Sequence[int]) -> StepTable:
        """The ``StepTable`` for ``timesteps``: under no_grad kept for the next call until a parameter
        changes (in place: its version counter moves; or replaced: its storage moves)."""
        if torch.is_grad_enabled():
            return build_step_table(self, timesteps)
        weights = tuple((p.data_ptr(), p._version) for p in self._parameter_slots())
        if weights != self._step_tables_weights:
            self._step_tables_weights, self._step_tables = weights, {}
        key = tuple(int(t) for t in timesteps)
        table = self._step_tables.get(key)
        if table is None:
            table = self._step_tables[key] = build_step_table(self, key)
        return table

    def _parameter_slots(self) -> list[torch.Tensor]:
        """The parameters a ``StepTable`` is made of (timestep embedder, adaLN modulations), read from their
        modules' slots: walking the module tree each call would cost about a millisecond, and a slot shows a
        parameter that was replaced."""
        if not self._slots:
            modules = [self.time_embed, self.final.modulation, *(sub.modulation for _, _, sub in self.sub_blocks())]
            self._slots = [(m._parameters, name) for module in modules for m in module.modules()
                           for name, p in m._parameters.items() if p is not None]
        return [slots[name] for slots, name in self._slots]

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


@dataclass(frozen=True)
class StepTable:
    """What DDIM sampling over one step list needs that depends on the weights alone: per sub-block (in
    ``DiTSampler.sub_blocks`` order) and step its adaLN modulation, and per step the final layer's."""

    timesteps: tuple[int, ...]
    modulations: tuple[tuple[Modulation, ...], ...]  # [sub-block][step]
    final: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # [step]: (shift, 1 + scale)


def build_step_table(dit: DiT, timesteps: Sequence[int]) -> StepTable:
    """The ``StepTable`` of ``dit`` for ``timesteps`` (computed; ``DiT.step_table`` caches it)."""
    steps = tuple(int(t) for t in timesteps)
    device = dit.action_pos.device
    c_act = F.silu(dit.time_embed(torch.tensor(steps, dtype=torch.long, device=device)))  # (K, C)
    modulations = tuple(tuple(sub.modulations(c_act)) for _, _, sub in dit.sub_blocks())
    return StepTable(steps, modulations, tuple(dit.final.modulations(c_act)))


class DiTSampler:
    """The DiT prepared for one DDIM sampling call: ``sampler(i, x)`` is the noise predicted at step ``i``.

    Computed once here instead of at every step: the condition tokens' projection and each
    cross-attention's keys and values over them; the timestep embeddings and every adaLN modulation of the
    step list come from ``DiT.step_table``, computed once per step list and weights. With ``guided`` both
    guidance branches run in one call of 2B rows, conditional first: ``sampler(i, x)`` (B, chunk, A) gives
    (2B, chunk, A), and a block hook sees increments (2B, chunk, C).
    """

    def __init__(
        self,
        dit: DiT,
        cond: torch.Tensor | None,
        timesteps: Sequence[int],
        batch_size: int,
        guided: bool,
        block_hook: BlockHook | None = None,
    ) -> None:
        cfg = dit.config
        if guided and cond is None:
            raise ValueError("guided sampling needs a condition")
        if cond is not None and cond.shape != (batch_size, cfg.cond_tokens, cfg.cond_dim):
            raise ValueError(f"cond must be ({batch_size}, {cfg.cond_tokens}, {cfg.cond_dim}), "
                             f"got {tuple(cond.shape)}")
        self.dit, self.guided, self.block_hook = dit, guided, block_hook
        self.x_shape = (batch_size, cfg.chunk, cfg.action_dim)
        memory = dit.cond_in(self._condition_rows(cond, batch_size)) + dit.cond_pos  # (rows, N, C)
        self.table = dit.step_table(timesteps)
        # (block, kind, sub-block, its context, its modulation per step)
        self.sub_blocks = [(i, kind, sub, sub.context(memory), mods)
                           for (i, kind, sub), mods in zip(dit.sub_blocks(), self.table.modulations)]
        self.num_steps = len(self.table.timesteps)
        self.regate = bool(getattr(block_hook, "regate", False))

    def _condition_rows(self, cond: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        """(rows, N, D): cond, then the null condition when guided; the null condition alone for no cond."""
        null = self.dit.null_cond.expand(batch_size, -1, -1)
        if cond is None:
            return null
        return torch.cat([cond, null.to(cond.dtype)]) if self.guided else cond

    def __call__(self, step: int, x: torch.Tensor) -> torch.Tensor:
        """Predicted noise at DDIM step index ``step`` for x (B, chunk, A): (B or 2B if guided, chunk, A)."""
        if x.shape != self.x_shape:
            raise ValueError(f"x must be {self.x_shape}, got {tuple(x.shape)}")
        if not 0 <= step < self.num_steps:
            raise ValueError(f"step must be in [0, {self.num_steps}), got {step}")
        h = self.dit.action_in(x) + self.dit.action_pos  # (B, chunk, C)
        if self.guided:
            h = torch.cat([h, h])  # (2B, chunk, C): both branches denoise the same x
        hook = self.block_hook
        for i, kind, sub, context, mods in self.sub_blocks:
            modulation = mods[step]
            if hook is None:
                h = h + sub.prepared_increment(h, modulation, context)
            elif self.regate:
                h = h + modulation[2] * hook(i, kind, partial(sub.prepared_ungated, h, modulation, context))
            else:
                h = h + hook(i, kind, partial(sub.prepared_increment, h, modulation, context))
        return self.dit.final.prepared(h, self.table.final[step])  # (rows, chunk, A)
