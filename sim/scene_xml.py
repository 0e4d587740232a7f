"""MJCF for the play-table: Franka Panda (longer fingers), table with drawer, sliding door,
button + LED, switch + lightbulb, three blocks, and CALVIN's two cameras.

Geometry follows CALVIN's URDFs at ``global_scaling`` 0.8; the table meshes are not
available, so the table is rebuilt from boxes placed around the URDF joint origins.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from sim.scene_config import ASSETS, BLOCK_COLOURS, SceneConfig

TABLE_TOP_Z = 0.44
ROBOT_BASE = (-0.34, -0.46, 0.24)
# Switch rail: URDF rpy (150 deg about x) with axis -z equals +z of a frame turned -30 deg about x.
SWITCH_FRAME_DEG = -30.0
SWITCH_RANGE = 0.088
DRAWER_RANGE = 0.22
BUTTON_RANGE = 0.02
# Door centre sits this far right of the slide joint origin (puts it over slider_right at q=0).
DOOR_OFFSET_X = 0.14
# The door runs just in front of the shelf, clear of blocks standing anywhere on it.
DOOR_Y = 0.03
DOOR_HALF_THICKNESS = 0.008
# The shelf tower carrying the LED and the lightbulb stands behind TOWER_Y, far enough back that
# the hand (0.2 m long) clears it while grasping on the shelf.
TOWER_Y = 0.22
TABLE_BACK_Y = 0.27
SHELF_HALF_WIDTH = 0.30  # inner half width of the shelf between its side walls

# contype/conaffinity bits: robot geoms never collide with each other.
WORLD_COLLISION = 'contype="1" conaffinity="3"'
ROBOT_COLLISION = 'contype="2" conaffinity="1"'

# Panda kinematics from CALVIN's panda_longer_finger.urdf: (pos, rpy) of each joint.
PANDA_CHAIN = [
    ((0, 0, 0.333), (0, 0, 0)),
    ((0, 0, 0), (-np.pi / 2, 0, 0)),
    ((0, -0.316, 0), (np.pi / 2, 0, 0)),
    ((0.0825, 0, 0), (np.pi / 2, 0, 0)),
    ((-0.0825, 0.384, 0), (-np.pi / 2, 0, 0)),
    ((0, 0, 0), (np.pi / 2, 0, 0)),
    ((0.088, 0, 0), (np.pi / 2, 0, 0)),
]
JOINT_LOWER = (-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973)
JOINT_UPPER = (2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973)
ARM_KP = (4000, 4000, 3000, 3000, 1500, 1500, 1000)
LINK_MASS = (2.7, 2.7, 2.0, 2.1, 3.0, 1.3, 0.6)
FLANGE_Z = 0.107
HAND_YAW = -np.pi / 4
FINGER_Z = 0.0584
TCP_Z = 0.14
GRIPPER_CAM = ((-0.1, 0, 0), (1.3, 0, -1.57))

STATIC_CAMERA = {
    'eye': (2.871459009488717, -2.166602199425597, 2.555159848480571),
    'look_at': (-0.026242351159453392, -0.0302329882979393, 0.3920000493526459),
    'up': (0.4041403970338857, 0.22629790978217404, 0.8862616969685161),
    'fovy': 10.0,
}


def _f(values) -> str:
    return " ".join(f"{float(v):.6g}" for v in values)


def _quat(rpy) -> str:
    """URDF rpy (fixed axes x, y, z) as an MJCF quaternion (w x y z)."""
    x, y, z, w = Rotation.from_euler("xyz", rpy).as_quat()
    return _f((w, x, y, z))


def _box(name: str, lo, hi, rgba, extra: str = "") -> str:
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return (f'<geom name="{name}" type="box" pos="{_f((lo + hi) / 2)}" size="{_f((hi - lo) / 2)}" '
            f'rgba="{_f(rgba)}" {WORLD_COLLISION} {extra}/>')


def _static_camera_xml() -> str:
    eye = np.array(STATIC_CAMERA["eye"])
    forward = np.array(STATIC_CAMERA["look_at"]) - eye
    forward /= np.linalg.norm(forward)
    x_axis = np.cross(forward, STATIC_CAMERA["up"])
    x_axis /= np.linalg.norm(x_axis)
    y_axis = np.cross(x_axis, forward)
    return (f'<camera name="static" pos="{_f(eye)}" xyaxes="{_f(x_axis)} {_f(y_axis)}" '
            f'fovy="{STATIC_CAMERA["fovy"]}"/>')


def _gripper_camera_xml() -> str:
    pos, rpy = GRIPPER_CAM
    link = Rotation.from_euler("xyz", rpy).as_matrix()
    # The image looks along the link's +y with its -z up; MJCF cameras look along -z, +y up.
    cam = link @ np.array([[-1, 0, 0], [0, 0, -1], [0, -1, 0]]).T
    return (f'<camera name="gripper" pos="{_f(pos)}" xyaxes="{_f(cam[:, 0])} {_f(cam[:, 1])}" '
            'fovy="75"/>')


def _finger_xml(side: str, sign: int) -> str:
    """A longer finger: a pad whose inner face is at the joint's coordinate (width = 2 q)."""
    pad = f'size="0.011 0.005 0.036" pos="0 {sign * 0.005} 0.054"'
    base = f'size="0.011 0.011 0.018" pos="0 {sign * 0.012} 0.012"'
    return f"""
        <body name="{side}_finger" pos="0 0 {FINGER_Z}">
          <joint name="finger_{side}" type="slide" axis="0 {sign} 0" range="0 0.04" damping="20"
                 armature="0.5"/>
          <inertial pos="0 0 0.04" mass="0.1" diaginertia="1e-4 1e-4 1e-4"/>
          <geom name="{side}_finger_pad" type="box" {pad} rgba="0.25 0.25 0.25 1" {ROBOT_COLLISION}
                friction="1.5 0.01 0.001" condim="4" solref="0.005 1"/>
          <geom name="{side}_finger_base" type="box" {base} rgba="0.8 0.8 0.8 1" {ROBOT_COLLISION}/>
        </body>"""


