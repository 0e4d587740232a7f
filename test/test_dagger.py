"""Tests for sim.dagger (a learner drives, the scripted expert labels) and the collector's DAgger mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from test_collect import EveryThirdStep, config, fake_embed

from sim.calvin_dataset import CalvinDataset, frame_file
from sim.collect import CollectConfig, collect, episode_dir
from sim.dagger import ExpertLabelledPolicy, block_moved, expert_drives, named_block
from sim.expert import ScriptedExpert
from sim.snapshot import BLOCK_SLICES

LEARNED = np.array([0.0, 0.5, 0.0, 0.0, 0.0, 0.0, -1.0])  # the stand-in learner: +y, gripper closed


class ConstantLearner:
    def __init__(self) -> None:
        self.resets, self.steps = 0, 0

    def reset(self) -> None:
        self.resets += 1

    def step(self, obs: dict, instruction: str) -> np.ndarray:
        self.steps += 1
        return LEARNED.copy()


@pytest.fixture(scope="module")
def env():
    from sim.env import PlayTableEnv

    env = PlayTableEnv("D", render=False)
    yield env
    env.close()


def labelled(share: float, segment: int = 5, seed: int = 0) -> ExpertLabelledPolicy:
    expert = ScriptedExpert("D", rng=np.random.default_rng(seed))
    teacher = ScriptedExpert("D", rng=np.random.default_rng(seed))
    return ExpertLabelledPolicy(ConstantLearner(), expert, np.random.default_rng(seed), share, segment, teacher)


def test_named_block_and_a_knocked_block_trigger_a_new_plan():
    assert named_block("lift_red_block_table") == "block_red"
    assert named_block("rotate_pink_block_left") == "block_pink"
    assert named_block("push_blue_block_left") is None  # a push moves its block on purpose
    assert named_block("open_drawer") is None
    scene = np.zeros(24)
    moved = scene.copy()
    moved[BLOCK_SLICES["block_red"]][:1] = 0.05  # 5 cm along x
    far = np.array([1.0, 1.0, 1.0])
    assert block_moved("lift_red_block_table", scene, moved, far)
    assert not block_moved("lift_blue_block_table", scene, moved, far)  # not the named block
    assert not block_moved("lift_red_block_table", scene, scene, far)
    held_at = moved[BLOCK_SLICES["block_red"]][:3]
    assert not block_moved("lift_red_block_table", scene, moved, held_at)  # between the fingers: lifted


def test_who_drives_follows_the_share():
    rng = np.random.default_rng(0)
    draws = [expert_drives(rng, 0.3) for _ in range(4000)]
    assert abs(np.mean(draws) - 0.3) < 0.03
    assert not any(expert_drives(rng, 0.0) for _ in range(100))
    assert all(expert_drives(rng, 1.0) for _ in range(100))
    with pytest.raises(ValueError, match="expert_share"):
        labelled(1.5)
    with pytest.raises(ValueError, match="segment"):
        labelled(0.5, segment=0)


def test_the_learner_drives_and_the_expert_labels_from_where_the_arm_is(env):
    """With share 0 every sent action is the learner's; the labels are the expert's, computed on a copy of
    the controller's stored target that stays equal to the real one, and the learner's steps do not use up
    the expert's patience with its waypoint."""
    obs, _ = env.reset(seed=3)
    policy = labelled(0.0)
    policy.reset()
    labels = []
    for _ in range(30):
        sent = policy.step(obs, "open_drawer")
        np.testing.assert_array_equal(sent, LEARNED)
        labels.append(policy.label.copy())
        obs, *_ = env.step(sent)
        np.testing.assert_allclose(policy.expert.target_pos, env.target_pos, atol=1e-9)
        np.testing.assert_allclose(policy.expert.target_euler[:2], env.target_euler[:2], atol=1e-9)
    assert policy.learner.steps == 30
    assert policy.expert._steps == 0 and policy.teacher._steps == 0
    # the teacher's own target stays within the expert's lead of the arm, wherever the learner took it
    assert np.linalg.norm(policy.teacher.target_pos - obs["robot_obs"][:3]) < 0.05
    labels = np.array(labels)
    assert np.all(labels[:, 6] == 1.0)  # the expert would keep the gripper open on the way to the handle
    assert np.abs(labels[:, :3]).max() > 0.1  # and it would move (towards its waypoint, not with the learner)
    assert not np.allclose(labels[:, :6], LEARNED[:6])


def test_the_expert_drives_its_stretches(env):
    obs, _ = env.reset(seed=4)
    policy = labelled(1.0)
    policy.reset()
    for _ in range(10):
        sent = policy.step(obs, "turn_on_led")
        assert not np.array_equal(sent, LEARNED) and sent[6] == policy.label[6]
        obs, *_ = env.step(sent)
        np.testing.assert_allclose(policy.expert.target_pos, env.target_pos, atol=1e-9)
    np.testing.assert_allclose(policy.teacher.target_pos, policy.expert.target_pos, atol=1e-9)  # same from the start
    assert policy.learner.steps == 10  # the learner still sees every frame (its history stays whole)


def test_stretches_alternate_with_the_share(env):
    obs, _ = env.reset(seed=5)
    policy = labelled(0.5, segment=4, seed=2)
    policy.reset()
    drivers = []
    for _ in range(200):
        sent = policy.step(obs, "move_slider_left")
        drivers.append(not np.array_equal(sent, LEARNED))
        obs, *_ = env.step(sent)
    blocks = np.array(drivers).reshape(-1, 4)
    assert np.all(blocks == blocks[:, :1])  # one driver per stretch of 4
    assert 0.25 < blocks[:, 0].mean() < 0.75


