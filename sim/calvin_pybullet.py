"""The original PyBullet CALVIN environment behind the evaluator's interface.

``scene=calvin:PATH`` makes ``dream-policy eval`` drive CALVIN's own ``PlayTableSimEnv``, built as
CALVIN's evaluation builds it (from ``PATH/.hydra/merged_config.yaml`` of a CALVIN dataset split)
and judged by CALVIN's own task oracle (``calvin_env.envs.tasks.Tasks`` with CALVIN's task config).
It needs the ``calvin_env`` package (github.com/mees/calvin_env, not on PyPI); this project's
machines do not have it, so the adapter is tested against stand-ins with calvin_env's interface
only. The scripted expert plans for the MuJoCo play-table and is not meant for this backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

BACKEND_PREFIX = "calvin:"
TASKS_CONFIG = Path(__file__).parent / "data" / "tasks_new_playtable_tasks.yaml"


def require_calvin_env() -> None:
    try:
        import calvin_env  # noqa: F401
    except ImportError as err:
        raise RuntimeError("scene=calvin:PATH needs CALVIN's calvin_env package (github.com/mees/calvin_env), "
                           "which is not installed") from err


def flatten_obs(obs: dict[str, Any]) -> dict[str, np.ndarray]:
    """calvin_env's nested observation as this project's flat keys."""
    flat = {"robot_obs": np.asarray(obs["robot_obs"]), "scene_obs": np.asarray(obs["scene_obs"])}
    for group in ("rgb_obs", "depth_obs"):
        flat.update({k: np.asarray(v) for k, v in obs.get(group, {}).items()})
    return flat


class CalvinPyBulletEnv:
    """Wraps a ``PlayTableSimEnv``: ``reset(options=...)``, ``step`` (5-tuple with
    ``info["snapshot"]`` = CALVIN's ``get_info()``), ``snapshot()``, ``render()``, ``close()``."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self._obs: dict[str, np.ndarray] = {}
        self._info: dict[str, Any] | None = None

    @classmethod
    def from_dataset(cls, dataset_path: str | Path) -> CalvinPyBulletEnv:
        """Build the environment as CALVIN's evaluation does, from a dataset split's Hydra config."""
        require_calvin_env()
        import hydra
        from omegaconf import OmegaConf

        conf = Path(dataset_path) / ".hydra" / "merged_config.yaml"
        if not conf.is_file():
            raise FileNotFoundError(f"{conf} not found: scene=calvin:PATH wants a CALVIN dataset split folder")
        env_cfg = OmegaConf.load(conf).env
        return cls(hydra.utils.instantiate(env_cfg, show_gui=False, use_vr=False, use_scene_info=True))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        options = options or {}
        obs = self.env.reset(robot_obs=options.get("robot_obs"), scene_obs=options.get("scene_obs"))
        self._obs, self._info = flatten_obs(obs), self.env.get_info()
        return self._obs, {"snapshot": self._info}

    def step(self, action):
        obs, _, _, info = self.env.step(np.asarray(action, dtype=float))
        self._obs, self._info = flatten_obs(obs), info
        return self._obs, 0.0, False, False, {"snapshot": info}

    def snapshot(self) -> dict[str, Any]:
        if self._info is None:
            raise RuntimeError("reset the environment before asking for a snapshot")
        return self._info

    def render(self, camera: str = "static", size: int = 200) -> np.ndarray:
        from PIL import Image

        return np.asarray(Image.fromarray(self._obs[f"rgb_{camera}"]).resize((size, size)))

    def close(self) -> None:
        self.env.close()


class CalvinTaskOracle:
    """CALVIN's own success rules: ``Tasks.get_task_info_for_set`` on CALVIN info dicts."""

    def __init__(self, tasks: Any) -> None:
        self.tasks = tasks

    @classmethod
    def from_config(cls, path: Path = TASKS_CONFIG) -> CalvinTaskOracle:
        require_calvin_env()
        import hydra

        return cls(hydra.utils.instantiate(yaml.safe_load(path.read_text())))

    def succeeded(self, task: str, start: dict[str, Any], current: dict[str, Any]) -> bool:
        return task in self.tasks.get_task_info_for_set(start, current, {task})


def calvin_backend(scene: str) -> tuple[CalvinPyBulletEnv, CalvinTaskOracle]:
    """The (env, oracle) pair for ``scene="calvin:PATH"``."""
    return CalvinPyBulletEnv.from_dataset(scene[len(BACKEND_PREFIX):]), CalvinTaskOracle.from_config()