def _panda_xml() -> str:
    """Nested bodies of the arm, innermost last; meshes are the low-polygon Franka set."""
    opening = ""
    closing = ""
    for i, ((pos, rpy), lo, hi, mass) in enumerate(zip(PANDA_CHAIN, JOINT_LOWER, JOINT_UPPER, LINK_MASS)):
        opening += f"""
      <body name="link{i + 1}" pos="{_f(pos)}" quat="{_quat(rpy)}" gravcomp="1">
        <joint name="joint{i + 1}" range="{lo} {hi}" damping="{40 if i < 4 else 10}" armature="0.1"/>
        <inertial pos="0 0 0" mass="{mass}" diaginertia="0.02 0.02 0.02"/>
        <geom type="mesh" mesh="link{i + 1}" rgba="0.92 0.92 0.92 1" {ROBOT_COLLISION}/>"""
        closing = "\n      </body>" + closing
    hand = f"""
        <body name="hand" pos="0 0 {FLANGE_Z}" quat="{_quat((0, 0, HAND_YAW))}" gravcomp="1">
          <inertial pos="0 0 0.04" mass="0.7" diaginertia="0.002 0.002 0.002"/>
          <geom type="mesh" mesh="hand" rgba="0.92 0.92 0.92 1" {ROBOT_COLLISION}/>
          <site name="tcp" pos="0 0 {TCP_Z}" size="0.005" rgba="1 0 0 0"/>
          {_gripper_camera_xml()}
          {_finger_xml("left", 1)}
          {_finger_xml("right", -1)}
        </body>"""
    base = f"""
    <body name="panda_base" pos="{_f(ROBOT_BASE)}">
      <geom type="box" pos="0 0 {-ROBOT_BASE[2] / 2}" size="0.12 0.12 {ROBOT_BASE[2] / 2}"
            rgba="0.3 0.3 0.3 1" {ROBOT_COLLISION}/>
      <geom type="mesh" mesh="link0" rgba="0.92 0.92 0.92 1" {ROBOT_COLLISION}/>"""
    return base + opening + hand + closing + "\n    </body>"