class LabellingPolicy:
    """Sends one action, labels another: the collector must record the label."""

    label = np.array([0.0, 0.0, 0.3, 0.0, 0.0, 0.0, 1.0])
    told: ClassVar[list[str]] = []

    def reset(self) -> None:
        pass

    def step(self, obs: dict, instruction: str) -> np.ndarray:
        self.told.append(instruction)
        return np.array([0.4, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])


def labelling_policy(scene: str, seed: int, noise: float) -> LabellingPolicy:
    return LabellingPolicy()


class NeverSucceeds:
    def succeeded(self, task, start, current) -> bool:
        return False


def test_collect_records_labels_and_annotates_failed_attempts(tmp_path: Path):
    cfg = config(tmp_path, num_episodes=2, episode_len=9, task_steps=4, validation_fraction=0.5)
    folders = collect(cfg, labelling_policy, NeverSucceeds(), fake_embed)
    meta = json.loads((episode_dir(Path(cfg.out), 0) / "episode.json").read_text())
    assert [(a["start"], a["end"], a["succeeded"], a["relabelled"]) for a in meta["attempts"]] == [
        (0, 3, False, True), (4, 7, False, True), (8, 8, False, True)]
    assert all(a["sentence"] for a in meta["attempts"])
    # the learner is told the sentence the attempt is annotated with, as in evaluation (not the task name)
    assert LabellingPolicy.told[:4] == [meta["attempts"][0]["sentence"]] * 4
    assert LabellingPolicy.told[4:8] == [meta["attempts"][1]["sentence"]] * 4
    train = CalvinDataset(folders["training"])
    assert train.annotations()["info"]["indx"] == [(0, 3), (4, 7), (8, 8)]  # every attempt, whole
    frames = [np.load(frame_file(folders["training"], i)) for i in range(9)]
    for frame in frames:
        np.testing.assert_array_equal(frame["rel_actions"], LabellingPolicy.label)
    # the arm moved along x as sent, not up as labelled
    assert frames[-1]["robot_obs"][0] - frames[0]["robot_obs"][0] > 0.02
    assert abs(frames[-1]["robot_obs"][2] - frames[0]["robot_obs"][2]) < 0.02


def test_plain_collection_still_annotates_successes_only(tmp_path: Path):
    from test_collect import wiggle_policy

    cfg = config(tmp_path, num_episodes=1, episode_len=7, window=4)
    folders = collect(cfg, wiggle_policy, EveryThirdStep(), fake_embed)
    meta = json.loads((episode_dir(Path(cfg.out), 0) / "episode.json").read_text())
    assert not any(a["relabelled"] for a in meta["attempts"])
    assert [a["sentence"] is None for a in meta["attempts"]] == [not a["succeeded"] for a in meta["attempts"]]
    assert CalvinDataset(folders["training"]).annotations()["info"]["indx"] == [(0, 3), (3, 6)]


def test_dagger_settings_are_checked_and_kept_apart(tmp_path: Path):
    with pytest.raises(ValueError, match="needs ckpt"):
        CollectConfig(policy="checkpoint")
    with pytest.raises(ValueError, match="policy must be one of"):
        CollectConfig(policy="human")
    with pytest.raises(ValueError, match="expert_share"):
        CollectConfig(policy="checkpoint", ckpt="x", expert_share=2.0)
    with pytest.raises(ValueError, match="task_steps"):
        CollectConfig(task_steps=0)
    plain = CollectConfig().episode_settings()
    assert "policy" not in plain  # folders recorded before DAgger existed still resume
    dagger = CollectConfig(policy="checkpoint", ckpt="runs/a").episode_settings()
    assert dagger["ckpt"] == "runs/a" and dagger["expert_share"] == 0.3
    factory = CollectConfig(policy="checkpoint", ckpt="runs/a", expert_share=0.5, segment=7).policy_factory()
    assert factory.keywords == {"ckpt": "runs/a", "expert_share": 0.5, "segment": 7, "cache": "none"}


def test_catch_up_skips_waypoints_the_arm_got_past_but_never_a_gripper_change(env):
    obs, _ = env.reset(seed=6)
    expert = ScriptedExpert("D", rng=np.random.default_rng(0))
    expert.step(obs, "turn_on_led")  # rise, travel over the button, above it, press, back up
    plan = expert._plan
    assert expert.catch_up(obs["robot_obs"][:3]) == 0  # where it started: nothing is behind it
    assert expert.catch_up(np.asarray(plan[1].pos)) == 1 and expert._index == 1  # at the travel point
    assert expert.catch_up(np.asarray(plan[3].pos)) == 2 and expert._index == 3  # already pressing
    assert expert.catch_up(np.asarray(plan[3].pos)) == 0

    obs, _ = env.reset(seed=6)
    expert = ScriptedExpert("D", rng=np.random.default_rng(0))
    expert.step(obs, "lift_red_block_table")  # ... down to the block (open), close, lift
    plan = expert._plan
    close = next(i for i, wp in enumerate(plan) if not wp.open)
    expert.catch_up(np.asarray(plan[close].pos))
    assert expert._index == close - 1  # at the grasp point with the gripper open: it must still close


def test_the_default_teacher_is_an_independent_copy_with_the_same_plans():
    expert = ScriptedExpert("D", rng=np.random.default_rng(3))
    policy = ExpertLabelledPolicy(ConstantLearner(), expert, np.random.default_rng(0), 0.0, 5)
    assert policy.teacher is not expert and policy.teacher.rng is not expert.rng
    # the same generator state: plans that draw (where to put a block down) draw alike
    assert policy.teacher.rng.random() == expert.rng.random()
