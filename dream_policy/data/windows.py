"""Which samples a split holds and in which order they are read: pure index logic.

A sample is anchored at frame ``t``: its history is frames ``t-history+1 .. t``, its action chunk
the actions of frames ``t .. t+chunk-1`` and its forecast frame (world-knowledge targets) is
``t+forecast_n``. Every frame a sample touches lies inside one episode, and for
language-conditioned samples also inside one annotated window. Samples are rows of an int64
array (N, 3): ``(t, episode index, annotation index or -1)`` -- 24 bytes each, so even
CALVIN's ABCD split (about 2.4M frames) costs tens of MB of indices and no frame data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

T, EPISODE, ANN = range(3)
NO_ANN = -1
Range = tuple[int, int]  # inclusive [start, end] frame ids


@dataclass(frozen=True)
class WindowSpec:
    """Frames one sample needs around its anchor ``t``; ``forecast_n`` 0 means no forecast frame."""

    history: int = 1
    chunk: int = 1
    forecast_n: int = 0

    def __post_init__(self) -> None:
        if self.history < 1 or self.chunk < 1 or self.forecast_n < 0:
            raise ValueError(f"need history >= 1, chunk >= 1, forecast_n >= 0; got {self}")

    @property
    def before(self) -> int:
        """Frames needed before ``t``."""
        return self.history - 1

    @property
    def after(self) -> int:
        """Frames needed after ``t``."""
        return max(self.chunk - 1, self.forecast_n)

    def history_ids(self, t: int) -> np.ndarray:
        return np.arange(t - self.before, t + 1)

    def action_ids(self, t: int) -> np.ndarray:
        return np.arange(t, t + self.chunk)

    def history_action_ids(self, t: int) -> np.ndarray:
        """(history, chunk): the action chunk of every history frame (the last row is ``action_ids(t)``)."""
        return self.history_ids(t)[:, None] + np.arange(self.chunk)

    def forecast_id(self, t: int) -> int | None:
        return t + self.forecast_n if self.forecast_n else None


def anchors(start: int, end: int, spec: WindowSpec, pad_history: bool = False) -> np.ndarray:
    """Anchors ``t`` whose whole window fits in the inclusive range [start, end] (maybe none);
    ``pad_history``: also the first ``history - 1`` frames (their history padded with ``start``)."""
    return np.arange(start if pad_history else start + spec.before, end - spec.after + 1, dtype=np.int64)


def _rows(ts: np.ndarray, episode: int, ann: int) -> np.ndarray:
    return np.stack([ts, np.full_like(ts, episode), np.full_like(ts, ann)], axis=1)


def _check_ranges(ranges: Sequence[Range], what: str) -> None:
    for start, end in ranges:
        if start > end:
            raise ValueError(f"{what} [{start}, {end}] has start > end")


def episode_samples(episodes: Sequence[Range], spec: WindowSpec) -> np.ndarray:
    """(N, 3) samples of every anchor of every episode, in episode order (no language)."""
    _check_ranges(episodes, "episode")
    rows = [_rows(anchors(s, e, spec), i, NO_ANN) for i, (s, e) in enumerate(episodes)]
    return np.concatenate(rows) if rows else np.zeros((0, 3), np.int64)


def annotated_samples(episodes: Sequence[Range], windows: Sequence[Range], spec: WindowSpec,
                      pad_history: bool = False) -> np.ndarray:
    """(N, 3) samples whose whole window lies in one annotated window (info.indx) and one episode.

    A frame may anchor several samples when annotated windows overlap (one per annotation).
    Annotated windows that straddle an episode boundary contribute only their parts inside
    an episode. ``pad_history``: samples are anchored from the window's first frame on, their
    history frames before it replaced by it (``history_frames``), as the runtime pads the history
    of a new instruction: the decision where to go, seen as the policy sees it.
    """
    _check_ranges(episodes, "episode")
    _check_ranges(windows, "annotation window")
    eps = np.asarray(episodes, np.int64).reshape(-1, 2)
    rows = []
    for ann, (w_start, w_end) in enumerate(windows):
        starts, ends = np.maximum(eps[:, 0], w_start), np.minimum(eps[:, 1], w_end)
        for ep in np.flatnonzero(starts <= ends):
            rows.append(_rows(anchors(int(starts[ep]), int(ends[ep]), spec, pad_history), int(ep), ann))
    return np.concatenate(rows) if rows else np.zeros((0, 3), np.int64)


def first_frames(samples: np.ndarray, episodes: Sequence[Range], windows: Sequence[Range]) -> np.ndarray:
    """(N,) the earliest frame each annotated sample's history may use: where its annotated window
    starts inside its episode."""
    eps = np.asarray(episodes, np.int64).reshape(-1, 2)
    wins = np.asarray(windows, np.int64).reshape(-1, 2)
    return np.maximum(eps[samples[:, EPISODE], 0], wins[samples[:, ANN], 0])


def history_frames(t: np.ndarray, first: np.ndarray, spec: WindowSpec) -> np.ndarray:
    """(N, history) frame ids of the histories of anchors ``t``, frames before ``first`` replaced by it."""
    return np.maximum(t[:, None] + np.arange(-spec.before, 1), first[:, None])


def repeat_attempt_starts(samples: np.ndarray, windows: Sequence[Range], frames: int, repeat: int) -> np.ndarray:
    """``samples`` plus ``repeat - 1`` more copies of each one anchored within the first ``frames`` frames
    of its annotated window (anchor - window start < frames), appended after the originals.

    The start of an attempt is where the instruction alone says where to go (later frames show the motion
    already under way): repeating those samples weights them ``repeat`` times in every epoch.
    """
    if repeat < 1 or frames < 1:
        raise ValueError(f"need repeat >= 1 and frames >= 1, got repeat={repeat}, frames={frames}")
    if repeat == 1 or not len(samples):
        return samples
    if np.any(samples[:, ANN] == NO_ANN):
        raise ValueError("repeating attempt starts needs language-annotated samples")
    starts = np.asarray([start for start, _ in windows], np.int64)
    early = samples[samples[:, T] - starts[samples[:, ANN]] < frames]
    return np.concatenate([samples, *([early] * (repeat - 1))])


def _buffered(order: np.ndarray, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """Stream ``order`` through ``buffer`` slots, emitting a random slot each time."""
    out, slots = [], []
    for item in order.tolist():
        slots.append(item)
        if len(slots) == buffer:
            i = int(rng.integers(buffer))
            slots[i], slots[-1] = slots[-1], slots[i]
            out.append(slots.pop())
    rng.shuffle(slots)
    return np.asarray(out + slots, dtype=np.int64)


def epoch_order(samples: np.ndarray, seed: int, epoch: int, shuffle_buffer: int | None = None) -> np.ndarray:
    """Permutation of sample positions for one epoch, fixed by (seed, epoch).

    ``shuffle_buffer`` None: a full random permutation. An int k: episodes (annotations when
    samples carry them) in random order, their samples streamed through a k-slot shuffle
    buffer, so consecutive reads share frames (frame-cache hits) at the cost of local mixing.
    """
    rng = np.random.default_rng([seed, epoch])
    if shuffle_buffer is None:
        return rng.permutation(len(samples))
    if shuffle_buffer < 1:
        raise ValueError(f"shuffle_buffer must be None or >= 1, got {shuffle_buffer}")
    group_col = ANN if len(samples) and samples[0, ANN] != NO_ANN else EPISODE
    _, group = np.unique(samples[:, group_col], return_inverse=True)
    rank = rng.permutation(group.max() + 1 if len(group) else 0)[group]
    grouped = np.lexsort((np.arange(len(samples)), rank))  # groups in random order, samples in order
    return _buffered(grouped, shuffle_buffer, rng)


def shard(order: np.ndarray, rank: int, world_size: int, worker: int, num_workers: int) -> np.ndarray:
    """This (rank, worker)'s contiguous part of ``order``.

    Every rank gets the same number of samples (DDP needs equal batch counts): with several
    ranks, the ``len % world_size`` last samples of the (shuffled) order are left out this epoch.
    Workers of one rank split its part exactly.
    """
    if not 0 <= rank < world_size or not 0 <= worker < num_workers:
        raise ValueError(f"need 0 <= rank < world_size and 0 <= worker < num_workers; "
                         f"got rank {rank}/{world_size}, worker {worker}/{num_workers}")
    per_rank = len(order) // world_size
    mine = order[rank * per_rank:(rank + 1) * per_rank]
    return np.array_split(mine, num_workers)[worker]
