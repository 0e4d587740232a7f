"""Physics wrapper: named accessors over the MuJoCo model, CALVIN observation layouts,
exact state setting, contacts, and the button/LED and switch/lightbulb logic."""

from __future__ import annotations

import mujoco
import numpy as np

from sim import snapshot as S
from sim.rotations import euler_to_quat, mat_to_euler, quat_to_euler
from sim.scene_config import SceneConfig
from sim.scene_xml import BUTTON_RANGE, SWITCH_RANGE, build_mjcf
from sim.validation import checked_vector

CONTACT_DISTANCE = 0.002  # two geoms closer than this touch
CONTROL_HZ = 30  # physics at 240 Hz as CALVIN: 8 substeps per action
ARTICULATIONS = ("slider", "drawer", "button", "switch")
LED_ON, LED_OFF = (0.1, 1.0, 0.1, 1.0), (0.1, 0.2, 0.1, 1.0)
BULB_ON, BULB_OFF = (1.0, 1.0, 0.0, 1.0), (0.3, 0.3, 0.2, 1.0)
# Which contact name each table geom stands for (the rest of the table is its top, base_link).
TABLE_LINKS = {
    "plank": S.PLANK, "drawer": S.DRAWER, "slider": S.SLIDER, "button": S.BUTTON, "switch": S.SWITCH,
}


