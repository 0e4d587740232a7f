"""Grasp choice for the scripted expert: which yaw, and how far off the block's centre, lets the
open fingers come down around a block without landing on a neighbour or a wall (pure geometry
in the table plane)."""

from __future__ import annotations

import numpy as np

from sim import snapshot as S
from sim.scene_config import SceneConfig
from sim.scene_xml import SHELF_HALF_WIDTH

# Yaw (gripper pointing down) that the wrist reaches without hitting joint 7's limits; plans keep
# yaw inside this band and turn through it, never across its ends.
YAW_BAND = (-1.8, 3.7)
GRIPPER_SPAN = 0.065  # widest block side the open fingers (0.08 m) take reliably
PAD_CENTRE = 0.045  # open finger pad centre from the TCP, along the finger axis
PAD_HALF = (0.006, 0.012)  # pad half extents: along the finger axis, across it
CLEARANCE = 0.004
SHIFTS = (0.0, 0.004, -0.004, 0.008, -0.008, 0.012, -0.012, 0.016, -0.016)


def to_yaw_band(yaw: float) -> float:
    """The same heading as ``yaw``, shifted by a whole turn into ``YAW_BAND`` where possible."""
    for candidate in (yaw, yaw + 2 * np.pi, yaw - 2 * np.pi):
        if YAW_BAND[0] <= candidate <= YAW_BAND[1]:
            return float(candidate)
    return float(yaw)


def finger_axis(yaw: float) -> np.ndarray:
    """World xy direction along which the fingers close, for the gripper pointing down at ``yaw``."""
    return np.array([np.sin(yaw), -np.cos(yaw)])


def in_rectangle(points: np.ndarray, centre, yaw: float, half) -> np.ndarray:
    """Which of ``points`` (N, 2) lie in the rectangle (centre, yaw, half extents)."""
    c, s = np.cos(yaw), np.sin(yaw)
    local = (points - np.asarray(centre)[:2]) @ np.array([[c, -s], [s, c]])
    return np.all(np.abs(local) <= np.asarray(half), axis=1)


def pad_points(centre_xy: np.ndarray, yaw: float) -> np.ndarray:
    """Sample points covering both open finger pads around a TCP at ``centre_xy``."""
    axis = finger_axis(yaw)
    across = np.array([-axis[1], axis[0]])
    grid = [(a, b) for a in (-PAD_HALF[0], 0, PAD_HALF[0]) for b in (-PAD_HALF[1], 0, PAD_HALF[1])]
    return np.array([centre_xy + side * PAD_CENTRE * axis + a * axis + b * across
                     for side in (1, -1) for a, b in grid])


def yaw_candidates(block_yaw: float, size, reference: float, x_fingers: bool = False,
                   turn: float = 0.0) -> list[float]:
    """Grasp yaws across a side the open fingers take, inside ``YAW_BAND`` (also after turning by
    ``turn``), best first: nearest to ``reference``; ``x_fingers`` prefers fingers closing along
    world x (the hand is then short along y, clear of the shelf tower)."""
    scored = []
    for k in range(-6, 7):
        yaw = block_yaw + k * np.pi / 2
        across = size[1] if k % 2 == 0 else size[0]  # even k: fingers along the block's local y
        inside = all(YAW_BAND[0] <= y <= YAW_BAND[1] for y in (yaw, yaw + turn))
        if across <= GRIPPER_SPAN and inside:
            cost = abs(yaw - reference) + (2.0 if x_fingers and abs(np.sin(yaw)) < 0.7 else 0.0)
            scored.append((cost, float(yaw)))
    return [yaw for _, yaw in sorted(scored)]


def obstacles(scene_obs: np.ndarray, cfg: SceneConfig, block: str) -> list[tuple]:
    """Footprints (centre, yaw, half extents) the finger pads must not land on."""
    out = []
    for other in S.BLOCKS:
        if other != block:
            pose = scene_obs[S.BLOCK_SLICES[other]]
            half = np.asarray(cfg.block_sizes[other][:2]) / 2 + CLEARANCE
            out.append((pose[:2], float(pose[5]), half))
    px = cfg.layout.plank[0]
    for wall_x in (px - SHELF_HALF_WIDTH - 0.01, px + SHELF_HALF_WIDTH + 0.01):  # the shelf's side walls
        out.append(((wall_x, 0.105), 0.0, (0.01 + CLEARANCE, 0.075 + CLEARANCE)))
    return out


def choose_grasp(scene_obs: np.ndarray, cfg: SceneConfig, block: str, reference: float,
                 x_fingers: bool = False, turn: float = 0.0) -> tuple[np.ndarray, float]:
    """(TCP position, yaw) for grasping ``block``: the best yaw and smallest shift along the
    finger axis whose pads land clear of every obstacle (else the best yaw, centred)."""
    pose = scene_obs[S.BLOCK_SLICES[block]]
    centre, block_yaw = np.asarray(pose[:3], dtype=float), float(pose[5])
    size = cfg.block_sizes[block]
    yaws = yaw_candidates(block_yaw, size, reference, x_fingers, turn)
    if not yaws:
        raise ValueError(f"no grasp yaw fits {block} of size {size} at yaw {block_yaw:.2f}")
    blockers = obstacles(scene_obs, cfg, block)
    own_half = np.asarray(size[:2]) / 2 + 0.002
    for yaw in yaws:
        for shift in SHIFTS:
            xy = centre[:2] + shift * finger_axis(yaw)
            pads = pad_points(xy, yaw)
            if in_rectangle(pads, centre, block_yaw, own_half).any():
                continue
            if not any(in_rectangle(pads, c, y, h).any() for c, y, h in blockers):
                return np.array([xy[0], xy[1], centre[2]]), yaw
    return centre, yaws[0]
