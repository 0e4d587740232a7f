"""The MuJoCo play-table as a robot (no ROS).

An absolute Cartesian target that the arm tracks, one physics step per control tick (30 Hz), and
the observations a robot driver would publish.

The target is held between commands (``apply(None)``), so a silent controller never sends the arm
towards zeros. Images are rendered on demand, at most once per tick, in the thread that asks first
(the GL context stays bound to it). Times are simulated seconds: 0 at reset, + 1/30 per tick.
"""

from __future__ import annotations

from collections.abc import Mapping

import mujoco
import numpy as np

from ros_nodes.types import Command
from sim.cameras import CAMERAS, CameraRig, segment_ids
from sim.chains import Chain
from sim.env import PlayTableEnv
from sim.physics import CONTROL_HZ
from sim.snapshot import Snapshot
from sim.symbolic_state import physical_state
from sim.task_oracle import TaskOracle

JOINT_NAMES = tuple(f"joint{i}" for i in range(1, 8))  # the arm joints, in robot_obs order
FINGER_NAMES = ("finger_left", "finger_right")  # each opens 0-0.04 m; the gripper width is their sum
IMAGE_SHAPES = {f"rgb_{c.name}": (c.size, c.size, 3) for c in CAMERAS}  # rgb_static 200, rgb_gripper 84
STATE_KEYS = ("robot_obs", "scene_obs")


def chain_start(chain: Chain) -> dict[str, np.ndarray]:
    """The physical start state of a CALVIN evaluation chain, for ``SimRobot.reset``."""
    return dict(zip(STATE_KEYS, physical_state(chain.initial_state)))


class SimRobot:
    """PlayTableEnv driven by absolute targets (tcp position, XYZ Euler, gripper -1 closed / 1 open)."""

    period = 1.0 / CONTROL_HZ

    def __init__(self, scene: str = "D", seed: int = 0, render: bool = True) -> None:
        self.env = PlayTableEnv(scene, action_type="abs", render=False)
        self.render = render
        self._seed: int | None = seed
        self._oracle = TaskOracle()
        self._cameras: CameraRig | None = None
        self._images: dict[str, np.ndarray] | None = None
        self.steps = 0
        self.reset()

    # ---- control ---------------------------------------------------------------------------------
    def reset(self, state: Mapping[str, np.ndarray] | None = None) -> None:
        """Reset to ``state`` ({robot_obs (15,), scene_obs (24,)}, either optional).

        CALVIN's neutral robot and a scene drawn from the seeded generator where missing; the target
        is the reached pose.
        """
        state = dict(state or {})
        unknown = sorted(set(state) - set(STATE_KEYS))
        if unknown:
            raise ValueError(f"reset state has unknown keys {unknown}; expected some of {list(STATE_KEYS)}")
        self.env.reset(seed=self._seed, options=state)
        self._seed = None  # later resets continue the seeded stream
        robot_obs = self.env.physics.robot_obs()
        self._target = np.concatenate([self.env.target_pos, self.env.target_euler, robot_obs[14:15]])
        self.steps = 0
        self._images = None

    def apply(self, command: Command | None) -> None:
        """Track ``command`` from the next tick on; None keeps the last target (hold, never zeros)."""
        if command is None:
            return
        target = np.asarray(command.as_array(), dtype=np.float64)
        if target.shape != (7,) or not np.all(np.isfinite(target)):
            raise ValueError("command must be finite position (3), euler (3), gripper, "
                             f"got {target.tolist()}")
        self._target = target

    def step(self) -> None:
        """One control tick: IK towards the target, then 1/30 s of physics."""
        self.env.step(self._target)
        self.steps += 1
        self._images = None

    def advance(self, now: float) -> int:
        """Step whole ticks until the simulated time reaches ``now`` (s); returns the ticks taken."""
        taken = 0
        while (self.steps + 1) * self.period <= now + 1e-9:
            self.step()
            taken += 1
        return taken

    @property
    def target(self) -> Command:
        """The target the arm tracks now, stamped with the current time."""
        return Command.from_array(self.time, self._target)

    # ---- observations ----------------------------------------------------------------------------
    @property
    def time(self) -> float:
        """Simulated seconds since reset."""
        return self.steps * self.period

    def images(self) -> dict[str, np.ndarray]:
        """rgb_static (200, 200, 3) and rgb_gripper (84, 84, 3) uint8 of the current state."""
        if not self.render:
            raise RuntimeError("this SimRobot was made with render=False: it has no cameras")
        if self._images is None:
            if self._cameras is None:
                physics = self.env.physics
                self._cameras = CameraRig(physics.model, segment_ids(physics.geom_owner), segmentation=False)
            frames = self._cameras.render(self.env.physics.data)
            self._images = {key: frames[key] for key in IMAGE_SHAPES}
        return self._images

    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """(position (3,) m, orientation quaternion (4,) w, x, y, z) in the world frame."""
        physics = self.env.physics
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, physics.data.site_xmat[physics.tcp_site])
        return physics.data.site_xpos[physics.tcp_site].copy(), quat

    def joint_positions(self) -> np.ndarray:
        """(7,) rad, in the order of JOINT_NAMES."""
        return self.env.physics.arm_joints()

    def joint_velocities(self) -> np.ndarray:
        """(7,) rad/s, in the order of JOINT_NAMES."""
        physics = self.env.physics
        return physics.data.qvel[physics.arm_dof].copy()

    def finger_positions(self) -> np.ndarray:
        """(2,) m, in the order of FINGER_NAMES."""
        physics = self.env.physics
        return physics.data.qpos[physics.finger_qpos].copy()

    def gripper_width(self) -> float:
        """Opening of the gripper (m): the sum of the finger positions."""
        return self.env.physics.gripper_width()

    def robot_obs(self) -> np.ndarray:
        """CALVIN's robot_obs, shape (15,), of the current state."""
        return self.env.physics.robot_obs()

    def scene_obs(self) -> np.ndarray:
        """CALVIN's scene_obs, shape (24,), of the current state.

        Privileged simulator state: no robot has it.
        """
        return self.env.physics.scene_obs()

    # ---- task oracle -----------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The current state, for ``succeeded`` later."""
        return self.env.snapshot()

    def succeeded(self, task: str, since_snapshot: Snapshot) -> bool:
        """Whether CALVIN's success rule of ``task`` holds between ``since_snapshot`` and now."""
        return self._oracle.succeeded(task, since_snapshot, self.snapshot())

    def close(self) -> None:
        """Free the renderer; safe to call more than once."""
        if self._cameras is not None:
            self._cameras.close()
            self._cameras = None
        self.env.close()
