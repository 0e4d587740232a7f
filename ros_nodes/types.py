"""Plain data that the ROS-side classes exchange (no ROS, no torch).

Stamped samples of observation streams and the commands the policy node sends to the robot.

Conventions (CALVIN's, as the policy and the play-table use them):
- times are seconds (float, the ROS clock: ``header.stamp`` as ``sec + nanosec * 1e-9``);
- ``robot_obs`` (15,): tcp position (3, m), tcp orientation as XYZ Euler angles (3, rad), gripper
  opening width (1, m), arm joint positions (7, rad), last gripper action (1, -1 closed / 1 open);
- a relative action (7,): position and Euler-angle deltas in units of ``POSITION_STEP`` m and
  ``ROTATION_STEP`` rad (each clipped to [-1, 1]), gripper (-1 close / 1 open).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POSITION_STEP = 0.02  # m per unit of relative action (CALVIN's max_rel_pos)
ROTATION_STEP = 0.05  # rad per unit of relative action (CALVIN's max_rel_orn)
OBSERVATION_FEATURES = ("rgb_static", "rgb_gripper", "robot_obs")


@dataclass(frozen=True)
class Sample:
    """One message of an observation stream, already converted to its feature value."""

    stamp: float  # seconds
    value: np.ndarray


@dataclass(frozen=True)
class Command:
    """An absolute Cartesian target for the robot: tcp position (3,) m, XYZ Euler (3,) rad, gripper -1/1."""

    stamp: float  # seconds: the control tick this command is for
    position: np.ndarray
    euler: np.ndarray
    gripper: float

    def as_array(self) -> np.ndarray:
        """(7,) position, euler, gripper."""
        return np.concatenate([self.position, self.euler, [self.gripper]])

    @classmethod
    def from_array(cls, stamp: float, values: np.ndarray) -> Command:
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (7,):
            raise ValueError("a command is 7 values (position 3, euler 3, gripper 1), "
                             f"got shape {values.shape}")
        return cls(stamp, values[:3].copy(), values[3:6].copy(), float(values[6]))
