"""The policy interface shared by the scripted expert, the learned policy, the evaluator,
the collector and the ROS node (CALVIN's ``model.step`` contract)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np


class Policy(Protocol):
    def reset(self) -> None:
        """Forget everything about the previous subtask."""

    def step(self, obs: dict[str, np.ndarray], instruction: str) -> np.ndarray:
        """One 7-D relative action for this observation and language instruction."""


# name -> "module:factory"; a factory takes keyword options and returns a Policy.
POLICIES: dict[str, str] = {
    "expert": "sim.expert:make_expert",
    "checkpoint": "dream_policy.runtime:make_checkpoint_policy",
}


def make_policy(name: str, **options: Any) -> Policy:
    """Build a registered policy; unknown names list the valid ones."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; valid policies: {sorted(POLICIES)}")
    module, attr = POLICIES[name].split(":")
    factory: Callable[..., Policy] = getattr(importlib.import_module(module), attr)
    return factory(**options)
