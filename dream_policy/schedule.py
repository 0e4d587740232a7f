"""Learning-rate schedule: linear warmup, then cosine decay to ``min_ratio * base_lr``."""

from __future__ import annotations

import math


def lr_at(step: int, base_lr: float, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Learning rate of update number ``step`` (0-based).

    Warmup: ``base_lr * (step + 1) / warmup`` for ``step < warmup`` (so the last warmup step runs at
    ``base_lr``); then a half cosine from ``base_lr`` at ``step == warmup`` to ``min_ratio * base_lr``
    at ``step == total``, constant after that.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup < 0 or total < warmup:
        raise ValueError(f"need 0 <= warmup <= total, got warmup={warmup}, total={total}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(total - warmup, 1))
    floor = base_lr * min_ratio
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
