"""CALVIN's evaluation chains: symbolic initial states paired with 5 tasks, built as CALVIN does."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sim.symbolic_state import STATE_VALUES, canonical_state, temp_seed

SYMBOLIC_TASKS_FILE = Path(__file__).parent / "data" / "symbolic_tasks.json"
CHAIN_LENGTH = 5

State = dict[str, Any]


@lru_cache(maxsize=None)
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
        if not isinstance(data, Mapping) or set(data) != {"initial_state", "tasks"}:
            raise ValueError(f"expected {{'initial_state': {{...}}, 'tasks': [...]}}, got {data!r}")
        if not isinstance(data["tasks"], list):
            raise ValueError(f"'tasks' must be a list of task names, got {data['tasks']!r}")
        return cls(initial_state=data["initial_state"], tasks=tuple(data["tasks"]))


def symbolic_initial_states() -> list[State]:
    """CALVIN's 192 initial states: 1 or 2 blocks on the table, at most one per slider side."""
    states = []
    for values in itertools.product(*STATE_VALUES.values()):
        if values.count("table") in (1, 2) and values.count("slider_right") < 2 and values.count("slider_left") < 2:
            states.append(dict(zip(STATE_VALUES, values)))
    return states


def _matches(state: State, condition: Mapping[str, Any]) -> bool:
    """A condition value is required exactly, or, when it is a list, any of its items."""
    return all(state[k] in v if isinstance(v, list) else state[k] == v for k, v in condition.items())


def next_states(state: State, task: str) -> list[State]:
    """The state after ``task`` for each of its branches whose condition ``state`` meets."""
    return [{**state, **b["effect"]} for b in _symbolic_tasks()[1][task] if _matches(state, b["condition"])]


def is_valid_chain(state: State, tasks: Sequence[str]) -> bool:
    """CALVIN's ``check_sequence``: each task matches exactly one branch, categories all differ."""
    for task in tasks:
        after = next_states(state, task)
        if len(after) != 1:
            return False
        state = after[0]
    return len({task_category(t) for t in tasks}) == len(tasks)


def _sample_task_sequences(state: State, count: int, seed: int) -> list[tuple[str, ...]]:
    """Draw 5 distinct tasks until ``count`` valid chains are found (duplicates allowed)."""
    names = np.array(task_names())
    found: list[tuple[str, ...]] = []
    with temp_seed(seed):
        while len(found) < count:
            tasks = tuple(str(t) for t in np.random.choice(names, size=CHAIN_LENGTH, replace=False))
            if is_valid_chain(state, tasks):
                found.append(tasks)
    return found


def generate_chains(num_sequences: int = 1000) -> list[Chain]:
    """CALVIN's ``get_sequences(num_sequences)``; numpy's global RNG state is left as it was."""
    if num_sequences < 1:
        raise ValueError(f"num_sequences must be >= 1, got {num_sequences}")
    states = symbolic_initial_states()
    counts = [len(part) for part in np.array_split(range(num_sequences), len(states))]
    chains = [
        Chain(state, tasks)
        for seed, (state, count) in enumerate(zip(states, counts))
        for tasks in _sample_task_sequences(state, count, seed)
    ]
    # CALVIN seeds 0, samples each state in a worker process (which leaves the parent's RNG
    # untouched), then shuffles: so the shuffle is the first draw after seeding 0.
    with temp_seed(0):
        np.random.shuffle(chains)
    return chains


def write_chains(path: str | Path, num_sequences: int = 1000) -> list[Chain]:
    """Generate chains and write them as a JSON list of ``{"initial_state", "tasks"}``."""
    chains = generate_chains(num_sequences)
    Path(path).write_text(json.dumps([c.to_json() for c in chains], indent=1), encoding="utf-8")
    return chains


def read_chains(path: str | Path) -> list[Chain]:
    """Chains from a file written by ``write_chains``; a malformed file fails naming the entry."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(raw, list):
        raise ValueError(f"{path}: expected a JSON list of chains, got {type(raw).__name__}")
    chains = []
    for i, entry in enumerate(raw):
        try:
            chains.append(Chain.from_json(entry))
        except ValueError as e:
            raise ValueError(f"{path}: chain {i}: {e}") from e
    return chains


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
