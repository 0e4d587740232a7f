"""DAgger data: a learned policy drives, the scripted expert labels every step.

Behaviour cloning trains only on the states the expert visits; in closed loop the learned policy
drifts to states it never saw (the wrong block, a gripper a few centimetres off) and has no
demonstration of how to recover. ``ExpertLabelledPolicy`` lets the learner act (with the expert
taking over for random stretches, so the episode still reaches varied states) and records, for
every frame, the action the expert would have sent there: ``dream-policy collect policy=checkpoint
ckpt=PATH`` writes those labels as the data set's ``rel_actions``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial

import numpy as np

from sim.annotations import task_for_sentence
from sim.expert import ScriptedExpert
from sim.expert_plans import held_block
from sim.policy import Policy, make_policy
from sim.snapshot import BLOCK_SLICES
from sim.task_oracle import TASK_NAMES

BLOCK_MOVED = 0.02  # metres: the expert re-plans when the named block moved this far (not held)


def named_block(task: str) -> str | None:
    """The block a lift or rotation names (``lift_red_block_table`` -> ``block_red``); others None.
    (Pushes move their block on purpose: their plan must not restart mid-push.)"""
    parts = task.split("_")
    if task.startswith(("lift_", "rotate_")) and len(parts) > 2 and parts[2] == "block":
        return f"block_{parts[1]}"
    return None


def block_moved(task: str, planned_scene: np.ndarray, scene_obs: np.ndarray, tcp: np.ndarray) -> bool:
    """Whether the plan for ``task`` is stale: its block moved by ``BLOCK_MOVED`` since the plan was
    made and is not between the fingers (the learner knocked it)."""
    block = named_block(task)
    if block is None:
        return False
    where = BLOCK_SLICES[block]
    moved = np.linalg.norm(np.asarray(scene_obs)[where][:3] - np.asarray(planned_scene)[where][:3])
    return bool(moved > BLOCK_MOVED and held_block(np.asarray(scene_obs), np.asarray(tcp)) != block)


def expert_drives(rng: np.random.Generator, share: float) -> bool:
    """Who drives the next stretch: the expert with probability ``share``."""
    return bool(rng.random() < share)


class ExpertLabelledPolicy:
    """The learner acts (the expert for random stretches of ``segment`` steps, a ``expert_share``
    of them); ``label`` is the ``teacher``'s action for the latest step, whoever drove.

    Two copies of the expert with the same plans track the waypoints from wherever the arm is. The
    one that drives (``expert``) keeps its copy of the controller's stored target equal to the real
    one (``ScriptedExpert.follow`` with the actions actually sent), so its stretches move the arm as
    the expert would. The one that labels (``teacher``) keeps its own target, as if it had driven
    all along (at most ``MAX_LEAD`` ahead of the arm): the stored target is not observable, and a
    label computed on the learner's target (often far behind or ahead) would be a correction of a
    size the policy cannot predict from what it sees, unlike the expert's own demonstrations. For
    both, steps the learner drives do not count towards giving up on a waypoint, waypoints the arm
    already got past are skipped (``ScriptedExpert.catch_up``: a label must not send the arm back
    to the start of a path it cut short), and a lift or rotation re-plans when the learner has
    knocked its block away.
    """

    def __init__(self, learner: Policy, expert: ScriptedExpert, rng: np.random.Generator,
                 expert_share: float = 0.3, segment: int = 20, teacher: ScriptedExpert | None = None) -> None:
        if not 0.0 <= expert_share <= 1.0:
            raise ValueError(f"expert_share must be in [0, 1], got {expert_share!r}")
        if segment < 1:
            raise ValueError(f"segment must be >= 1, got {segment!r}")
        self.learner, self.expert, self.rng = learner, expert, rng
        self.teacher = teacher if teacher is not None else copy.deepcopy(expert)  # same generator state: same plans
        self.expert_share, self.segment = expert_share, segment
        self.label: np.ndarray | None = None
        self.reset()

    def reset(self) -> None:
        self.learner.reset()
        self.expert.reset()
        self.teacher.reset()
        self._left, self._expert_drives = 0, False
        self._planned_scene: np.ndarray | None = None
        self.label = None

    def step(self, obs: dict[str, np.ndarray], instruction: str) -> np.ndarray:
        task = instruction if instruction in TASK_NAMES else task_for_sentence(instruction)
        scene_obs = np.asarray(obs["scene_obs"])
        tcp = np.asarray(obs["robot_obs"][:3])
        stale = self._planned_scene is None or self.expert.finished or self.teacher.finished
        if stale or block_moved(task, self._planned_scene, scene_obs, tcp):
            self.expert.replan()
            self.teacher.replan()
            self._planned_scene = scene_obs.copy()
        self.expert.catch_up(tcp)  # past what the learner already did
        self.teacher.catch_up(tcp)
        driving = np.asarray(self.expert.step(obs, instruction), dtype=float)
        label = np.asarray(self.teacher.step(obs, instruction), dtype=float)
        learned = np.asarray(self.learner.step(obs, instruction), dtype=float)
        if self._left == 0:
            self._expert_drives, self._left = expert_drives(self.rng, self.expert_share), self.segment
        self._left -= 1
        self.label = label
        if self._expert_drives:
            return driving
        self.expert.follow(driving, learned)
        self.teacher.follow(label, label)  # its own target stays; the step is not its own
        return learned


def make_labelled_policy(scene: str, seed: int, noise: float, *, ckpt: str, expert_share: float = 0.3,
                         segment: int = 20, cache: str = "none") -> ExpertLabelledPolicy:
    """The collector's policy factory for DAgger data (``functools.partial`` it with the options)."""
    rng = np.random.default_rng(seed)
    plans = int(rng.integers(2**31))  # both copies draw the same plans
    expert = ScriptedExpert(scene=scene, rng=np.random.default_rng(plans), noise=noise)
    teacher = ScriptedExpert(scene=scene, rng=np.random.default_rng(plans))
    learner = make_policy("checkpoint", ckpt=ckpt, cache=cache)
    return ExpertLabelledPolicy(learner, expert, rng, expert_share=expert_share, segment=segment, teacher=teacher)


def labelled_policy_factory(ckpt: str, expert_share: float, segment: int,
                            cache: str = "none") -> Callable[[str, int, float], Policy]:
    """A picklable (scene, seed, noise) -> policy factory for spawned collector workers."""
    return partial(make_labelled_policy, ckpt=ckpt, expert_share=expert_share, segment=segment, cache=cache)
