"""Block-wise Adaptive Caching (BAC) schedules for the DiT action head: pure functions and a JSON file.

A *schedule* says, for every residual sub-block ``(block_index, kind)`` of the DiT, at which of the
``K`` denoising steps its increment is recomputed ("update steps"); at every other step the runtime
reuses the output cached at the last update (``dream_policy/dit_cache.py``). Step 0 is always an
update. What is reused (``CacheSchedule.reuse``): ``regate`` (the default) caches the sub-block's output
before its adaLN-Zero gate and multiplies it by the current step's gate, which depends on the timestep
alone; ``increment`` reuses the gated increment as it was (schedules written before ``reuse`` existed).
A schedule may also name DiT weights fine-tuned to run under it (``head``: a safetensors file beside it,
written by ``dream-policy distill-cache``, ``dream_policy/cache_distill.py``); the runtime then samples
with those weights while the schedule is on, and with the checkpoint's own head otherwise.

- ``uniform_steps(K, M)``: every ``K/M``-th step (the baseline of equal budget).
- ``adaptive_steps(S, M)``: the Adaptive Caching Scheduler. ``S[i, k]`` is the cosine similarity of the
  block's output at update step ``i`` (the cached value) and at a later step ``k``; reusing the value of
  update step ``i`` through step ``j`` scores ``phi(i, j) = sum_{k=i+1..j} S[i, k]``, and the ``M`` update
  steps maximise the total score over the segments they start, by the dynamic programme
  ``DP[m][j] = max_{i<=j} DP[m-1][i-1] + phi(i, j)`` with back-pointers. (With ``S[i, k]`` taken as the
  adjacent-step similarity ``s_k`` the score does not depend on the choice beyond the update steps'
  own ``s``; the cached-versus-skipped similarity is what the BAC paper maximises.)
- ``bubbling_union(steps, variation, n)``: the ``n`` sub-blocks whose outputs vary most over the steps
  (``variation``: mean pairwise L1 distance of a block's outputs) also update at the update steps of
  every feed-forward sub-block downstream of them.
- ``greedy_prune(blocks, K, target, error, cost)``: the ``search`` mode, not in the BAC paper. Both
  schedulers above score a block's reuse by how alike its outputs stay, block by block, with the same
  number of updates for every block; neither sees what an error at a given step and block does to the
  sampled action. This one measures it: from a schedule that updates everything, it repeatedly drops the
  update whose loss raises ``error(steps)`` (the caller's: the sampled actions against uncached ones)
  least per unit of ``cost`` saved, until the schedule costs at most ``target``.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MODES = ("none", "uniform", "adaptive", "bac", "search")
REUSE = ("regate", "increment")
SCHEDULE_FILE = "cache_schedule.json"
FORMAT = 1

BlockKey = tuple[int, str]  # (block index, sub-block kind)


def uniform_steps(num_steps: int, budget: int) -> list[int]:
    """``budget`` update steps spread evenly over ``num_steps`` (step 0 first)."""
    _check_budget(num_steps, budget)
    return sorted({int(i * num_steps // budget) for i in range(budget)})


def segment_scores(similarity: np.ndarray) -> np.ndarray:
    """``phi[i, j] = sum_{k=i+1..j} S[i, k]`` for ``i <= j`` (0 on the diagonal), from ``S`` (K, K)."""
    S = np.asarray(similarity, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"similarity must be a square (K, K) matrix, got shape {S.shape}")
    upper = np.triu(S, k=1)
    phi = np.cumsum(upper, axis=1)
    return np.triu(phi)


def adaptive_steps(similarity: np.ndarray, budget: int) -> list[int]:
    """The ``budget`` update steps (sorted, starting at 0) that maximise the summed segment scores."""
    phi = segment_scores(similarity)
    K = phi.shape[0]
    _check_budget(K, budget)
    # best[m, j]: best score of steps 0..j covered by m segments, the last one ending at j.
    best = np.full((budget + 1, K), -np.inf)
    back = np.zeros((budget + 1, K), dtype=np.int64)
    best[1] = phi[0]  # one segment: updated at 0, reused through j
    for m in range(2, budget + 1):
        for j in range(m - 1, K):
            starts = np.arange(m - 1, j + 1)  # the m-th segment starts at i (an update step)
            scores = best[m - 1, starts - 1] + phi[starts, j]
            pick = int(np.argmax(scores))
            best[m, j], back[m, j] = scores[pick], starts[pick]
    steps, j = [], K - 1
    for m in range(budget, 1, -1):
        i = int(back[m, j])
        steps.append(i)
        j = i - 1
    return [0, *sorted(steps)]


def schedule_score(similarity: np.ndarray, steps: Sequence[int]) -> float:
    """Total ``phi`` of the segments that the update ``steps`` start (the DP's objective)."""
    phi = segment_scores(similarity)
    bounds = [*sorted(steps), phi.shape[0]]
    return float(sum(phi[a, b - 1] for a, b in itertools.pairwise(bounds)))


def brute_force_steps(similarity: np.ndarray, budget: int) -> tuple[list[int], float]:
    """Best update steps by trying every choice (tests and tiny K only) and their score."""
    K = np.asarray(similarity).shape[0]
    _check_budget(K, budget)
    choices = ([0, *rest] for rest in itertools.combinations(range(1, K), budget - 1))
    best = max(choices, key=lambda steps: schedule_score(similarity, steps))
    return best, schedule_score(similarity, best)


def bubbling_union(steps: Mapping[BlockKey, Sequence[int]], variation: Mapping[BlockKey, float],
                   top_n: int) -> dict[BlockKey, list[int]]:
    """Add to each of the ``top_n`` most varying blocks the update steps of every downstream FF block.

    Block order is execution order: by block index, then ``attn``, ``cross``, ``ff``.
    """
    order = sorted(steps, key=block_order)
    if set(variation) != set(steps):
        raise ValueError("variation must score exactly the scheduled blocks")
    top = sorted(order, key=lambda key: -variation[key])[:max(top_n, 0)]
    out = {key: sorted(set(steps[key])) for key in order}
    for key in top:
        downstream_ff = [k for k in order if block_order(k) > block_order(key) and k[1] == "ff"]
        out[key] = sorted(set(out[key]).union(*(steps[k] for k in downstream_ff)))
    return out


def greedy_prune(blocks: Sequence[BlockKey], num_steps: int, target: float,
                 error: Callable[[dict[BlockKey, list[int]]], float],
                 cost: Mapping[BlockKey, float] | None = None, rounds_hint: int = 4,
                 progress: Callable[[dict[BlockKey, list[int]], float], None] | None = None) -> dict[BlockKey, list[int]]:
    """Update steps per block costing at most ``target`` (sum over blocks of ``cost[block]`` x updates).

    Greedy removal from the full schedule: each round scores every droppable update (step 0 always stays)
    by ``(error(without it) - error(now)) / cost[block]`` and drops the best-scoring ones. While many
    drops remain, a round drops ``1 / rounds_hint`` of them (the best, each from a different
    (block, step)); the last ones go one per round, so the end of the search is exact greedy.
    ``progress(steps, error)`` is called after every round.
    """
    cost = {key: 1.0 for key in blocks} if cost is None else {key: float(cost[key]) for key in blocks}
    if any(c <= 0 for c in cost.values()):
        raise ValueError("costs must be > 0")
    floor = sum(cost.values())  # every block at step 0 alone
    if target < floor - 1e-9:
        raise ValueError(f"target cost {target:g} is below the cost of updating every block once ({floor:g})")
    steps = {key: list(range(num_steps)) for key in blocks}
    current = error(steps)
    spent = floor * num_steps
    while spent > target + 1e-9:
        scored = []
        for key in blocks:
            for step in steps[key][1:]:
                trial = {**steps, key: [s for s in steps[key] if s != step]}
                scored.append(((error(trial) - current) / cost[key], key, step))
        scored.sort(key=lambda c: c[0])
        mean_cost = spent / sum(len(v) for v in steps.values())
        drops = max(1, int((spent - target) / mean_cost) // max(rounds_hint, 1))
        for _, key, step in scored:
            if drops == 0 or spent <= target + 1e-9:
                break
            steps[key] = [s for s in steps[key] if s != step]
            spent -= cost[key]
            drops -= 1
        current = error(steps)
        if progress is not None:
            progress(steps, current)
    return steps


def block_order(key: BlockKey) -> tuple[int, int]:
    from dream_policy.dit import SUB_BLOCK_KINDS

    return key[0], SUB_BLOCK_KINDS.index(key[1])


def _check_budget(num_steps: int, budget: int) -> None:
    if num_steps < 1 or not 1 <= budget <= num_steps:
        raise ValueError(f"budget={budget} must be in [1, steps={num_steps}]")


# ---- the stored schedule ----------------------------------------------------------------------

@dataclass
class CacheSchedule:
    """Update steps per sub-block for one DiT shape and number of denoising steps."""

    mode: str
    num_steps: int
    depth: int
    width: int
    steps: dict[BlockKey, list[int]]
    budget: float | None = None  # updates per sub-block (search: may be fractional, a FLOPs budget)
    info: dict[str, Any] = field(default_factory=dict)
    reuse: str = "regate"
    # a safetensors file of DiT weights distilled to run under this schedule (``dream-policy distill-cache``),
    # named relative to the schedule's folder; None: the checkpoint's own head
    head: str | None = None
    origin: Path | None = field(default=None, compare=False, repr=False)  # the file it was loaded from

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"cache mode {self.mode!r} is not one of {list(MODES)}")
        if self.reuse not in REUSE:
            raise ValueError(f"cache reuse {self.reuse!r} is not one of {list(REUSE)}")
        for key, updates in self.steps.items():
            if not updates or updates[0] != 0 or sorted(set(updates)) != list(updates) or updates[-1] >= self.num_steps:
                raise ValueError(f"update steps of block {key} must be sorted, unique, start at 0 and stay below "
                                 f"{self.num_steps}; got {updates}")

    def updates(self, key: BlockKey) -> frozenset[int]:
        return frozenset(self.steps.get(key, range(self.num_steps)))

    def head_path(self) -> Path | None:
        """The distilled head's file (beside the schedule's file), or None for the checkpoint's head."""
        if self.head is None:
            return None
        if self.origin is None:
            raise ValueError(f"this schedule names a distilled head {self.head!r} but was not loaded from a "
                             "file, so there is no folder to find it in")
        return self.origin.parent / self.head

    def fraction(self) -> float:
        """Share of sub-block evaluations that this schedule computes (1.0 = no caching)."""
        if not self.steps:
            return 1.0
        return sum(len(v) for v in self.steps.values()) / (len(self.steps) * self.num_steps)

    def check_matches(self, depth: int, width: int, num_steps: int, source: str = "schedule") -> None:
        """A clear error when this schedule was made for another DiT or number of steps."""
        problems = [f"{name} {mine} != model's {theirs}" for name, mine, theirs in
                    (("depth", self.depth, depth), ("width", self.width, width),
                     ("denoising steps", self.num_steps, num_steps)) if mine != theirs]
        blocks = {key[0] for key in self.steps}
        if blocks and max(blocks) >= depth:
            problems.append(f"block index {max(blocks)} >= depth {depth}")
        if problems:
            raise ValueError(f"{source} does not fit this checkpoint: {'; '.join(problems)}; "
                             "run dream-policy calibrate-cache again")

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "mode": self.mode, "num_steps": self.num_steps, "depth": self.depth,
                "width": self.width, "budget": self.budget, "reuse": self.reuse,
                **({} if self.head is None else {"head": self.head}), "info": self.info,
                "steps": {f"{i}.{kind}": v for (i, kind), v in sorted(self.steps.items(), key=lambda kv: block_order(kv[0]))}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CacheSchedule:
        if d.get("format") != FORMAT:
            raise ValueError(f"cache schedule format {d.get('format')!r} is not {FORMAT}")
        steps = {}
        for name, updates in d["steps"].items():
            index, _, kind = name.partition(".")
            steps[(int(index), kind)] = [int(s) for s in updates]
        return cls(d["mode"], int(d["num_steps"]), int(d["depth"]), int(d["width"]), steps, d.get("budget"),
                   dict(d.get("info", {})), str(d.get("reuse", "increment")),
                   None if d.get("head") is None else str(d["head"]))

    def save(self, path: str | Path) -> Path:
        """Write the schedule to ``path``; a distilled head it names stays where it is (named relative to
        ``path``'s folder when the schedule was loaded from another one)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        d = self.to_dict()
        if self.head is not None and self.origin is not None:
            d["head"] = os.path.relpath(self.origin.parent / self.head, path.parent)
        tmp.write_text(json.dumps(d, indent=1), encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> CacheSchedule:
        path = Path(path)
        try:
            schedule = cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a valid cache schedule ({e})") from e
        schedule.origin = path
        return schedule