def _table_xml(cfg: SceneConfig) -> str:
    lay = cfg.layout
    col = cfg.colour
    white = (0.93, 0.93, 0.9, 1)
    dx, px = lay.drawer[0], lay.plank[0]
    top = TABLE_TOP_Z
    parts = [
        _box("table_left", (-0.55, -0.19, 0), (dx - 0.16, TABLE_BACK_Y, top - 0.03), col),
        _box("table_right", (dx + 0.16, -0.19, 0), (0.55, TABLE_BACK_Y, top - 0.03), col),
        _box("table_under_drawer", (dx - 0.16, -0.19, 0), (dx + 0.16, TABLE_BACK_Y, 0.31), col),
        _box("table_behind_drawer", (dx - 0.16, 0.075, 0.31), (dx + 0.16, TABLE_BACK_Y, top - 0.03), col),
        _box("table_top", (-0.55, -0.19, top - 0.03), (0.55, 0.03, top), col),
        _box("table_back_left", (-0.55, 0.03, top - 0.03), (px - SHELF_HALF_WIDTH, TOWER_Y, top), col),
        _box("table_back_right", (px + SHELF_HALF_WIDTH, 0.03, top - 0.03), (0.55, TOWER_Y, top), col),
        _box("shelf_tower", (-0.55, TOWER_Y, top - 0.03), (0.55, TABLE_BACK_Y, 0.63), white),
        _box("shelf_side_left", (px - 0.32, 0.03, top), (px - SHELF_HALF_WIDTH, TOWER_Y, 0.5), white),
        _box("shelf_side_right", (px + SHELF_HALF_WIDTH, 0.03, top), (px + 0.32, TOWER_Y, 0.5), white),
        _box("plank", (px - SHELF_HALF_WIDTH, 0.03, top - 0.02), (px + SHELF_HALF_WIDTH, TOWER_Y, top), white),
    ]
    led, bulb = lay.led, lay.lightbulb
    parts.append(f'<geom name="led" type="box" pos="{_f((led[0], TOWER_Y + 0.025, 0.64))}" size="0.03 0.02 0.01" '
                 f'rgba="0.1 0.2 0.1 1" {WORLD_COLLISION}/>')
    parts.append(f'<geom name="lightbulb" type="sphere" pos="{_f((bulb[0], TOWER_Y + 0.025, 0.655))}" size="0.025" '
                 f'rgba="0.3 0.3 0.2 1" {WORLD_COLLISION}/>')
    sw_quat = _quat((np.deg2rad(SWITCH_FRAME_DEG), 0, 0))
    parts.append(f"""
      <body name="switch_panel" pos="{_f(lay.switch)}" quat="{sw_quat}">
        {_box("switch_panel_geom", (-0.04, 0.002, -0.03), (0.04, 0.018, 0.13), white)}
      </body>
      <body name="switch" pos="{_f(lay.switch)}" quat="{sw_quat}" gravcomp="1">
        <!-- gravity-compensated: a soft friction constraint alone lets the knob creep down the rail -->
        <joint name="switch" type="slide" axis="0 0 1" range="0 {SWITCH_RANGE}" damping="50"
               frictionloss="3"/>
        <geom name="switch_knob" type="box" pos="0 -0.022 0" size="0.015 0.02 0.012"
              rgba="0.4 0.4 0.4 1" mass="0.2" {WORLD_COLLISION}/>
      </body>
      <geom name="button_base" type="cylinder" pos="{_f((lay.button[0], lay.button[1], top + 0.006))}"
            size="0.036 0.006" rgba="0.6 0.6 0.6 1" contype="0" conaffinity="0"/>
      <body name="button" pos="{_f(lay.button)}">
        <joint name="button" type="slide" axis="0 0 -1" range="0 {BUTTON_RANGE}" stiffness="300"
               springref="-0.005" damping="5"/>
        <geom name="button_cap" type="cylinder" pos="0 0 0.012" size="0.03 0.008" rgba="0.05 0.05 0.05 1"
              mass="0.15" {WORLD_COLLISION}/>
      </body>
      <body name="drawer" pos="{_f(lay.drawer)}">
        <joint name="drawer" type="slide" axis="0 -1 0" range="0 {DRAWER_RANGE}" damping="20"
               frictionloss="2"/>
        {_box("drawer_bottom", (-0.14, -0.195, 0.005), (0.14, 0.045, 0.025), white, 'mass="2"')}
        {_box("drawer_front", (-0.15, -0.215, 0.005), (0.15, -0.195, 0.095), white, 'mass="0.5"')}
        {_box("drawer_back", (-0.14, 0.045, 0.005), (0.14, 0.065, 0.045), white, 'mass="0.3"')}
        {_box("drawer_side_l", (-0.15, -0.195, 0.005), (-0.14, 0.065, 0.075), white, 'mass="0.2"')}
        {_box("drawer_side_r", (0.14, -0.195, 0.005), (0.15, 0.065, 0.075), white, 'mass="0.2"')}
        {_box("drawer_handle", (-0.015, -0.26, 0.045), (0.015, -0.215, 0.075), (0.3, 0.3, 0.3, 1),
              'mass="0.1"')}
      </body>
      <body name="slider" pos="{_f((lay.slide[0] + DOOR_OFFSET_X, DOOR_Y, top))}">
        <joint name="slider" type="slide" axis="-1 0 0" range="0 {lay.slide_range}" damping="20"
               frictionloss="2"/>
        {_box("slider_door", (-0.13, -DOOR_HALF_THICKNESS, 0.015), (0.13, DOOR_HALF_THICKNESS, 0.16), white,
              'mass="1"')}
        {_box("slider_handle", (-0.01, -0.036, 0.06), (0.01, -0.008, 0.11), (0.3, 0.3, 0.3, 1), 'mass="0.1"')}
      </body>""")
    return "\n      ".join(parts)


