"""The PyBullet CALVIN adapter against stand-ins with calvin_env's interface (calvin_env itself
cannot be installed here)."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from sim.calvin_pybullet import CalvinPyBulletEnv, CalvinTaskOracle, flatten_obs
from sim.chains import Chain, generate_chains
from sim.evaluate import make_backend, run_chain


class FakePlayTableSimEnv:
    """calvin_env's PlayTableSimEnv interface: nested obs, 4-tuple step, get_info()."""

    def __init__(self) -> None:
        self.steps, self.resets = 0, []

    def _obs(self) -> dict:
        return {"rgb_obs": {"rgb_static": np.full((200, 200, 3), self.steps, np.uint8),
                            "rgb_gripper": np.zeros((84, 84, 3), np.uint8)},
                "depth_obs": {"depth_static": np.ones((200, 200), np.float32),
                              "depth_gripper": np.ones((84, 84), np.float32)},
                "robot_obs": np.zeros(15), "scene_obs": np.full(24, float(self.steps))}

    def reset(self, robot_obs=None, scene_obs=None):
        self.resets.append((robot_obs, scene_obs))
        self.steps = 0
        return self._obs()

    def get_info(self) -> dict:
        return {"step": self.steps}

    def step(self, action):
        assert np.asarray(action).shape == (7,)
        self.steps += 1
        return self._obs(), 0, False, self.get_info()

    def close(self) -> None:
        pass


class FakeTasks:
    """CALVIN's Tasks: completes a task 3 steps after the subtask's start info."""

    def get_task_info_for_set(self, start, end, task_filter):
        return set(task_filter) if end["step"] - start["step"] >= 3 else set()


class StillPolicy:
    def reset(self) -> None:
        pass

    def step(self, obs, instruction):
        return np.zeros(7)


def test_flatten_obs_uses_the_project_keys():
    flat = flatten_obs(FakePlayTableSimEnv()._obs())
    assert set(flat) == {"rgb_static", "rgb_gripper", "depth_static", "depth_gripper", "robot_obs", "scene_obs"}


def test_reset_and_step_follow_the_evaluator_interface():
    fake = FakePlayTableSimEnv()
    env = CalvinPyBulletEnv(fake)
    robot, scene = np.arange(15.0), np.arange(24.0)
    obs, info = env.reset(options={"robot_obs": robot, "scene_obs": scene})
    assert fake.resets[0][0] is robot and fake.resets[0][1] is scene
    assert info["snapshot"] == {"step": 0} and env.snapshot() == {"step": 0}
    obs, _, _, _, info = env.step(np.zeros(7))
    assert info["snapshot"] == {"step": 1} and obs["scene_obs"][0] == 1.0
    assert env.render("static", 64).shape == (64, 64, 3)


def test_snapshot_before_reset_is_an_error():
    with pytest.raises(RuntimeError, match="reset"):
        CalvinPyBulletEnv(FakePlayTableSimEnv()).snapshot()


def test_calvin_oracle_asks_calvins_tasks_for_exactly_that_task():
    oracle = CalvinTaskOracle(FakeTasks())
    assert oracle.succeeded("open_drawer", {"step": 0}, {"step": 3})
    assert not oracle.succeeded("open_drawer", {"step": 0}, {"step": 2})


def test_run_chain_drives_the_adapter_with_calvins_protocol():
    chain: Chain = generate_chains(1)[0]
    env = CalvinPyBulletEnv(FakePlayTableSimEnv())
    result = run_chain(env, StillPolicy(), chain, CalvinTaskOracle(FakeTasks()), ep_len=10)
    assert result.successes == [True] * 5 and result.steps == [3] * 5  # one reset, every subtask 3 steps


def test_backend_without_calvin_env_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "calvin_env", None)
    with pytest.raises(RuntimeError, match="calvin_env"):
        make_backend("calvin:/nowhere", render=False)


def test_backend_with_a_folder_that_is_not_a_calvin_split(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "calvin_env", types.ModuleType("calvin_env"))
    with pytest.raises(FileNotFoundError, match="merged_config.yaml"):
        CalvinPyBulletEnv.from_dataset(tmp_path)
