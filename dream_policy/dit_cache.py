"""Running the DiT head under a BAC schedule, and recording its sub-block outputs for calibration.

Both are ``block_hook``s for the DiT (``dream_policy/dit.py``) driven by the DDIM loop's ``on_step``:
``CachedBlocks`` recomputes a sub-block's residual increment only at its update steps and otherwise
returns the value cached at the last update (with the schedule's ``reuse="regate"`` the output before
the adaLN gate, which the DiT multiplies by the current step's gate; with ``"increment"`` the increment); ``BlockRecorder`` computes every increment and keeps a
copy per step. Each classifier-free guidance branch (with and without the condition) has its own
cache entries: sampling runs both branches in one batched DiT call (``DiTSampler``), whose increments
hold the conditional rows then the unconditional ones, so one cache entry holds both branches' rows and
the branches share the schedule; a DiT call per branch (``HookedDiT.__call__``) caches each branch apart.
``load_head`` reads the distilled DiT a schedule may name (``CacheSchedule.head``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch

from dream_policy.bac import BlockKey, CacheSchedule
from dream_policy.dit import DiT, DiTSampler

Branch = int  # 0: conditional rows, 1: unconditional rows (guidance)
Branches = tuple[Branch, ...]  # the branches whose rows one DiT call holds, in row order


class CachedBlocks:
    """A block hook that follows ``schedule``; ``computed`` / ``reused`` count sub-block evaluations
    (per guidance branch: a batched call of both branches counts two)."""

    def __init__(self, schedule: CacheSchedule) -> None:
        self.schedule = schedule
        self._updates = {key: schedule.updates(key) for key in schedule.steps}
        # the sub-blocks that reuse their cached increment at each step (beyond the schedule: all of them)
        self._reuse_at = [frozenset(key for key, updates in self._updates.items() if step not in updates)
                          for step in range(schedule.num_steps)]
        self._reuse_beyond = frozenset(self._updates)
        self._reuse_now: frozenset[BlockKey] = frozenset()
        self.regate = schedule.reuse == "regate"  # read by the DiT: cache ungated outputs
        self.step = 0
        self.branches: Branches = (0,)
        self.cache: dict[tuple[Branches, int, str], torch.Tensor] = {}
        self.computed = self.reused = 0

    def start_step(self, index: int, _t: int) -> None:
        self.step = index
        self._reuse_now = self._reuse_at[index] if 0 <= index < len(self._reuse_at) else self._reuse_beyond

    def __call__(self, block: int, kind: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        key = (self.branches, block, kind)
        if (block, kind) in self._reuse_now:
            value = self.cache.get(key)
            if value is not None:
                self.reused += len(self.branches)
                return value
        self.cache[key] = value = compute()
        self.computed += len(self.branches)
        return value


class BlockRecorder:
    """A block hook that computes everything and records ``outputs[(branch, block, kind)][step]``."""

    def __init__(self) -> None:
        self.step = 0
        self.branches: Branches = (0,)
        self.outputs: dict[tuple[Branch, int, str], dict[int, torch.Tensor]] = {}

    def start_step(self, index: int, _t: int) -> None:
        self.step = index

    def __call__(self, block: int, kind: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        value = compute()
        rows = value.detach().clone().chunk(len(self.branches))  # (B, ...) per branch
        for branch, part in zip(self.branches, rows):
            self.outputs.setdefault((branch, block, kind), {})[self.step] = part
        return value

    def trajectories(self) -> dict[BlockKey, torch.Tensor]:
        """Per sub-block: its outputs stacked over steps, branches concatenated: (K, N, ...)."""
        per_block: dict[BlockKey, list[torch.Tensor]] = {}
        for (branch, block, kind), by_step in sorted(self.outputs.items()):
            steps = [by_step[k] for k in sorted(by_step)]
            per_block.setdefault((block, kind), []).append(torch.stack(steps))  # (K, B, ...)
        return {key: torch.cat(parts, dim=1) for key, parts in per_block.items()}


class HookedDiT:
    """The DDIM ``model_fn``: the DiT with ``hook``, telling it which guidance branches each call holds."""

    def __init__(self, dit: DiT, hook: CachedBlocks | BlockRecorder) -> None:
        self.dit, self.hook = dit, hook

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """One branch per call (the conditional one when ``cond`` is given)."""
        self.hook.branches = (0,) if cond is not None else (1,)
        return self.dit(x, t, cond, block_hook=self.hook)

    def prepare_sampling(
        self, cond: Any, timesteps: Sequence[int], batch_size: int, guided: bool
    ) -> DiTSampler:
        """Both branches in one call when ``guided`` (``diffusion.PreparedModel``)."""
        self.hook.branches = (0, 1) if guided else (0,) if cond is not None else (1,)
        return self.dit.prepare_sampling(cond, timesteps, batch_size, guided, block_hook=self.hook)


def hooked_model_fn(dit: DiT, hook: CachedBlocks | BlockRecorder) -> HookedDiT:
    """The DDIM ``model_fn`` running ``dit`` through ``hook``."""
    return HookedDiT(dit, hook)


def load_head(model: Any, schedule: CacheSchedule) -> DiT | None:
    """The distilled DiT ``schedule`` names, as a copy of ``model.dit`` (None when it names none)."""
    from dream_policy.checkpoint import load_weights

    path = schedule.head_path()
    if path is None:
        return None
    if not path.is_file():
        raise FileNotFoundError(f"distilled head {path} named by the cache schedule does not exist")
    head = copy.deepcopy(model.dit)
    load_weights(path, head, strict=True)
    return head.eval()
