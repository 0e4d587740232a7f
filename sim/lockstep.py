"""CALVIN's chain protocol for several chains at once, in lockstep: one batched policy call per control step.

Each slot holds one env, its oracle and one policy and runs ``sim.evaluate.run_chain``'s protocol (one
env reset per chain, ``policy.reset()`` and a start snapshot per subtask, success at the first step the
oracle agrees, stop at the first failure); a slot whose chain ends takes the next one. Every step, the
slots that are running give their observations and instructions to ``step_batch`` (a policy class's
``step_batch`` static method, e.g. ``DreamPolicy.step_batch``, else each policy's ``step`` in turn).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.annotations import eval_instruction
from sim.chains import Chain
from sim.symbolic_state import physical_state

StepBatch = Callable[[Sequence[Any], Sequence[dict[str, np.ndarray]], Sequence[str]], list[np.ndarray]]
Job = tuple[int, Chain, bool]  # chain index, chain, record a video


@dataclass
class Slot:
    """One env, its oracle and one policy; the chain it runs and where in it."""

    env: Any
    oracle: Any
    policy: Any
    result: Any = None  # sim.evaluate.ChainResult of the chain in progress (None: idle)
    task: str = ""
    instruction: str = ""
    label: str = ""
    start: Any = None  # the env's snapshot at the subtask's start
    obs: dict[str, np.ndarray] | None = None
    steps: int = 0  # steps taken in this subtask


def step_each(policies: Sequence[Any], observations: Sequence[dict[str, np.ndarray]],
              instructions: Sequence[str]) -> list[np.ndarray]:
    """The fallback ``step_batch``: every policy's ``step``, one after the other."""
    return [p.step(o, i) for p, o, i in zip(policies, observations, instructions, strict=True)]


def batch_stepper(policy: Any) -> StepBatch:
    """The policy class's ``step_batch`` if it has one, else ``step_each``."""
    return getattr(type(policy), "step_batch", None) or step_each


def run_lockstep(slots: Sequence[Slot], jobs: Iterable[Job], ep_len: int, start_chain: Callable[[Slot, int], None],
                 new_result: Callable[[int, Chain, bool], Any], caption: Callable[[Slot], np.ndarray] | None = None,
                 step_batch: StepBatch | None = None) -> Iterator[Any]:
    """Run the chains of ``jobs`` over the slots; yields each chain's result as it ends.

    ``start_chain(slot, index)`` runs before a chain starts in a slot (seeding its policy);
    ``new_result(index, chain, record)`` makes the chain's result (``successes``, ``steps``, ``frames``);
    ``caption(slot)`` renders a slot's video frame (for results with ``frames``)."""
    if ep_len < 1:
        raise ValueError(f"ep_len must be >= 1 control step, got {ep_len}")
    if not slots:
        raise ValueError("run_lockstep needs at least one slot (env, oracle, policy)")
    step_batch = step_batch or batch_stepper(slots[0].policy)
    pending = iter(jobs)

    def load(slot: Slot) -> None:
        job = next(pending, None)
        slot.result = None
        if job is None:
            return
        index, chain, record = job
        start_chain(slot, index)
        robot_obs, scene_obs = physical_state(chain.initial_state)
        slot.obs, _ = slot.env.reset(options={"robot_obs": robot_obs, "scene_obs": scene_obs})
        slot.result = new_result(index, chain, record)
        begin_subtask(slot)

    for slot in slots:
        load(slot)
    while running := [s for s in slots if s.result is not None]:
        actions = step_batch([s.policy for s in running], [s.obs for s in running],
                             [s.instruction for s in running])
        for slot, action in zip(running, actions, strict=True):
            slot.obs, _, _, _, info = slot.env.step(action)
            slot.steps += 1
            if slot.result.frames is not None and caption is not None:
                slot.result.frames.append(caption(slot))
            success = bool(slot.oracle.succeeded(slot.task, slot.start, info["snapshot"]))
            if not success and slot.steps < ep_len:
                continue
            slot.result.successes.append(success)
            slot.result.steps.append(slot.steps)
            if success and len(slot.result.successes) < len(slot.result.tasks):
                begin_subtask(slot)
                continue
            yield slot.result
            load(slot)


def begin_subtask(slot: Slot) -> None:
    """The next subtask of the slot's chain: the policy reset, the instruction and the start snapshot."""
    number = len(slot.result.successes) + 1
    slot.task = slot.result.tasks[number - 1]
    slot.instruction = eval_instruction(slot.task)
    slot.label = f"{number}/{len(slot.result.tasks)}: "
    slot.policy.reset()
    slot.start = slot.env.snapshot()
    slot.steps = 0