class PlayTablePhysics:
    """The play-table's MuJoCo model and data with ids looked up once."""

    def __init__(self, cfg: SceneConfig) -> None:
        self.cfg = cfg
        self.model = mujoco.MjModel.from_xml_string(build_mjcf(cfg))
        self.data = mujoco.MjData(self.model)
        m = self.model
        self.substeps = round(1.0 / (CONTROL_HZ * m.opt.timestep))
        self.arm_qpos = np.array([m.jnt_qposadr[m.joint(f"joint{i}").id] for i in range(1, 8)])
        self.arm_dof = np.array([m.jnt_dofadr[m.joint(f"joint{i}").id] for i in range(1, 8)])
        self.finger_qpos = np.array([m.jnt_qposadr[m.joint(f"finger_{s}").id] for s in ("left", "right")])
        self.art_qpos = {n: m.jnt_qposadr[m.joint(n).id] for n in ARTICULATIONS}
        self.block_qpos = {b: m.jnt_qposadr[m.joint(b).id] for b in S.BLOCKS}
        self.block_dof = {b: m.jnt_dofadr[m.joint(b).id] for b in S.BLOCKS}
        self.block_geom = {b: m.geom(b).id for b in S.BLOCKS}
        self.tcp_site = m.site("tcp").id
        self.led_geom, self.bulb_geom = m.geom("led").id, m.geom("lightbulb").id
        self.geom_owner = self._geom_owners()
        # Touching is judged on a probe copy whose geoms report pairs up to CONTACT_DISTANCE
        # apart: resting objects sit at distance ~0, where the real model may list no contact.
        self._probe_model = mujoco.MjModel.from_xml_string(build_mjcf(cfg))
        self._probe_model.geom_margin[:] = CONTACT_DISTANCE
        self._probe = mujoco.MjData(self._probe_model)
        self.led = 0
        self.gripper_action = 1.0
        self._button_was_pressed = False

    def _geom_owners(self) -> list[str]:
        """Contact name of every geom: the robot, a table link, a block or the floor."""
        m = self.model
        robot_root = m.body("panda_base").id
        table_root = m.body("table").id
        owners = []
        for g in range(m.ngeom):
            body = m.geom_bodyid[g]
            name = m.body(body).name
            if m.body_rootid[body] == robot_root:
                owners.append(S.ROBOT)
            elif name in S.BLOCKS:
                owners.append(name)
            elif m.body_rootid[body] == table_root and body != 0:
                owners.append(TABLE_LINKS.get(name, TABLE_LINKS.get(m.geom(g).name, S.TABLE_TOP)))
            else:
                owners.append("floor")
        return owners

    # ---- observations -------------------------------------------------------------------
    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        pos = self.data.site_xpos[self.tcp_site].copy()
        return pos, mat_to_euler(self.data.site_xmat[self.tcp_site])

    def arm_joints(self) -> np.ndarray:
        return self.data.qpos[self.arm_qpos].copy()

    def gripper_width(self) -> float:
        return float(self.data.qpos[self.finger_qpos].sum())

    def robot_obs(self) -> np.ndarray:
        pos, euler = self.tcp_pose()
        return np.concatenate([pos, euler, [self.gripper_width()], self.arm_joints(), [self.gripper_action]])

    def lightbulb(self) -> int:
        return int(self.data.qpos[self.art_qpos["switch"]] > SWITCH_RANGE / 2)

    def scene_obs(self) -> np.ndarray:
        q = self.data.qpos
        out = [q[self.art_qpos[n]] for n in ARTICULATIONS] + [self.lightbulb(), self.led]
        for b in S.BLOCKS:
            a = self.block_qpos[b]
            out.extend(q[a:a + 3])
            out.extend(quat_to_euler(q[a + 3:a + 7]))
        return np.asarray(out, dtype=float)

    def contacts(self) -> dict[str, frozenset[str]]:
        touching: dict[str, set[str]] = {b: set() for b in S.BLOCKS}
        d = self._probe
        d.qpos[:] = self.data.qpos
        mujoco.mj_kinematics(self._probe_model, d)
        mujoco.mj_collision(self._probe_model, d)
        for i in range(d.ncon):
            c = d.contact[i]
            if c.dist > CONTACT_DISTANCE:
                continue
            a, b = self.geom_owner[c.geom1], self.geom_owner[c.geom2]
            if a in touching:
                touching[a].add(b)
            if b in touching:
                touching[b].add(a)
        return {k: frozenset(v) for k, v in touching.items()}

    def block_velocities(self) -> dict[str, np.ndarray]:
        out = {}
        for b in S.BLOCKS:
            v = self.data.qvel[self.block_dof[b]:self.block_dof[b] + 6]
            # A free joint's angular velocity is in the body frame; report it in the world frame.
            rot = self.data.xmat[self.model.geom_bodyid[self.block_geom[b]]].reshape(3, 3)
            out[b] = np.concatenate([v[:3], rot @ v[3:]])
        return out

    def snapshot(self) -> S.Snapshot:
        return S.Snapshot(self.robot_obs(), self.scene_obs(), self.contacts(), self.block_velocities())

    # ---- state ----------------------------------------------------------------------------
    def set_state(self, robot_obs: np.ndarray, scene_obs: np.ndarray) -> None:
        """Put the world exactly in the CALVIN state (robot_obs (15,), scene_obs (24,))."""
        robot_obs = checked_vector("robot_obs", robot_obs, 15)
        scene_obs = checked_vector("scene_obs", scene_obs, 24)
        mujoco.mj_resetData(self.model, self.data)
        q = self.data.qpos
        q[self.arm_qpos] = robot_obs[7:14]
        q[self.finger_qpos] = np.clip(robot_obs[6] / 2, 0, 0.04)
        self.gripper_action = 1.0 if robot_obs[14] > 0 else -1.0
        for i, n in enumerate(ARTICULATIONS):
            q[self.art_qpos[n]] = scene_obs[i]
        self.led = round(scene_obs[S.LED_IDX])
        for b in S.BLOCKS:
            a, pose = self.block_qpos[b], scene_obs[S.BLOCK_SLICES[b]]
            q[a:a + 3] = pose[:3]
            q[a + 3:a + 7] = euler_to_quat(pose[3:])
        self.data.ctrl[:7] = robot_obs[7:14]
        self.data.ctrl[7:9] = 0.04 if self.gripper_action > 0 else 0.0
        self._button_was_pressed = self._button_pressed()
        mujoco.mj_forward(self.model, self.data)
        self._update_light_colours()

    def _button_pressed(self) -> bool:
        return bool(self.data.qpos[self.art_qpos["button"]] > BUTTON_RANGE / 2)

    def step(self, arm_ctrl: np.ndarray, gripper_open: bool) -> None:
        """Advance one control period (1/30 s) towards the given joint targets."""
        self.data.ctrl[:7] = arm_ctrl
        self.data.ctrl[7:9] = 0.04 if gripper_open else 0.0
        self.gripper_action = 1.0 if gripper_open else -1.0
        for _ in range(self.substeps):
            mujoco.mj_step(self.model, self.data)
            pressed = self._button_pressed()
            if pressed and not self._button_was_pressed:
                self.led = 1 - self.led
            self._button_was_pressed = pressed
        self._update_light_colours()

    def _update_light_colours(self) -> None:
        self.model.geom_rgba[self.led_geom] = LED_ON if self.led else LED_OFF
        self.model.geom_rgba[self.bulb_geom] = BULB_ON if self.lightbulb() else BULB_OFF

