"""Waypoint plans for the scripted expert: pure functions from (task, observation, scene
layout) to a list of end-effector waypoints. Only the robot's own state, the fixtures' known
places and the object poses in ``scene_obs`` are used."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim import snapshot as S
from sim.grasp import choose_grasp, to_yaw_band
from sim.scene_config import SceneConfig
from sim.scene_xml import DOOR_OFFSET_X, DOOR_Y, DRAWER_RANGE, SWITCH_FRAME_DEG, SWITCH_RANGE, TABLE_TOP_Z

SAFE_Z = 0.62
YAW_X_FINGERS = np.pi / 2  # yaw (gripper pointing down) at which the fingers close along world x
YAW_Y_FINGERS = 0.0  # ... along world y
DRAWER_ALIGNED = 0.06  # a block this close to the drawer's centre line falls in when pushed
SHELF_FRONT_Y = 0.03  # blocks behind this line stand on the slider's shelf
# Pushes along x lean the fingertips towards +x (radians about world y): the wrist then stays
# back towards the robot, whose reach ends near the table's right edge.
PUSH_LEAN = -0.35


@dataclass(frozen=True)
class Waypoint:
    """Move the TCP to ``pos`` with yaw ``yaw`` (pointing down), gripper open or closed.

    ``tilt`` turns the pointing-down gripper about world x (positive: fingertips towards +y),
    ``lean`` then about world y (negative: fingertips towards +x).
    ``tol`` is how close the TCP must get before moving on; ``wait`` holds the pose that many
    steps once reached (for the gripper to act); ``max_steps`` gives up on reaching it.
    """

    pos: tuple[float, float, float]
    yaw: float
    open: bool
    tol: float = 0.01
    wait: int = 0
    max_steps: int = 60
    tilt: float = 0.0
    lean: float = 0.0


def _wp(pos, yaw, open_, **kw) -> Waypoint:
    return Waypoint(tuple(float(v) for v in pos), float(yaw), bool(open_), **kw)


def _block(scene_obs: np.ndarray, block: str) -> tuple[np.ndarray, float]:
    pose = scene_obs[S.BLOCK_SLICES[block]]
    return np.asarray(pose[:3]), float(pose[5])


def _travel(tcp: np.ndarray, above: np.ndarray, yaw: float, open_: bool) -> list[Waypoint]:
    """Cross over at the safe height to above ``above`` (``plan`` has already risen)."""
    return [_wp((above[0], above[1], max(SAFE_Z, tcp[2])), yaw, open_, tol=0.02)]


def _rise(robot_obs: np.ndarray) -> Waypoint:
    """Straight up from where the last subtask left the gripper, keeping its yaw and its grip
    (opening next to a block would shove it)."""
    tcp = robot_obs[:3]
    return _wp((tcp[0], tcp[1], max(SAFE_Z, tcp[2])), to_yaw_band(float(robot_obs[5])),
               bool(robot_obs[14] > 0), tol=0.03)


def pick(tcp: np.ndarray, pos: np.ndarray, yaw: float, lift: float = 0.12) -> list[Waypoint]:
    return _travel(tcp, pos, yaw, True) + [
        _wp(pos + (0, 0, 0.06), yaw, True, tol=0.01),
        _wp(pos + (0, 0, -0.003), yaw, True, tol=0.006, max_steps=40),
        _wp(pos + (0, 0, -0.003), yaw, False, wait=8),
        _wp(pos + (0, 0, lift), yaw, False, tol=0.02),
    ]


def put_down(tcp: np.ndarray, pos: np.ndarray, yaw: float) -> list[Waypoint]:
    """Carry a held block to ``pos`` (its centre), release it and back off upwards."""
    return _travel(tcp, pos, yaw, False) + [
        _wp(pos + (0, 0, 0.015), yaw, False, tol=0.008),
        _wp(pos + (0, 0, 0.015), yaw, True, wait=6),
        _wp(pos + (0, 0, 0.12), yaw, True, tol=0.03),
    ]


def held_block(scene_obs: np.ndarray, tcp: np.ndarray) -> str | None:
    """The block between the fingers, if any (by distance from the TCP)."""
    best = min(S.BLOCKS, key=lambda b: np.linalg.norm(_block(scene_obs, b)[0] - tcp))
    return best if np.linalg.norm(_block(scene_obs, best)[0] - tcp) < 0.04 else None


def _free_spot(scene_obs: np.ndarray, lo: np.ndarray, hi: np.ndarray, ignore: str, rng) -> np.ndarray:
    others = [_block(scene_obs, b)[0][:2] for b in S.BLOCKS if b != ignore]
    best, best_gap = None, -1.0
    for _ in range(60):
        xy = rng.uniform(lo[:2], hi[:2])
        gap = min(np.linalg.norm(xy - o) for o in others)
        if gap > best_gap:
            best, best_gap = xy, gap
    return np.array([best[0], best[1], lo[2]])


def plan(task: str, robot_obs: np.ndarray, scene_obs: np.ndarray, cfg: SceneConfig,
         rng: np.random.Generator) -> list[Waypoint]:
    """Waypoints that accomplish ``task`` from this state (empty if there is nothing to do)."""
    steps = _task_plan(task, np.asarray(robot_obs), np.asarray(scene_obs), cfg, rng)
    return [_rise(np.asarray(robot_obs)), *steps] if steps else []


def _task_plan(task: str, robot_obs: np.ndarray, scene_obs: np.ndarray, cfg: SceneConfig,
               rng: np.random.Generator) -> list[Waypoint]:
    tcp, tcp_yaw = np.asarray(robot_obs[:3]), to_yaw_band(float(robot_obs[5]))
    lay = cfg.layout
    parts = task.split("_")
    if task.startswith(("lift_", "unstack")):
        block = f"block_{parts[1]}" if task.startswith("lift_") else _top_block(scene_obs)
        pos, _ = _block(scene_obs, block)
        grasp, yaw = choose_grasp(scene_obs, cfg, block, YAW_X_FINGERS, x_fingers=pos[1] > SHELF_FRONT_Y)
        return pick(tcp, grasp, yaw)
    if task.startswith("rotate_"):
        block, sign = f"block_{parts[1]}", (1 if parts[3] == "left" else -1)
        turn = sign * np.deg2rad(95)
        pos, start = choose_grasp(scene_obs, cfg, block, YAW_X_FINGERS - turn / 2, turn=turn)
        end = start + turn
        return pick(tcp, pos, start, lift=0.03) + [
            _wp(pos + (0, 0, 0.03), end, False, tol=0.01, max_steps=60, wait=4),
            _wp(pos + (0, 0, 0.003), end, False, tol=0.008),
            _wp(pos + (0, 0, 0.003), end, True, wait=6),
            _wp(pos + (0, 0, 0.12), end, True, tol=0.03),
        ]
    if task.startswith("push_") and task != "push_into_drawer":
        block, sign = f"block_{parts[1]}", (1 if parts[3] == "right" else -1)
        return _push_x(tcp, scene_obs, block, sign, cfg)
    if task == "push_into_drawer":
        return _push_into_drawer(tcp, scene_obs, cfg)
    if task in ("move_slider_left", "move_slider_right"):
        q = scene_obs[S.SLIDER_IDX]
        handle = np.array([lay.slide[0] + DOOR_OFFSET_X - q, DOOR_Y - 0.024, TABLE_TOP_Z + 0.082])
        dx = -(lay.slide_range - q) - 0.01 if task.endswith("left") else q + 0.01
        return _grab_and_move(tcp, handle, YAW_X_FINGERS, np.array([dx, 0, 0]))
    if task in ("open_drawer", "close_drawer"):
        q = scene_obs[S.DRAWER_IDX]
        handle = np.array([lay.drawer[0], lay.drawer[1] - 0.245 - q, lay.drawer[2] + 0.06])
        dy = -(DRAWER_RANGE - q) - 0.01 if task == "open_drawer" else q + 0.01
        return _grab_and_move(tcp, handle, YAW_X_FINGERS, np.array([0, dy, 0]))
    if task.endswith("_led"):
        top = np.array([lay.button[0], lay.button[1], lay.button[2] + 0.02])
        return _travel(tcp, top, YAW_X_FINGERS, False) + [
            _wp(top + (0, 0, 0.05), YAW_X_FINGERS, False),
            _wp(top + (0, 0, -0.018), YAW_X_FINGERS, False, tol=0.004, max_steps=30),
            _wp(top + (0, 0, 0.1), YAW_X_FINGERS, False, tol=0.03),
        ]
    if task.endswith("_lightbulb"):
        return _switch(tcp, scene_obs, cfg, on=task.startswith("turn_on"))
    if task in ("place_in_slider", "place_in_drawer", "stack_block"):
        block = held_block(scene_obs, tcp)
        if block is None:
            return []
        yaw = YAW_X_FINGERS if task == "place_in_slider" else tcp_yaw
        return put_down(tcp, _place_target(task, scene_obs, block, cfg, rng), yaw)
    raise ValueError(f"the expert has no plan for task {task!r}")


def _top_block(scene_obs: np.ndarray) -> str:
    return max(S.BLOCKS, key=lambda b: _block(scene_obs, b)[0][2])


def _push_x(tcp, scene_obs, block: str, sign: int, cfg: SceneConfig) -> list[Waypoint]:
    pos, yaw = _block(scene_obs, block)
    size = cfg.block_sizes[block]
    half_x = abs(np.cos(yaw)) * size[0] / 2 + abs(np.sin(yaw)) * size[1] / 2
    # Fingers closed along x: the hand is long along x, well clear of the door handle behind.
    start = pos + (-sign * (half_x + 0.025), 0, -0.006)  # low, so the block slides, not tips
    end = start + (sign * 0.14, 0, 0)
    kw = {"lean": PUSH_LEAN}
    return _travel(tcp, start, YAW_X_FINGERS, False) + [
        _wp(start + (0, 0, 0.05), YAW_X_FINGERS, False, **kw),
        _wp(start, YAW_X_FINGERS, False, tol=0.008, **kw),
        _wp(end, YAW_X_FINGERS, False, tol=0.015, max_steps=60, **kw),
        _wp(end + (0, 0, 0.1), YAW_X_FINGERS, False, tol=0.03, **kw),
    ]


def _push_into_drawer(tcp, scene_obs, cfg: SceneConfig) -> list[Waypoint]:
    """Push the block on the table towards the robot (-y) over the edge into the open drawer;
    a block too far to the side is first carried in front of the drawer."""
    on_table = [b for b in S.BLOCKS if _block(scene_obs, b)[0][1] < 0.0 and
                abs(_block(scene_obs, b)[0][2] - 0.46) < 0.02]
    if not on_table:
        return []
    block = on_table[0]
    pos, _ = _block(scene_obs, block)
    drawer_x = cfg.layout.drawer[0]
    steps: list[Waypoint] = []
    if abs(pos[0] - drawer_x) > DRAWER_ALIGNED:
        grasp, yaw = choose_grasp(scene_obs, cfg, block, YAW_X_FINGERS)
        pos = np.array([drawer_x, pos[1], pos[2]])
        steps += pick(tcp, grasp, yaw) + put_down(grasp + (0, 0, 0.12), pos, yaw)
        tcp = pos + (0, 0, 0.12)
    start = pos + (0, 0.055, -0.006)
    end = np.array([pos[0], -0.33, start[2]])
    return steps + _travel(tcp, start, YAW_X_FINGERS, False) + [
        _wp(start, YAW_X_FINGERS, False, tol=0.008),
        _wp(end, YAW_X_FINGERS, False, tol=0.02, max_steps=40),
        _wp(end + (0, 0.05, 0.1), YAW_X_FINGERS, False, tol=0.03),
    ]


def _grab_and_move(tcp, handle: np.ndarray, yaw: float, delta: np.ndarray) -> list[Waypoint]:
    return _travel(tcp, handle, yaw, True) + [
        _wp(handle + (0, 0, 0.05), yaw, True),
        _wp(handle, yaw, True, tol=0.006, max_steps=40),
        _wp(handle, yaw, False, wait=8),
        _wp(handle + delta, yaw, False, tol=0.02, max_steps=60),
        _wp(handle + delta, yaw, True, wait=5),
        _wp(handle + delta + (0, 0, 0.1), yaw, True, tol=0.03),
    ]


def _switch(tcp, scene_obs, cfg: SceneConfig, on: bool) -> list[Waypoint]:
    """Push the knob along its rail with the closed fingertips, the gripper tilted to face the
    inclined panel (on: from below, upwards; off: from above, downwards)."""
    ang = np.deg2rad(SWITCH_FRAME_DEG)
    rail = np.array([0.0, -np.sin(ang), np.cos(ang)])
    out = np.array([0.0, -np.cos(ang), -np.sin(ang)])  # local -y: where the knob sticks out
    q = scene_obs[S.SWITCH_IDX]
    knob = np.asarray(cfg.layout.switch) + out * 0.024 + rail * q
    side = -1.0 if on else 1.0
    start = knob + rail * side * 0.03
    end = start - rail * side * ((SWITCH_RANGE - q if on else q) + 0.02)
    kw = {"tilt": np.pi / 2 + ang}  # the approach direction is then -out
    return _travel(tcp, start + out * 0.1, YAW_X_FINGERS, False) + [
        _wp(start + out * 0.1, YAW_X_FINGERS, False, tol=0.015, **kw),
        _wp(start, YAW_X_FINGERS, False, tol=0.006, max_steps=40, **kw),
        _wp(end, YAW_X_FINGERS, False, tol=0.01, max_steps=50, **kw),
        _wp(end + out * 0.1, YAW_X_FINGERS, False, tol=0.03, **kw),
    ]


def _place_target(task: str, scene_obs, block: str, cfg: SceneConfig, rng) -> np.ndarray:
    surf = cfg.surfaces
    if task == "place_in_slider":
        q = scene_obs[S.SLIDER_IDX]
        door_x = cfg.layout.slide[0] + DOOR_OFFSET_X - q
        side = min(("slider_left", "slider_right"), key=lambda s: -abs(surf[s][:, 0].mean() - door_x))
        lo, hi = surf[side].copy()
        lo[:2] += (0.02, 0.01)
        hi[:2] = (hi[0] - 0.02, min(hi[1], 0.085))  # keep the hand clear of the shelf tower
        return _free_spot(scene_obs, lo, hi, block, rng) + (0, 0, 0.005)
    if task == "place_in_drawer":
        lay = cfg.layout
        q = scene_obs[S.DRAWER_IDX]
        return np.array([lay.drawer[0], lay.drawer[1] - 0.12 - q, 0.345 + 0.025])
    below = [b for b in S.BLOCKS if b != block and abs(_block(scene_obs, b)[0][2] - 0.46) < 0.015
             and _block(scene_obs, b)[0][1] < 0.0]
    if not below:
        return _block(scene_obs, block)[0]
    target, _ = _block(scene_obs, below[0])
    return target + (0, 0, 0.042)
