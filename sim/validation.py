"""Input checks shared by the physics and the controller."""

from __future__ import annotations

import numpy as np


def checked_vector(name: str, value, size: int) -> np.ndarray:
    """``value`` as a finite float vector of length ``size``, or a ValueError naming ``name``."""
    arr = np.asarray(value, dtype=float)
    if arr.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values: {arr.tolist()}")
    return arr
