"""Running the DiT head under a BAC schedule, and recording its sub-block outputs for calibration.

Both are ``block_hook``s for ``DiT.forward`` (``dream_policy/dit.py``) driven by the DDIM loop's
``on_step``: ``CachedBlocks`` recomputes a sub-block's residual increment only at its update steps
and otherwise returns the increment cached at the last update; ``BlockRecorder`` computes every
increment and keeps a copy per step. Classifier-free guidance calls the DiT twice per step, with and
without the condition; each branch has its own cache entries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dream_policy.bac import BlockKey, CacheSchedule
from dream_policy.dit import DiT

Branch = int  # 0: conditional call, 1: unconditional call (guidance)


class CachedBlocks:
    """A block hook that follows ``schedule``; ``computed`` / ``reused`` count sub-block evaluations."""

    def __init__(self, schedule: CacheSchedule) -> None:
        self.schedule = schedule
        self._updates = {key: schedule.updates(key) for key in schedule.steps}
        self.step, self.branch = 0, 0
        self.cache: dict[tuple[Branch, int, str], torch.Tensor] = {}
        self.computed = self.reused = 0

    def start_step(self, index: int, _t: int) -> None:
        self.step = index

    def __call__(self, block: int, kind: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        key = (self.branch, block, kind)
        updates = self._updates.get((block, kind))
        if updates is None or self.step in updates or key not in self.cache:
            self.cache[key] = value = compute()
            self.computed += 1
            return value
        self.reused += 1
        return self.cache[key]


class BlockRecorder:
    """A block hook that computes everything and records ``outputs[(block, kind)][step]`` per branch."""

    def __init__(self) -> None:
        self.step, self.branch = 0, 0
        self.outputs: dict[tuple[Branch, int, str], dict[int, torch.Tensor]] = {}

    def start_step(self, index: int, _t: int) -> None:
        self.step = index

    def __call__(self, block: int, kind: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        value = compute()
        self.outputs.setdefault((self.branch, block, kind), {})[self.step] = value.detach().clone()
        return value

    def trajectories(self) -> dict[BlockKey, torch.Tensor]:
        """Per sub-block: its outputs stacked over steps, branches concatenated: (K, N, ...)."""
        per_block: dict[BlockKey, list[torch.Tensor]] = {}
        for (branch, block, kind), by_step in sorted(self.outputs.items()):
            steps = [by_step[k] for k in sorted(by_step)]
            per_block.setdefault((block, kind), []).append(torch.stack(steps))  # (K, B, ...)
        return {key: torch.cat(parts, dim=1) for key, parts in per_block.items()}


def hooked_model_fn(dit: DiT, hook: CachedBlocks | BlockRecorder) -> Callable[..., torch.Tensor]:
    """The DDIM ``model_fn``: the DiT with ``hook``, telling it which guidance branch is running."""

    def model_fn(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        hook.branch = 0 if cond is not None else 1
        return dit(x, t, cond, block_hook=hook)

    return model_fn
