"""CALVIN's evaluation chains: symbolic initial states paired with 5 tasks, built as CALVIN does."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from sim.symbolic_state import STATE_VALUES, canonical_state

SYMBOLIC_TASKS_FILE = Path(__file__).parent / "data" / "symbolic_tasks.json"
CHAIN_LENGTH = 5
# Bulk replay of CALVIN's draws: draws per lockstep lane (well above the few thousand draws
# walks need to merge) and raw draws per round over all streams (bounds memory).
BLOCK = 1 << 13
ROUND_DRAWS = 1 << 25
MAX_STREAM_DRAWS = 1 << 20

State = dict[str, Any]


@lru_cache
def _symbolic_tasks() -> tuple[dict[str, int], dict[str, list[dict[str, dict[str, Any]]]]]:
    """(category per task, condition/effect branches per task) from ``symbolic_tasks.json``."""
    with SYMBOLIC_TASKS_FILE.open(encoding="utf-8") as f:
        raw = json.load(f)
    return raw["task_categories"], raw["tasks"]


def task_names() -> tuple[str, ...]:
    """The 34 task names in the order of ``symbolic_tasks.json`` (the order chains draw from)."""
    return tuple(_symbolic_tasks()[1])


def task_category(name: str) -> int:
    """CALVIN's category of a task; tasks in one chain have distinct categories."""
    categories = _symbolic_tasks()[0]
    if name not in categories:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(task_names())}")
    return categories[name]


