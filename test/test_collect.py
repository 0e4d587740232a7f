"""Tests for sim.collect (with a fake policy, oracle and embedder) and sim.calvin_dataset."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from sim.calvin_dataset import EXTRA_FRAME_KEYS, FRAME_KEYS, CalvinDataset, frame_file
from sim.collect import (
    CollectConfig,
    choose_task,
    collect,
    collect_command,
    collect_episode,
    colour_template,
    episode_dir,
    label_span,
    sent_action,
    sibling_tasks,
    split_episodes,
    task_colour,
)
from sim.scene_reading import feasible_tasks, symbolic_state
from sim.state_sampler import default_robot_obs
from sim.symbolic_state import SLOTS, TABLE_SLOTS, YAW_RANGE

EPISODE_LEN = 7
CREATED: list[int] = []


class WigglePolicy:
    """Moves a little along x and opens the gripper: enough to exercise clipping and recording."""

    def __init__(self) -> None:
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def step(self, obs: dict, instruction: str) -> np.ndarray:
        assert isinstance(instruction, str) and obs["rgb_static"].shape == (200, 200, 3)
        return np.array([2.0, 0, 0, 0, 0, 0, 0.5])


def wiggle_policy(scene: str, seed: int, noise: float) -> WigglePolicy:
    CREATED.append(seed)
    return WigglePolicy()


class EveryThirdStep:
    """Reports success on the third step of each attempt, so annotations appear at known frames."""

    def __init__(self) -> None:
        self.start, self.calls = None, 0

    def succeeded(self, task, start, current) -> bool:
        if start is not self.start:
            self.start, self.calls = start, 0
        self.calls += 1
        return self.calls == 3


def fake_embed(sentences: list[str]) -> np.ndarray:
    """Deterministic stand-in for MiniLM (the real model is tested in test_language)."""
    return np.stack([np.random.default_rng(zlib.crc32(s.encode())).normal(size=384) for s in sentences])


def config(tmp_path: Path, **overrides) -> CollectConfig:
    values = {"out": str(tmp_path / "data"), "num_episodes": 3, "episode_len": EPISODE_LEN, "workers": 1,
              "validation_fraction": 0.34, "window": 4, "seed": 3}
    return CollectConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def env():
    from sim.env import PlayTableEnv

    env = PlayTableEnv("D", segmentation=True)
    yield env
    env.close()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("collect")
    return collect(config(tmp), wiggle_policy, EveryThirdStep(), fake_embed)


# ---- one episode ----------------------------------------------------------------------------

def test_sent_action_clips_pose_and_snaps_gripper():
    np.testing.assert_array_equal(sent_action(np.array([2, -3, 0.5, 0, 0, 1, 0.2])), [1, -1, 0.5, 0, 0, 1, 1])
    assert sent_action(np.zeros(7))[6] == -1
    with pytest.raises(ValueError, match="shape"):
        sent_action(np.zeros(6))


def test_chosen_task_is_feasible(env):
    _, info = env.reset(seed=0)
    snap = info["snapshot"]
    rng = np.random.default_rng(0)
    tasks = {choose_task(snap, env.cfg, rng) for _ in range(20)}
    assert tasks <= set(feasible_tasks(symbolic_state(snap, env.cfg))) and len(tasks) > 1


def test_collect_episode_records_every_frame(env):
    frames: dict[int, dict] = {}
    policy = WigglePolicy()
    attempts = collect_episode(env, policy, EveryThirdStep(), np.random.default_rng(0),
                               frames.__setitem__, episode_len=EPISODE_LEN, max_task_steps=5)
    assert sorted(frames) == list(range(EPISODE_LEN))
    assert [a.succeeded for a in attempts] == [True, True, False]  # success at frames 3 and 6, then cut off
    assert [(a.start, a.end) for a in attempts] == [(0, 3), (3, 6), (6, 6)]
    assert policy.resets == len(attempts) and all(a.sentence for a in attempts[:2])
    rel = np.stack([f["rel_actions"] for f in frames.values()])
    np.testing.assert_array_equal(rel[:, [0, 6]], np.ones((EPISODE_LEN, 2)))
    absolute = np.stack([f["actions"] for f in frames.values()])
    np.testing.assert_allclose(np.diff(absolute[:, 0]), 0.02)  # the stored target moves 2 cm a step
    np.testing.assert_allclose(absolute[-1, :6], np.concatenate([env.target_pos, env.target_euler]))


# ---- the data set on disk ------------------------------------------------------------------

def test_layout_round_trips(dataset):
    folders = dataset
    assert set(folders) == {"training", "validation"}
    train, val = CalvinDataset(folders["training"]), CalvinDataset(folders["validation"])
    assert train.episodes() == [(0, EPISODE_LEN - 1), (EPISODE_LEN, 2 * EPISODE_LEN - 1)]
    assert val.episodes() == [(0, EPISODE_LEN - 1)]
    assert train.scene_info() == {"calvin_scene_D": [0, 2 * EPISODE_LEN - 1]}
    frame = train.frame(EPISODE_LEN + 1)
    for key, (kind, shape) in {**FRAME_KEYS, **EXTRA_FRAME_KEYS}.items():
        assert frame[key].shape == shape and frame[key].dtype.kind == kind, key
    assert frame["rgb_static"].dtype == np.uint8 and frame["depth_static"].dtype == np.float32
    stats = val.statistics()
    assert stats == train.statistics()
    assert [len(stats[k]["mean"]) for k in ("robot_obs", "actions", "rel_actions")] == [15, 7, 7]


def test_annotations_end_at_success_frames(dataset):
    folders = dataset
    train = CalvinDataset(folders["training"])
    ann = train.annotations()
    emb = ann["language"]["emb"]
    assert emb.dtype == np.float32 and emb.shape == (len(ann["language"]["ann"]), 1, 384)
    assert len(ann["language"]["ann"]) == 4  # two successes per episode (frames 3 and 6)
    assert ann["info"]["indx"] == [(0, 3), (3, 6), (7, 10), (10, 13)]  # window 4, ends at success
    np.testing.assert_allclose(emb[:, 0], fake_embed(ann["language"]["ann"]))
    from sim.annotations import training_sentences

    for task, sentence in zip(ann["language"]["task"], ann["language"]["ann"]):
        assert sentence in training_sentences()[task]


def test_label_span_modes():
    # attempt from frame 30 to its success at 100, episode starting at frame 10
    assert label_span(30, 100, 10, 64, "calvin") == (37, 100)  # the last 64 frames
    assert label_span(30, 100, 10, 160, "calvin") == (10, 100)  # reaches back into the attempt before
    assert label_span(30, 100, 10, 160, "attempt") == (30, 100)  # only the attempt's own frames
    assert label_span(30, 100, 10, 64, "attempt") == (37, 100)  # still at most `window`
    with pytest.raises(ValueError, match="label mode"):
        label_span(30, 100, 10, 64, "all")
    with pytest.raises(ValueError, match="label must be one of"):
        CollectConfig(label="all")


def test_relabelling_reassembles_without_recording(tmp_path):
    """Running collect again with another window or label mode only rewrites the annotations."""
    cfg = config(tmp_path, window=10)
    ann = CalvinDataset(collect(cfg, wiggle_policy, EveryThirdStep(), fake_embed)["training"]).annotations()
    assert ann["info"]["indx"] == [(0, 3), (0, 6), (7, 10), (7, 13)]  # calvin: back to the episode start
    recorded = frame_file(episode_dir(Path(cfg.out), 0), 0).stat().st_mtime_ns
    relabelled = config(tmp_path, window=10, label="attempt")
    folders = collect(relabelled, wiggle_policy, EveryThirdStep(), fake_embed)
    assert CalvinDataset(folders["training"]).annotations()["info"]["indx"] == [(0, 3), (3, 6), (7, 10), (10, 13)]
    assert frame_file(episode_dir(Path(cfg.out), 0), 0).stat().st_mtime_ns == recorded


def test_resume_skips_finished_episodes(tmp_path):
    cfg = config(tmp_path, num_episodes=3)
    collect(cfg, wiggle_policy, EveryThirdStep(), fake_embed)
    out = Path(cfg.out)
    kept = {i: frame_file(episode_dir(out, i), 0).stat().st_mtime_ns for i in (0, 2)}
    lost = episode_dir(out, 1)
    lost.rename(lost.with_name(lost.name + ".partial"))  # as if killed while recording episode 1
    CREATED.clear()
    folders = collect(cfg, wiggle_policy, EveryThirdStep(), fake_embed)
    assert len(CREATED) == 1 and episode_dir(out, 1).is_dir()
    assert not lost.with_name(lost.name + ".partial").exists()
    assert {i: frame_file(episode_dir(out, i), 0).stat().st_mtime_ns for i in (0, 2)} == kept
    assert sum(len(list(f.glob("episode_*.npz"))) for f in folders.values()) == 3 * EPISODE_LEN


def test_resume_refuses_other_settings(tmp_path):
    collect(config(tmp_path, num_episodes=1), wiggle_policy, EveryThirdStep(), fake_embed)
    with pytest.raises(ValueError, match="episode_len"):
        collect(config(tmp_path, num_episodes=1, episode_len=5), wiggle_policy, EveryThirdStep(), fake_embed)


def test_calvin_starts_put_the_blocks_where_calvins_reset_does(env):
    frames: dict[int, dict] = {}
    collect_episode(env, WigglePolicy(), EveryThirdStep(), np.random.default_rng(3), frames.__setitem__,
                    episode_len=2, max_task_steps=5, starts="calvin")
    scene = frames[0]["scene_obs"]
    slots = [*TABLE_SLOTS, *SLOTS.values()]
    for block in range(3):  # red, blue, pink: in a table slot or on the slider shelf, at CALVIN's yaws
        xyz = scene[6 + 6 * block:9 + 6 * block]
        assert min(np.linalg.norm(xyz[:2] - slot[:2]) for slot in slots) < 0.01
        assert YAW_RANGE[0] - 0.02 < scene[11 + 6 * block] < YAW_RANGE[1] + 0.02
    assert np.allclose(frames[0]["robot_obs"][:3], default_robot_obs()[:3], atol=0.01)


def test_the_start_kind_is_an_episode_setting(tmp_path):
    assert "starts" not in config(tmp_path).episode_settings()
    assert config(tmp_path, starts="calvin").episode_settings()["starts"] == "calvin"
    collect(config(tmp_path, num_episodes=1), wiggle_policy, EveryThirdStep(), fake_embed)
    with pytest.raises(ValueError, match="starts"):
        collect(config(tmp_path, num_episodes=1, starts="calvin"), wiggle_policy, EveryThirdStep(), fake_embed)


def test_colour_template_names_the_block_colour_only():
    assert colour_template("lift_red_block_table") == "lift_{}_block_table"
    assert colour_template("push_pink_block_left") == "push_{}_block_left"
    assert colour_template("open_drawer") is None and colour_template("stack_block") is None


def test_sibling_tasks_put_one_task_in_every_feasible_colour_first():
    feasible = ["open_drawer", "lift_blue_block_table", "push_red_block_left", "lift_red_block_table",
                "lift_pink_block_table", "rotate_red_block_right", "turn_on_led"]
    tasks = sibling_tasks(feasible, 5, np.random.default_rng(0))
    assert sorted(tasks[:3]) == ["lift_blue_block_table", "lift_pink_block_table", "lift_red_block_table"]
    assert set(tasks[3:]) <= {"push_red_block_left", "rotate_red_block_right"} and len(set(tasks[3:])) == 2
    assert tasks == sibling_tasks(feasible, 5, np.random.default_rng(0))  # the group's rng decides
    everything = sibling_tasks(feasible, 9, np.random.default_rng(1))
    assert set(everything[:7]) == set(feasible) and everything[7:] == everything[:2]  # repeats when short
    assert set(sibling_tasks(["open_drawer", "turn_on_led"], 2, np.random.default_rng(0))) == {"open_drawer",
                                                                                              "turn_on_led"}
    assert len(sibling_tasks([], 3, np.random.default_rng(0))) == 3  # nothing feasible: any task
    # one block per place: no task has two colours, so the next siblings name the colours not named yet
    spread = ["lift_pink_block_table", "push_pink_block_left", "rotate_pink_block_right", "lift_red_block_slider",
              "lift_blue_block_drawer", "open_drawer"]
    for seed in range(10):
        first = sibling_tasks(spread, 3, np.random.default_rng(seed))
        assert {task_colour(t) for t in first} == {"pink", "red", "blue"}
    with pytest.raises(ValueError, match="count"):
        sibling_tasks(feasible, 0, np.random.default_rng(0))


def test_sibling_episodes_share_their_start_and_differ_in_their_first_task(tmp_path):
    cfg = config(tmp_path, num_episodes=4, siblings=3, starts="calvin")
    assert cfg.episode_settings()["siblings"] == 3 and "siblings" not in config(tmp_path).episode_settings()
    collect(cfg, wiggle_policy, EveryThirdStep(), fake_embed)
    out = Path(cfg.out)
    first = [np.load(frame_file(episode_dir(out, i), 0)) for i in range(4)]
    tasks = [json.loads((episode_dir(out, i) / "episode.json").read_text())["attempts"][0]["task"]
             for i in range(4)]
    for sibling in first[1:3]:
        np.testing.assert_array_equal(sibling["scene_obs"], first[0]["scene_obs"])
        np.testing.assert_array_equal(sibling["rgb_static"], first[0]["rgb_static"])
    assert len(set(tasks[:3])) == 3  # one start, three different first tasks
    assert not np.allclose(first[3]["scene_obs"], first[0]["scene_obs"])  # the next group starts elsewhere
    splits = split_episodes(4, 0.34, cfg.seed, group=3)
    assert splits["validation"] in ([0, 1, 2], [3])  # a group is never split
    with pytest.raises(ValueError, match="siblings"):  # resuming with another grouping is refused
        collect(config(tmp_path, num_episodes=4, siblings=2, starts="calvin"), wiggle_policy, EveryThirdStep(),
                fake_embed)


def test_single_episode_gives_an_empty_validation_split(tmp_path):
    folders = collect(config(tmp_path, num_episodes=1), wiggle_policy, EveryThirdStep(), fake_embed)
    val = CalvinDataset(folders["validation"])
    assert val.episodes() == [] and len(val) == 0 and val.scene_info() == {}
    assert val.annotations()["language"]["emb"].shape == (0, 1, 384)


@pytest.mark.parametrize(("n", "fraction", "n_val"), [(1, 0.5, 0), (2, 0.0, 1), (10, 0.1, 1), (10, 0.25, 2),
                                                      (3, 0.9, 2)])
def test_split_sizes(n, fraction, n_val):
    splits = split_episodes(n, fraction, seed=0)
    assert len(splits["validation"]) == n_val
    assert sorted(splits["training"] + splits["validation"]) == list(range(n))
    assert splits == split_episodes(n, fraction, seed=0)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"scene": "E"}, "scene 'E'"),
    ({"num_episodes": -1}, "num_episodes"),
    ({"episode_len": 0}, "episode_len"),
    ({"workers": 0}, "workers"),
    ({"action_noise": -0.1}, "action_noise"),
    ({"validation_fraction": 1.0}, "validation_fraction"),
    ({"speed": 3}, "unknown config keys"),
    ({"starts": "anywhere"}, "starts must be one of"),
    ({"siblings": 0}, "siblings"),
])
def test_bad_config_is_rejected(tmp_path, overrides, message):
    cfg = {**CollectConfig().__dict__, "out": str(tmp_path), **overrides}
    with pytest.raises(ValueError, match=message):
        collect_command(cfg)


# ---- the reader's errors -----------------------------------------------------------------------

def test_reader_names_missing_files_and_keys(dataset, tmp_path):
    folders = dataset
    with pytest.raises(FileNotFoundError, match="ep_start_end_ids"):
        CalvinDataset(tmp_path)
    ds = CalvinDataset(folders["training"])
    with pytest.raises(FileNotFoundError, match="episode_0009999.npz"):
        ds.frame(9999)
    with pytest.raises(KeyError, match=r"episode_0000000.npz lacks key\(s\) \['tactile'\]"):
        ds.frame(0, keys=("tactile",))
    broken = tmp_path / "broken"
    broken.mkdir()
    np.save(broken / "ep_start_end_ids.npy", np.array([[0, 1]]))
    np.savez(broken / "episode_0000000.npz", actions=np.zeros(7))
    np.savez(broken / "episode_0000001.npz", actions=np.zeros(7))
    with pytest.raises(KeyError, match="rel_actions"):
        CalvinDataset(broken).frame(1)
    np.save(broken / "ep_start_end_ids.npy", np.array([[0, 3]]))
    with pytest.raises(FileNotFoundError, match="episode_0000003.npz"):
        CalvinDataset(broken)


@pytest.mark.slow
def test_worker_pool_with_scripted_expert(tmp_path):
    """Two spawned workers run the real expert and oracle; the real embedder labels the windows."""
    cfg = config(tmp_path, num_episodes=2, episode_len=120, workers=2, window=64)
    folders = collect(cfg)
    train = CalvinDataset(folders["training"])
    assert train.episodes() == [(0, 119)] and len(CalvinDataset(folders["validation"])) == 120
    meta = json.loads((episode_dir(Path(cfg.out), 0) / "episode.json").read_text())
    assert meta["frames"] == 120 and meta["attempts"]
    assert train.annotations()["language"]["emb"].shape[1:] == (1, 384)
