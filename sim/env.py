"""Gymnasium environment of the play-table with CALVIN's observations and actions."""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from sim.cameras import SEGMENT_NAMES, CameraRig, segment_ids  # noqa: F401 (SEGMENT_NAMES re-exported)
from sim.controller import IKSolver, gripper_open, relative_to_target, validate_action
from sim.physics import PlayTablePhysics
from sim.scene_config import SceneConfig
from sim.snapshot import Snapshot
from sim.state_sampler import default_robot_obs, sample_scene_obs


class PlayTableEnv(gym.Env):
    """CALVIN play-table on MuJoCo. Actions: 7-D relative (default) or absolute EE targets."""

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, scene: SceneConfig | str = "D", action_type: str = "rel", render: bool = True,
                 segmentation: bool = False) -> None:
        self.cfg = scene if isinstance(scene, SceneConfig) else \
            SceneConfig(name=scene, render=render, segmentation=segmentation)
        if action_type not in ("rel", "abs"):
            raise ValueError(f"action_type must be 'rel' or 'abs', got {action_type!r}")
        self.action_type = action_type
        self.physics = PlayTablePhysics(self.cfg)
        p = self.physics
        self.ik = IKSolver(p.model, p.arm_qpos, p.arm_dof, p.tcp_site)
        self.cameras = None
        if self.cfg.render:
            self.cameras = CameraRig(p.model, segment_ids(p.geom_owner), self.cfg.segmentation)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (7,), np.float64) if action_type == "rel" else \
            gym.spaces.Box(-np.inf, np.inf, (7,), np.float64)
        self.observation_space = gym.spaces.Dict({
            "robot_obs": gym.spaces.Box(-np.inf, np.inf, (15,), np.float64),
            "scene_obs": gym.spaces.Box(-np.inf, np.inf, (24,), np.float64),
        })
        self.target_pos = np.zeros(3)
        self.target_euler = np.zeros(3)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        robot_obs = options.get("robot_obs")
        scene_obs = options.get("scene_obs")
        if robot_obs is None:
            robot_obs = default_robot_obs()
        if scene_obs is None:
            scene_obs = sample_scene_obs(self.np_random, self.cfg)
        self.physics.set_state(robot_obs, scene_obs)
        self.target_pos, self.target_euler = self.physics.tcp_pose()
        return self._obs(), {"snapshot": self.physics.snapshot()}

    def step(self, action):
        action = validate_action(action)
        if self.action_type == "rel":
            self.target_pos, self.target_euler = relative_to_target(self.target_pos, self.target_euler, action)
        else:
            self.target_pos, self.target_euler = action[:3].copy(), action[3:6].copy()
        q = self.ik.solve(self.physics.arm_joints(), self.target_pos, self.target_euler)
        self.physics.step(q, gripper_open(action))
        return self._obs(), 0.0, False, False, {"snapshot": self.physics.snapshot()}

    def snapshot(self) -> Snapshot:
        return self.physics.snapshot()

    def _obs(self) -> dict[str, np.ndarray]:
        obs = {"robot_obs": self.physics.robot_obs(), "scene_obs": self.physics.scene_obs()}
        if self.cameras is not None:
            obs.update(self.cameras.render(self.physics.data))
        return obs

    def render(self, camera: str = "static", size: int = 200) -> np.ndarray:
        if self.cameras is None:
            raise RuntimeError("no cameras: rendering is off (SceneConfig.render=False) or the env was closed")
        return self.cameras.render_view(self.physics.data, camera, size)

    def close(self) -> None:
        if self.cameras is not None:
            self.cameras.close()
            self.cameras = None