def _blocks_xml(cfg: SceneConfig) -> str:
    out = []
    for i, (name, size) in enumerate(cfg.block_sizes.items()):
        half = np.asarray(size) / 2
        out.append(f"""
    <body name="{name}" pos="{0.1 * i} -0.1 {TABLE_TOP_Z + half[2]}">
      <freejoint name="{name}"/>
      <geom name="{name}" type="box" size="{_f(half)}" rgba="{_f(BLOCK_COLOURS[name])}" mass="1"
            friction="0.7 0.005 0.0001" condim="4" {WORLD_COLLISION}/>
    </body>""")
    return "".join(out)


def build_mjcf(cfg: SceneConfig) -> str:
    """The whole scene as an MJCF string (mesh paths are absolute)."""
    meshes = "".join(f'<mesh name="{n}" file="{ASSETS / "franka" / (n + ".stl")}"/>'
                     for n in ["link0", "link1", "link2", "link3", "link4", "link5", "link6", "link7", "hand"])
    shadow = "true" if cfg.shadows else "false"
    return f"""
<mujoco model="calvin_play_table_{cfg.name}">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{1 / 240}" integrator="implicitfast" cone="elliptic" impratio="5"/>
  <visual>
    <global offwidth="640" offheight="640"/>
    <quality offsamples="0" shadowsize="{1024 if cfg.shadows else 0}"/>
    <headlight ambient="0.4 0.4 0.4" diffuse="0.4 0.4 0.4" specular="0 0 0"/>
    <map znear="0.005" zfar="10"/>
  </visual>
  <default>
    <!-- Table and fixture friction: low enough that a pushed block slides instead of tipping. -->
    <geom friction="0.5 0.005 0.0001"/>
  </default>
  <asset>{meshes}
    <texture name="grid" type="2d" builtin="checker" rgb1="0.35 0.35 0.38" rgb2="0.3 0.3 0.33" width="64" height="64"/>
    <material name="floor" texture="grid" texrepeat="8 8"/>
  </asset>
  <worldbody>
    <light name="sun" directional="true" pos="0 -1 3" dir="0.2 0.4 -1" diffuse="0.6 0.6 0.6" castshadow="{shadow}"/>
    <geom name="floor" type="plane" size="3 3 0.1" material="floor" {WORLD_COLLISION}/>
    {_static_camera_xml()}
    <body name="table">
      {_table_xml(cfg)}
    </body>
    {_panda_xml()}
    {_blocks_xml(cfg)}
  </worldbody>
  <actuator>
    {"".join(f'<position name="a{i + 1}" joint="joint{i + 1}" kp="{kp}" kv="{kp / 20:.0f}" '
             f'ctrlrange="{lo} {hi}"/>' for i, (kp, lo, hi) in enumerate(zip(ARM_KP, JOINT_LOWER, JOINT_UPPER)))}
    <position name="finger_left" joint="finger_left" kp="800" ctrlrange="0 0.04" forcerange="-40 40"/>
    <position name="finger_right" joint="finger_right" kp="800" ctrlrange="0 0.04" forcerange="-40 40"/>
  </actuator>
</mujoco>"""
