"""Where the block an instruction names is, relative to the gripper: a training-only target.

The language probe (bench/RESULTS.md) showed the policy barely reads which block colour its instruction
names: after the first frames of an attempt the history shows where the arm is heading, so the action loss
hardly rewards reading the colour. This target does, at every frame: from the features that condition the
action head, predict the position of the block the task names (``lift_red_block_table`` -> the red block)
relative to the tool centre point, from simulator ground truth (``scene_obs``). Like the world heads'
forecasts it is used only in training. Pure functions; the packed data set applies them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch

from sim.snapshot import BLOCK_SLICES, BLOCKS, SEGMENT_NAMES

SCALE = 0.2  # metres per target unit: offsets on the table are a few tenths of a metre
NO_BLOCK = -1
_NAMED = re.compile(r"(?:^|_)(" + "|".join(b.removeprefix("block_") for b in BLOCKS) + r")_block(?:_|$)")
SEGMENT_OF_BLOCK = np.array([SEGMENT_NAMES.index(b) for b in BLOCKS], dtype=np.int64)  # seg id per block
POSITION_COLUMNS = np.array([BLOCK_SLICES[b].start + k for b in BLOCKS for k in range(3)]).reshape(len(BLOCKS), 3)


def named_block(task: str) -> int:
    """Index in ``sim.snapshot.BLOCKS`` of the one block a CALVIN task name names (``push_pink_block_left``
    -> 2), or ``NO_BLOCK`` for tasks that name none (``open_drawer``, ``stack_block``)."""
    found = _NAMED.findall(task)
    if len(set(found)) != 1:
        return NO_BLOCK
    return BLOCKS.index(f"block_{found[0]}")


def named_blocks(tasks: Sequence[str]) -> np.ndarray:
    """``named_block`` of every task: (N,) int64."""
    return np.array([named_block(str(t)) for t in tasks], dtype=np.int64).reshape(len(tasks))


def block_offsets(scene_obs: torch.Tensor, robot_obs: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """(N, 3) float32: position of block ``blocks[i]`` (``scene_obs`` (N, 24)) minus the tool centre point
    (``robot_obs`` (N, 15), raw, first three values), in units of ``SCALE``; zeros where ``blocks[i]`` is
    ``NO_BLOCK``. Tensors on any device (the packed data set's)."""
    if scene_obs.ndim != 2 or scene_obs.shape[1] != 24:
        raise ValueError(f"scene_obs must be (N, 24), got {tuple(scene_obs.shape)}")
    if robot_obs.shape != (len(scene_obs), 15) or blocks.shape != (len(scene_obs),):
        raise ValueError(f"robot_obs {tuple(robot_obs.shape)} and blocks {tuple(blocks.shape)} must be (N, 15) "
                         f"and (N,) for scene_obs {tuple(scene_obs.shape)}")
    if blocks.numel() and (int(blocks.min()) < NO_BLOCK or int(blocks.max()) >= len(BLOCKS)):
        raise ValueError(f"block indices must be in [{NO_BLOCK}, {len(BLOCKS)}), got {sorted(set(blocks.tolist()))}")
    has = blocks != NO_BLOCK
    cols = torch.as_tensor(POSITION_COLUMNS, device=scene_obs.device)[torch.where(has, blocks, 0)]  # (N, 3)
    offset = torch.gather(scene_obs.float(), 1, cols) - robot_obs[:, :3].float()
    return torch.where(has[:, None], offset / SCALE, torch.zeros_like(offset))


def named_block_mask(seg: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """(N, s, s) bool: the pixels of the segmentation ``seg`` (N, s, s) (``sim.snapshot.SEGMENT_NAMES`` ids)
    that show block ``blocks[i]``; all False where ``blocks[i]`` is ``NO_BLOCK``. Where the named block is in
    the image: the target of the model's instruction-query grounding (``ground_weight``)."""
    if seg.ndim != 3 or blocks.shape != (len(seg),):
        raise ValueError(f"seg must be (N, s, s) and blocks (N,), got {tuple(seg.shape)} and {tuple(blocks.shape)}")
    if blocks.numel() and (int(blocks.min()) < NO_BLOCK or int(blocks.max()) >= len(BLOCKS)):
        raise ValueError(f"block indices must be in [{NO_BLOCK}, {len(BLOCKS)}), got {sorted(set(blocks.tolist()))}")
    ids = torch.as_tensor(SEGMENT_OF_BLOCK, device=seg.device)[blocks.clamp(min=0)]  # (N,)
    return (seg.long() == ids[:, None, None]) & (blocks != NO_BLOCK)[:, None, None]