@dataclass(frozen=True)
class Chain:
    """One evaluation chain: the symbolic state the scene is reset to and the tasks to do in order."""

    initial_state: dict[str, int | str]
    tasks: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "initial_state", canonical_state(self.initial_state))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if len(self.tasks) != CHAIN_LENGTH:
            raise ValueError(f"a chain has {CHAIN_LENGTH} tasks, got {list(self.tasks)}")
        for name in self.tasks:
            task_category(name)

    def to_json(self) -> dict[str, Any]:
        return {"initial_state": dict(self.initial_state), "tasks": list(self.tasks)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Chain:
        if not isinstance(data, Mapping) or not isinstance(data.get("tasks"), list):
            raise TypeError(f"expected {{'initial_state': {{...}}, 'tasks': [...]}}, got {data!r}")
        if set(data) != {"initial_state", "tasks"}:
            raise ValueError(f"expected keys 'initial_state' and 'tasks', got {sorted(data)}")
        return cls(initial_state=data["initial_state"], tasks=tuple(data["tasks"]))


def symbolic_initial_states() -> list[State]:
    """CALVIN's 192 initial states: 1 or 2 blocks on the table, at most one per slider side."""
    return [
        dict(zip(STATE_VALUES, values))
        for values in itertools.product(*STATE_VALUES.values())
        if values.count("table") in (1, 2)
        and values.count("slider_right") < 2
        and values.count("slider_left") < 2
    ]


def _matches(state: State, condition: Mapping[str, Any]) -> bool:
    """A condition value is required exactly, or, when it is a list, any of its items."""
    return all(
        state[key] in value if isinstance(value, list) else state[key] == value
        for key, value in condition.items()
    )


def next_states(state: State, task: str) -> list[State]:
    """The state after ``task`` for each of its branches whose condition ``state`` meets."""
    branches = _symbolic_tasks()[1][task]
    return [{**state, **b["effect"]} for b in branches if _matches(state, b["condition"])]


def is_valid_chain(state: State, tasks: Sequence[str]) -> bool:
    """CALVIN's ``check_sequence``: each task matches exactly one branch, categories all differ."""
    for task in tasks:
        after = next_states(state, task)
        if len(after) != 1:
            return False
        state = after[0]
    return len({task_category(t) for t in tasks}) == len(tasks)


@lru_cache
def _draw_tables() -> tuple[int, np.ndarray, np.ndarray]:
    """(symbol bits, rejection mask per phase, next phase per ``phase << bits | symbol``).

    A legacy ``permutation(n)`` shuffle runs phases 0..n-2; phase s draws j in [0, n-1-s] by
    masking raw 32-bit draws with the smallest all-ones mask covering n-1-s until the value
    fits. A symbol is a raw draw's low bits under the widest mask, all any phase looks at.
    """
    bounds = np.arange(len(task_names()) - 1, 0, -1)
    masks = np.array([(1 << int(i).bit_length()) - 1 for i in bounds])
    bits = int(bounds[0]).bit_length()
    accepted = (np.arange(1 << bits)[None, :] & masks[:, None]) <= bounds[:, None]
    phase = np.arange(len(bounds))[:, None]
    next_phase = np.where(accepted, (phase + 1) % len(bounds), phase)
    return bits, masks.astype(np.uint8), next_phase.ravel()


def _draw_symbols(rngs: Sequence[np.random.RandomState], draws: int) -> np.ndarray:
    """The next ``draws`` symbols of each generator as (BLOCK, lanes); a lane is a block of draws."""
    bits = _draw_tables()[0]
    blocks = draws // BLOCK
    lanes = np.empty((BLOCK, len(rngs) * blocks), np.uint8)
    for k, rng in enumerate(rngs):
        raw = rng.randint(0, 2**32, size=draws, dtype=np.uint32) & ((1 << bits) - 1)
        lanes[:, k * blocks : (k + 1) * blocks] = raw.reshape(blocks, BLOCK).T
    return lanes


def _replay_phases(lanes: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Shuffle phase before each draw of ``lanes`` (BLOCK, lanes).

    Consecutive lanes are consecutive blocks of one stream and ``first`` is each stream's phase
    at its first draw. Every block is walked from phase 0 in lockstep; walks from different
    phases over the same draws merge within a few thousand draws, so each block's true walk
    (entered at its predecessor's exit phase) is re-walked only until it meets the stored one.
    """
    bits, _, next_phase = _draw_tables()
    phases = np.empty_like(lanes)
    cur = np.zeros(lanes.shape[1], np.intp)
    for t, row in enumerate(lanes):
        phases[t] = cur
        cur = next_phase[(cur << bits) | row]
    per_stream = lanes.shape[1] // len(first)
    cur = np.roll(cur, 1)
    cur[::per_stream] = first
    active = np.arange(lanes.shape[1])
    while active.size:
        for t, row in enumerate(lanes):
            differ = cur != phases[t, active]
            active, cur = active[differ], cur[differ]
            if not active.size:
                break
            phases[t, active] = cur
            cur = next_phase[(cur << bits) | row[active]]
        # Walks that never merged leave their block at another phase: re-walk the next block.
        has_next = (active + 1) % per_stream != 0
        active, cur = active[has_next] + 1, cur[has_next]
    return phases


def _accepted_draws(lanes: np.ndarray, first: np.ndarray) -> list[np.ndarray]:
    """Per stream, the symbols its shuffle steps accepted, in draw order.

    A draw is accepted exactly where the phase moves on.
    """
    bits, _, next_phase = _draw_tables()
    phases = _replay_phases(lanes, first)
    blocks = lanes.shape[1] // len(first)
    out = []
    for k in range(len(first)):
        cols = slice(k * blocks, (k + 1) * blocks)
        # Copying the narrow column slice first keeps the transpose in cache.
        phase = np.ascontiguousarray(phases[:, cols]).T.ravel()
        symbol = np.ascontiguousarray(lanes[:, cols]).T.ravel()
        after = np.append(phase[1:], next_phase[(int(phase[-1]) << bits) | int(symbol[-1])])
        out.append(symbol[after != phase])
    return out


def _trace_back(drawn: np.ndarray, position: int) -> np.ndarray:
    """Index of the task a shuffle leaves at ``position``; ``drawn`` is (n-1, P), last step first.

    Undoing the swaps from the last step (bound 1) to the first moves the position to the index
    that started there, which is the task's index since the shuffle starts from 0..n-1.
    """
    pos = np.full(drawn.shape[1], position, np.uint8)
    for bound, j in enumerate(drawn, start=1):
        pos = np.where(pos == bound, j, np.where(pos == j, bound, pos))
    return pos


def _valid_chains(initial: np.ndarray, drawn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, task indices) of the valid chains among the shuffles of accepted symbols ``drawn``.

    Vectorised ``is_valid_chain`` from initial-state indices ``initial``; each chain position is
    traced only for rows still valid up to it, since most draws fail at their first task.
    """
    categories = np.array([task_category(name) for name in task_names()])
    rows, state = np.arange(len(drawn)), initial
    steps = (drawn & _draw_tables()[1]).T[::-1]
    tasks = np.empty((0, len(drawn)), np.uint8)
    for position in range(CHAIN_LENGTH):
        task = _trace_back(steps, position)
        state = _transitions()[state, task]
        keep = (state >= 0) & (categories[task] != categories[tasks]).all(axis=0)
        rows, state, steps = rows[keep], state[keep], steps[:, keep]
        tasks = np.vstack([tasks, task])[:, keep]
    return rows, tasks.T


@lru_cache
def _transitions() -> np.ndarray:
    """Next-state index per (state, task) over all states reachable from the initial ones.

    Rows 0..191 are ``symbolic_initial_states()``; -1 marks a task that does not match exactly
    one branch, and the last row (index -1) keeps an invalid chain invalid.
    """
    keys = tuple(STATE_VALUES)
    order = [tuple(s.values()) for s in symbolic_initial_states()]
    index = {values: k for k, values in enumerate(order)}
    table = []
    for values in order:  # ``order`` grows while it is walked: a breadth-first closure
        row = []
        for task in task_names():
            after = next_states(dict(zip(keys, values)), task)
            if len(after) != 1:
                row.append(-1)
                continue
            reached = tuple(after[0].values())
            if reached not in index:
                index[reached] = len(order)
                order.append(reached)
            row.append(index[reached])
        table.append(row)
    table.append([-1] * len(task_names()))
    return np.array(table)


def _sample_task_sequences(counts: Sequence[int]) -> list[list[tuple[str, ...]]]:
    """For initial state i, the first ``counts[i]`` valid chains CALVIN draws after seeding i.

    CALVIN repeats ``np.random.choice(names, 5, replace=False)``, i.e. the first five entries of
    a legacy ``permutation(34)``, until a chain is valid; only about one draw in 8000 is, so the
    permutations are rebuilt in bulk from the raw MT19937 stream instead of drawn one by one.
    """
    names = task_names()
    steps = len(names) - 1
    found: list[list[tuple[str, ...]]] = [[] for _ in counts]
    # RandomState(i) replays exactly what CALVIN draws after np.random.seed(i).
    rngs = {i: np.random.RandomState(i) for i, count in enumerate(counts) if count > 0}
    partial = {i: np.empty(0, np.uint8) for i in rngs}  # draws of an unfinished permutation
    while rngs:
        ids = list(rngs)
        draws = min(max(ROUND_DRAWS // len(ids), BLOCK), MAX_STREAM_DRAWS) // BLOCK * BLOCK
        lanes = _draw_symbols([rngs[i] for i in ids], draws)
        first = np.array([len(partial[i]) for i in ids])
        permutations = []
        for i, new in zip(ids, _accepted_draws(lanes, first)):
            drawn = np.concatenate([partial[i], new])
            whole = len(drawn) // steps * steps
            partial[i] = drawn[whole:]
            permutations.append(drawn[:whole].reshape(-1, steps))
        owner = np.repeat(ids, [len(p) for p in permutations])
        rows, tasks = _valid_chains(owner, np.concatenate(permutations))
        for i, chain in zip(owner[rows], tasks):
            if len(found[i]) < counts[i]:
                found[i].append(tuple(names[t] for t in chain))
        for i in ids:
            if len(found[i]) == counts[i]:
                del rngs[i], partial[i]
    return found


def generate_chains(num_sequences: int = 1000) -> list[Chain]:
    """CALVIN's ``get_sequences(num_sequences)``; numpy's global RNG is not touched.

    Each ``num_sequences`` is its own draw: the chains of a smaller call are among those of a larger
    one, in another order, so ``generate_chains(300)[100:]`` are not CALVIN's chains 100-299
    (``generate_chains(1000)[100:300]``).
    """
    if num_sequences < 1:
        raise ValueError(f"num_sequences must be >= 1, got {num_sequences}")
    states = symbolic_initial_states()
    counts = [len(part) for part in np.array_split(range(num_sequences), len(states))]
    chains = [
        Chain(state, tasks)
        for state, sequences in zip(states, _sample_task_sequences(counts))
        for tasks in sequences
    ]
    # CALVIN seeds 0 and samples each state in a worker process, which leaves the parent's RNG
    # untouched, then shuffles: the shuffle is the first draw after seeding 0.
    np.random.RandomState(0).shuffle(chains)
    return chains


def write_chains(path: str | Path, num_sequences: int = 1000) -> list[Chain]:
    """Generate chains and write them as a JSON list of ``{"initial_state", "tasks"}``, one a line."""
    chains = generate_chains(num_sequences)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ",\n".join(json.dumps(c.to_json()) for c in chains)
    path.write_text(f"[\n{lines}\n]\n", encoding="utf-8")
    return chains


def _chain_at(index: int, entry: Any) -> Chain:
    try:
        return Chain.from_json(entry)
    except (TypeError, ValueError) as e:
        raise ValueError(f"chain {index}: {e}") from e


def _parse_chains(text: str) -> list[Chain]:
    raw = json.loads(text)
    if not isinstance(raw, list):
        raise TypeError(f"expected a JSON list of chains, got {type(raw).__name__}")
    return [_chain_at(i, entry) for i, entry in enumerate(raw)]


def read_chains(path: str | Path) -> list[Chain]:
    """Chains from a file written by ``write_chains``; a malformed file raises ValueError naming it."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return _parse_chains(text)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e


def shard(chains: Sequence[Chain], spec: str) -> list[tuple[int, Chain]]:
    """Shard ``"i/n"`` (0-based i) of the chains: ``chains[i::n]`` with their original indices."""
    try:
        i, n = (int(part) for part in spec.split("/"))
    except ValueError:
        raise ValueError(f"shard spec {spec!r} must look like 'i/n', e.g. '0/4'") from None
    if not 0 <= i < n:
        raise ValueError(f"shard spec {spec!r} needs 0 <= i < n")
    return list(enumerate(chains))[i::n]


def chains_command(cfg: Mapping[str, Any]) -> None:
    """CLI: write ``cfg["num_sequences"]`` chains to ``cfg["out"]``."""
    chains = write_chains(cfg["out"], int(cfg["num_sequences"]))
    print(f"wrote {len(chains)} chains to {cfg['out']}")
