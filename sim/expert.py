"""Scripted expert: follows the waypoint plan for the instructed task with CALVIN's relative
actions. It implements the same ``Policy`` interface as the learned policy."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from sim.annotations import task_for_sentence
from sim.controller import ORN_SCALE, POS_SCALE
from sim.expert_plans import Waypoint, plan
from sim.grasp import to_yaw_band
from sim.scene_config import SceneConfig
from sim.task_oracle import TASK_NAMES

ORIENTATION_TOL = 0.12  # radians, per Euler angle
OFFSET_GAIN = 0.3
MAX_OFFSET = 0.015  # metres
RESYNC_DISTANCE = 0.05  # metres
MAX_LEAD = 0.04  # metres the commanded target may run ahead of the TCP


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


def waypoint_action(target_pos: np.ndarray, target_euler: np.ndarray, wp: Waypoint) -> np.ndarray:
    """The relative action that moves the stored target towards ``wp`` as fast as allowed."""
    dpos = (np.asarray(wp.pos) - target_pos) / POS_SCALE
    deuler = _wrap(waypoint_euler(wp) - target_euler)
    deuler[2] = wp.yaw - target_euler[2]  # both inside YAW_BAND: turn the way that avoids joint limits
    return np.concatenate([np.clip(dpos, -1, 1), np.clip(deuler / ORN_SCALE, -1, 1), [1.0 if wp.open else -1.0]])


def waypoint_euler(wp: Waypoint) -> np.ndarray:
    """xyz Euler angles of the gripper pointing down at ``wp.yaw``, turned by ``wp.tilt`` about
    world x and then by ``wp.lean`` about world y."""
    if wp.tilt == 0.0 and wp.lean == 0.0:
        return np.array([np.pi, 0.0, wp.yaw])
    down = Rotation.from_euler("xyz", [np.pi, 0.0, wp.yaw])
    return (Rotation.from_euler("y", wp.lean) * Rotation.from_euler("x", wp.tilt) * down).as_euler("xyz")


class ScriptedExpert:
    """Plans on the first step of each subtask, then tracks the waypoints one by one."""

    def __init__(self, scene: SceneConfig | str = "D", rng: np.random.Generator | None = None,
                 noise: float = 0.0) -> None:
        self.cfg = scene if isinstance(scene, SceneConfig) else SceneConfig(name=scene, render=False)
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.noise = noise
        self.target_pos: np.ndarray | None = None
        self.target_euler: np.ndarray | None = None
        self.reset()

    def seed(self, seed: int) -> None:
        """Re-seed the generator (the evaluator does this per chain, so results do not depend on
        how chains are spread over workers)."""
        self.rng = np.random.default_rng(seed)
        self.target_pos = None  # a new chain starts from a freshly reset environment

    def reset(self) -> None:
        self._plan: list[Waypoint] | None = None
        self._task: str | None = None

    def _start(self, obs: dict, task: str) -> None:
        robot_obs = np.asarray(obs["robot_obs"])
        self._task = task
        self._plan = plan(task, robot_obs, np.asarray(obs["scene_obs"]), self.cfg, self.rng)
        self._index, self._steps, self._waited = 0, 0, 0
        self._offset = np.zeros(3)
        # The controller's stored target only changes by our own actions, so keep our copy of it
        # across subtasks; re-read it from the TCP after an environment reset (first use, or
        # the TCP far from where we left the target).
        if self.target_pos is None or np.linalg.norm(self.target_pos - robot_obs[:3]) > RESYNC_DISTANCE:
            self.target_pos = robot_obs[:3].copy()
            self.target_euler = robot_obs[3:6].copy()
            self.target_euler[2] = to_yaw_band(self.target_euler[2])

    def step(self, obs: dict, instruction: str) -> np.ndarray:
        task = instruction if instruction in TASK_NAMES else task_for_sentence(instruction)
        if self._plan is None or task != self._task:
            self._start(obs, task)
        wp = self._current(np.asarray(obs["robot_obs"][:6]))
        if wp is None:  # plan finished: hold still with the last gripper state
            last_open = self._plan[-1].open if self._plan else obs["robot_obs"][14] > 0
            return np.array([0, 0, 0, 0, 0, 0, 1.0 if last_open else -1.0])
        self._correct_offset(np.asarray(obs["robot_obs"][:3]), wp)
        action = waypoint_action(self.target_pos - self._offset, self.target_euler, wp)
        action[:3] = self._limit_lead(action[:3], np.asarray(obs["robot_obs"][:3]))
        if self.noise > 0:
            action[:6] = np.clip(action[:6] + self.rng.normal(0, self.noise, 6), -1, 1)
        self.target_pos = self.target_pos + action[:3] * POS_SCALE
        self.target_euler = self.target_euler + action[3:6] * ORN_SCALE
        self._steps += 1
        return action

    def replan(self) -> None:
        """Plan afresh from the next observation (the copy of the stored target is kept)."""
        self._plan = None

    @property
    def finished(self) -> bool:
        """Whether the current plan has no waypoint left (or there is none yet)."""
        return self._plan is None or self._index >= len(self._plan)

    def catch_up(self, tcp: np.ndarray) -> int:
        """Skip waypoints another policy has already got past (the arm is nearer the next waypoint
        than the current one is to it), so labels never send the arm back to a point it skipped.
        Grasps and releases happen in place (a waypoint at the same position with the gripper
        changed, a gap of zero), so they are never skipped. Returns how many were skipped."""
        skipped = 0
        while self._plan is not None and self._index + 1 < len(self._plan):
            here, nxt = self._plan[self._index], self._plan[self._index + 1]
            gap = np.linalg.norm(np.asarray(nxt.pos) - np.asarray(here.pos))
            if np.linalg.norm(np.asarray(tcp) - np.asarray(nxt.pos)) >= gap:
                break
            self._advance()
            skipped += 1
        return skipped

    def _advance(self) -> None:
        """On to the next waypoint, with fresh step, wait and offset counts."""
        self._index, self._steps, self._waited = self._index + 1, 0, 0
        self._offset = np.zeros(3)

    def follow(self, own: np.ndarray, sent: np.ndarray) -> None:
        """The controller received ``sent`` instead of ``own``, the action this expert just returned
        (another policy drove this step): move the copy of the stored target accordingly, and do
        not count the step towards giving up on the current waypoint."""
        own, sent = np.asarray(own, dtype=float), np.clip(np.asarray(sent, dtype=float)[:6], -1.0, 1.0)
        self.target_pos = self.target_pos + (sent[:3] - own[:3]) * POS_SCALE
        self.target_euler = self.target_euler + (sent[3:6] - own[3:6]) * ORN_SCALE
        self._steps = max(self._steps - 1, 0)

    def _limit_lead(self, move: np.ndarray, tcp: np.ndarray) -> np.ndarray:
        """Keep the commanded target within ``MAX_LEAD`` of the TCP: when something blocks the
        arm the target must not run ahead (it would keep shoving after the subtask is done)."""
        new_target = self.target_pos + move * POS_SCALE
        lead = new_target - tcp
        norm = np.linalg.norm(lead)
        if norm <= MAX_LEAD:
            return move
        return np.clip((tcp + lead * (MAX_LEAD / norm) - self.target_pos) / POS_SCALE, -1, 1)

    def _correct_offset(self, tcp: np.ndarray, wp: Waypoint) -> None:
        """Integrate the gap between where the TCP settled and the waypoint.

        The stored target of the controller is not observable and may differ from the TCP
        (after pressing on something, or when a subtask starts); once our model of the target
        has arrived, the remaining TCP error is pushed into an offset that shifts the target.
        """
        if np.linalg.norm(self.target_pos - self._offset - np.asarray(wp.pos)) < 0.004:
            self._offset = self._offset + OFFSET_GAIN * (np.asarray(wp.pos) - tcp)
            norm = np.linalg.norm(self._offset)
            if norm > MAX_OFFSET:
                self._offset *= MAX_OFFSET / norm

    def _current(self, tcp_pose: np.ndarray) -> Waypoint | None:
        """The waypoint to pursue now, advancing past reached (or given-up) ones."""
        while self._index < len(self._plan):
            wp = self._plan[self._index]
            reached = (np.linalg.norm(tcp_pose[:3] - np.asarray(wp.pos)) < wp.tol
                       and np.all(np.abs(_wrap(waypoint_euler(wp) - tcp_pose[3:6])) < ORIENTATION_TOL))
            if reached and self._waited < wp.wait:
                self._waited += 1
                return wp
            if reached or self._steps >= wp.max_steps:
                self._advance()
                continue
            return wp
        return None


def make_expert(scene: str = "D", seed: int = 0, noise: float = 0.0, **_: object) -> ScriptedExpert:
    """Registry factory (``policy=expert``)."""
    return ScriptedExpert(scene=scene, rng=np.random.default_rng(seed), noise=noise)
