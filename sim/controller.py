"""End-effector control as CALVIN does it: relative/absolute 7-D actions onto a stored target
pose, tracked by damped-least-squares inverse kinematics with a null-space pull to the rest pose."""

from __future__ import annotations

import mujoco
import numpy as np

from sim.rotations import euler_to_quat, quat_error
from sim.scene_xml import JOINT_LOWER, JOINT_UPPER
from sim.validation import checked_vector

POS_SCALE = 0.02  # metres per unit of a relative action
ORN_SCALE = 0.05  # radians per unit of a relative action
REST_JOINTS = np.array([-1.21779, 1.03988, 2.11978, -2.34205, -0.87016, 1.64119, 0.55345])
LOWER, UPPER = np.array(JOINT_LOWER), np.array(JOINT_UPPER)


def validate_action(action, size: int = 7) -> np.ndarray:
    """The action as a float array, or a ValueError naming what is wrong with it."""
    return checked_vector("action", action, size)


def relative_to_target(target_pos: np.ndarray, target_euler: np.ndarray, action: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """CALVIN's relative action: clip to [-1, 1], scale, and add onto the stored target pose."""
    a = np.clip(action[:6], -1.0, 1.0)
    return target_pos + a[:3] * POS_SCALE, target_euler + a[3:6] * ORN_SCALE


def gripper_open(action: np.ndarray) -> bool:
    """CALVIN's gripper rule: a positive last component opens, anything else closes."""
    return bool(action[6] > 0)


class IKSolver:
    """Damped least squares on a scratch copy of the model's data (the sim is not disturbed)."""

    def __init__(self, model: mujoco.MjModel, arm_qpos: np.ndarray, arm_dof: np.ndarray, site: int,
                 damping: float = 0.05, nullspace_gain: float = 0.2, iterations: int = 3) -> None:
        self.model, self.site = model, site
        self.data = mujoco.MjData(model)
        self.arm_qpos, self.arm_dof = arm_qpos, arm_dof
        self.damping, self.gain, self.iterations = damping, nullspace_gain, iterations
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))
        self._damping_eye = damping ** 2 * np.eye(6)

    def solve(self, q_start: np.ndarray, pos: np.ndarray, euler: np.ndarray) -> np.ndarray:
        """Joint angles (within limits) that bring the site to ``pos`` / ``euler`` (xyz)."""
        target_quat = euler_to_quat(euler)
        q = q_start.copy()
        for _ in range(self.iterations):
            self.data.qpos[self.arm_qpos] = q
            mujoco.mj_kinematics(self.model, self.data)
            mujoco.mj_comPos(self.model, self.data)
            err = np.concatenate([pos - self.data.site_xpos[self.site],
                                  quat_error(target_quat, self.data.site_xmat[self.site])])
            mujoco.mj_jacSite(self.model, self.data, self._jacp, self._jacr, self.site)
            jac = np.vstack([self._jacp[:, self.arm_dof], self._jacr[:, self.arm_dof]])
            pinv = jac.T @ np.linalg.inv(jac @ jac.T + self._damping_eye)
            null = (np.eye(7) - pinv @ jac) @ (self.gain * (REST_JOINTS - q))
            q = np.clip(q + pinv @ err + null, LOWER, UPPER)
            if np.linalg.norm(err[:3]) < 1e-4 and np.linalg.norm(err[3:]) < 1e-3:
                break
        return q
