"""Fast conversions between CALVIN's Euler angles (extrinsic x-y-z, as PyBullet's) and MuJoCo's
matrices and quaternions; plain NumPy/MuJoCo so the per-step path avoids SciPy's overhead."""

from __future__ import annotations

import mujoco
import numpy as np


def mat_to_euler(mat: np.ndarray) -> np.ndarray:
    """Extrinsic xyz Euler angles (roll, pitch, yaw) of a rotation matrix (3x3 or flat 9)."""
    r = np.asarray(mat, dtype=float).reshape(3, 3)
    pitch = -np.arcsin(np.clip(r[2, 0], -1.0, 1.0))
    if abs(r[2, 0]) < 1.0 - 1e-9:
        return np.array([np.arctan2(r[2, 1], r[2, 2]), pitch, np.arctan2(r[1, 0], r[0, 0])])
    # gimbal lock: only roll - yaw (or roll + yaw) is defined; put it all in roll
    return np.array([np.arctan2(-r[1, 2], r[1, 1]), pitch, 0.0])


def quat_to_euler(quat_wxyz: np.ndarray) -> np.ndarray:
    mat = np.empty(9)
    mujoco.mju_quat2Mat(mat, np.asarray(quat_wxyz, dtype=float))
    return mat_to_euler(mat)


def euler_to_quat(euler: np.ndarray) -> np.ndarray:
    """Quaternion (w, x, y, z) of extrinsic xyz Euler angles."""
    quat = np.empty(4)
    mujoco.mju_euler2Quat(quat, np.asarray(euler, dtype=float), "XYZ")
    return quat


def quat_error(target_wxyz: np.ndarray, current_mat: np.ndarray) -> np.ndarray:
    """World-frame rotation vector that turns the current orientation into the target one."""
    current = np.empty(4)
    mujoco.mju_mat2Quat(current, np.asarray(current_mat, dtype=float).ravel())
    local = np.empty(3)
    mujoco.mju_subQuat(local, np.asarray(target_wxyz, dtype=float), current)
    return np.asarray(current_mat, dtype=float).reshape(3, 3) @ local
