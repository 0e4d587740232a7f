"""Tests for dream_policy.data.windows and dream_policy.data.loader on a tiny synthetic CALVIN split."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dream_policy.data.features import FrameError
from dream_policy.data.loader import TARGET_NAMES, CalvinWindowDataset, FrameCache, target_names
from dream_policy.data.normalization import wrap_angle
from dream_policy.data.windows import (
    ANN,
    EPISODE,
    NO_ANN,
    T,
    WindowSpec,
    anchors,
    annotated_samples,
    episode_samples,
    epoch_order,
    first_frames,
    history_frames,
    repeat_attempt_starts,
    shard,
)
from sim.calvin_dataset import EP_IDS_FILE, LANG_FILE, SCENE_INFO_FILE, frame_file
from sim.cameras import SEGMENT_NAMES

EPISODES = [(5, 34), (50, 79)]  # ids need not be contiguous across episodes (real CALVIN's aren't)
WINDOWS = [(7, 25), (12, 34), (30, 62), (66, 79)]  # (30, 62) straddles the gap between episodes
RED = SEGMENT_NAMES.index("block_red")
DEPTH_SEG = ("depth_static", "depth_gripper", "seg_static", "seg_gripper")


def frame_arrays(rng: np.random.Generator, frame_id: int) -> dict[str, np.ndarray]:
    """One frame with CALVIN's keys and shapes; the red block moves along x in episode 2 only."""
    scene = np.zeros(24)
    scene[6] = 0.01 * frame_id if frame_id >= 50 else 0.0
    rel = rng.uniform(-1, 1, 7)
    rel[6] = rng.choice([-1.0, 1.0])
    robot_obs = rng.normal(size=15) * 3 + 1
    robot_obs[3:6] = wrap_angle(robot_obs[3:6])  # Euler angles, as a simulator reports them
    return {
        "actions": rng.normal(size=7), "rel_actions": rel, "robot_obs": robot_obs,
        "scene_obs": scene,
        "rgb_static": rng.integers(0, 256, (200, 200, 3), dtype=np.uint8),
        "rgb_gripper": rng.integers(0, 256, (84, 84, 3), dtype=np.uint8),
        "depth_static": rng.random((200, 200), dtype=np.float32),
        "depth_gripper": rng.random((84, 84), dtype=np.float32),
        "seg_static": rng.integers(0, len(SEGMENT_NAMES), (200, 200), dtype=np.uint8),
        "seg_gripper": rng.integers(0, len(SEGMENT_NAMES), (84, 84), dtype=np.uint8),
    }


def make_split(folder: Path, drop: tuple[str, ...] = (), seed: int = 0) -> Path:
    """A CALVIN-layout split: frames of EPISODES, ep_start_end_ids, scene info, annotations."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for start, end in EPISODES:
        for frame_id in range(start, end + 1):
            frame = {k: v for k, v in frame_arrays(rng, frame_id).items() if k not in drop}
            np.savez(frame_file(folder, frame_id), **frame)
    np.save(folder / EP_IDS_FILE, np.asarray(EPISODES, np.int64))
    np.save(folder / SCENE_INFO_FILE, {"calvin_scene_D": [EPISODES[0][0], EPISODES[-1][1]]})
    (folder / LANG_FILE).parent.mkdir()
    n = len(WINDOWS)
    np.save(folder / LANG_FILE, {
        "language": {"ann": [f"sentence {i}" for i in range(n)], "task": [f"task_{i}" for i in range(n)],
                     "emb": rng.normal(size=(n, 1, 384)).astype(np.float32)},
        "info": {"episodes": [], "indx": WINDOWS},
    })
    return folder


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_split(tmp_path_factory.mktemp("calvin") / "training")


def dataset(root: Path, **kw) -> CalvinWindowDataset:
    kw = {"split": None, "history": 3, "chunk": 4, "forecast_n": 2, **kw}
    return CalvinWindowDataset(root, **kw)


def stored(root: Path, frame_id: int, key: str) -> np.ndarray:
    with np.load(frame_file(root, frame_id)) as data:
        return data[key]


# ---- windows: pure index logic ------------------------------------------------------------------

def test_anchors_keep_the_whole_window_inside_the_range() -> None:
    spec = WindowSpec(history=3, chunk=4, forecast_n=5)
    assert anchors(10, 20, spec).tolist() == [12, 13, 14, 15]  # t-2 >= 10 and t+5 <= 20
    assert anchors(10, 14, spec).size == 0
    assert anchors(0, 0, WindowSpec()).tolist() == [0]
    with pytest.raises(ValueError, match="history >= 1"):
        WindowSpec(history=0)


def test_episode_samples_never_cross_episodes() -> None:
    spec = WindowSpec(history=4, chunk=3, forecast_n=6)
    samples = episode_samples(EPISODES, spec)
    assert (samples[:, ANN] == NO_ANN).all()
    for t, ep, _ in samples:
        start, end = EPISODES[ep]
        assert start <= t - spec.before and t + spec.after <= end
    assert len(samples) == sum(e - s + 1 - spec.before - spec.after for s, e in EPISODES)


def test_annotated_samples_stay_inside_window_and_episode() -> None:
    spec = WindowSpec(history=2, chunk=3)
    samples = annotated_samples(EPISODES, WINDOWS, spec)
    for t, ep, ann in samples:
        lo = max(WINDOWS[ann][0], EPISODES[ep][0])
        hi = min(WINDOWS[ann][1], EPISODES[ep][1])
        assert lo <= t - 1 and t + 2 <= hi
    straddling = samples[samples[:, ANN] == 2]
    assert set(straddling[:, EPISODE]) == {0, 1}  # both parts of (30, 62) are used, nothing between
    assert sorted(straddling[straddling[:, EPISODE] == 0, T]) == [31, 32]
    assert ((samples[:, T] == 20).sum()) == 2  # overlapping windows: one sample per annotation


def test_padded_history_anchors_at_the_window_start_like_the_runtime() -> None:
    spec = WindowSpec(history=3, chunk=2)
    plain = annotated_samples(EPISODES, WINDOWS, spec)
    padded = annotated_samples(EPISODES, WINDOWS, spec, pad_history=True)
    first = first_frames(padded, EPISODES, WINDOWS)
    assert set(map(tuple, plain)) <= set(map(tuple, padded))
    extra = np.array([row for row in padded if tuple(row) not in set(map(tuple, plain))])
    assert len(extra) and (extra[:, T] - first_frames(extra, EPISODES, WINDOWS) < spec.before).all()
    assert (padded[:, T] >= first).all()
    hist = history_frames(padded[:, T], first, spec)
    assert (hist >= first[:, None]).all() and (hist[:, -1] == padded[:, T]).all()
    at_start = padded[:, T] == first  # the runtime's first step: the whole history is the first frame
    assert at_start.any() and (hist[at_start] == first[at_start, None]).all()
    one_in = padded[:, T] == first + 1
    assert (hist[one_in] == np.stack([first[one_in], first[one_in], first[one_in] + 1], axis=1)).all()
    full = padded[:, T] - first >= spec.before  # later anchors: the plain history
    assert (hist[full] == padded[full, T][:, None] + np.arange(-2, 1)).all()


def test_attempt_starts_are_repeated_and_nothing_else() -> None:
    spec = WindowSpec(history=2, chunk=3)
    samples = annotated_samples(EPISODES, WINDOWS, spec)
    assert repeat_attempt_starts(samples, WINDOWS, 3, 1) is samples
    out = repeat_attempt_starts(samples, WINDOWS, 3, 4)
    assert np.array_equal(out[: len(samples)], samples)  # the originals first, in order
    extra = out[len(samples):]
    offsets = samples[:, T] - np.asarray(WINDOWS)[samples[:, ANN], 0]
    early = samples[offsets < 3]
    assert len(early) and len(early) < len(samples)
    assert len(extra) == 3 * len(early)
    assert all(np.array_equal(extra[k * len(early):(k + 1) * len(early)], early) for k in range(3))
    with pytest.raises(ValueError, match="repeat >= 1"):
        repeat_attempt_starts(samples, WINDOWS, 3, 0)
    with pytest.raises(ValueError, match="language-annotated"):
        repeat_attempt_starts(episode_samples(EPISODES, spec), WINDOWS, 3, 2)


def test_epoch_order_is_a_seeded_permutation() -> None:
    samples = episode_samples(EPISODES, WindowSpec())
    a, b = epoch_order(samples, 1, 0), epoch_order(samples, 1, 0)
    assert np.array_equal(a, b) and sorted(a) == list(range(len(samples)))
    assert not np.array_equal(a, epoch_order(samples, 2, 0))
    assert not np.array_equal(a, epoch_order(samples, 1, 1))


def test_buffered_order_is_a_permutation_with_local_reads() -> None:
    samples = episode_samples(EPISODES, WindowSpec())
    order = epoch_order(samples, 0, 0, shuffle_buffer=4)
    assert sorted(order) == list(range(len(samples)))
    assert not np.array_equal(order, np.arange(len(samples)))
    # with a 4-slot buffer a sample is emitted at most 3 places before its turn in its episode's stream
    first = samples[order[: len(samples) // 2], EPISODE]
    assert np.mean(first == first[0]) > 0.8


def test_shard_splits_exactly_and_evenly() -> None:
    order = np.random.default_rng(0).permutation(23)
    parts = [shard(order, 0, 1, w, 3) for w in range(3)]
    assert sorted(np.concatenate(parts)) == list(range(23))
    ranks = [np.concatenate([shard(order, r, 2, w, 2) for w in range(2)]) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 11 and not set(ranks[0]) & set(ranks[1])
    with pytest.raises(ValueError, match="rank"):
        shard(order, 2, 2, 0, 1)


# ---- the dataset ------------------------------------------------------------------------------

def test_samples_match_the_stored_frames(split: Path) -> None:
    ds = dataset(split)
    ann = np.load(split / LANG_FILE, allow_pickle=True).item()
    norm = ds.normalizer
    for index in range(0, len(ds.samples), 7):
        s = ds.sample(index)
        t, ep, a = s["frame_id"], s["episode"], s["ann_index"]
        assert EPISODES[ep][0] <= t - 2 and t + 3 <= EPISODES[ep][1]
        assert max(WINDOWS[a][0], EPISODES[ep][0]) <= t - 2 and t + 3 <= min(WINDOWS[a][1], EPISODES[ep][1])
        want = np.stack([stored(split, i, "rel_actions") for i in range(t, t + 4)]).astype(np.float32)
        assert s["actions"].dtype == torch.float32 and np.array_equal(s["actions"].numpy(), want)
        earlier = np.stack([[stored(split, i, "rel_actions") for i in range(f, f + 4)] for f in range(t - 2, t + 1)])
        assert s["actions_history"].shape == (3, 4, 7)  # every history frame's own chunk, the anchor's last
        assert np.array_equal(s["actions_history"].numpy(), earlier.astype(np.float32))
        h = s["history"]
        assert h["rgb_static"].shape == (3, 3, 200, 200) and h["rgb_static"].dtype == torch.uint8
        assert h["rgb_gripper"].shape == (3, 3, 84, 84)
        assert np.array_equal(h["rgb_static"][0].numpy(), stored(split, t - 2, "rgb_static").transpose(2, 0, 1))
        raw = np.stack([stored(split, i, "robot_obs") for i in range(t - 2, t + 1)])
        assert h["robot_obs"].shape == (3, 15)
        centred = raw - norm.obs_mean
        centred[:, 3:6] = (centred[:, 3:6] + np.pi) % (2 * np.pi) - np.pi  # angles: about their circular mean
        np.testing.assert_allclose(h["robot_obs"].numpy(), centred / norm.obs_std, rtol=1e-5, atol=1e-6)
        assert np.array_equal(s["lang_emb"].numpy(), ann["language"]["emb"][a, 0])
        assert np.array_equal(s["targets"]["depth_static"].numpy(), stored(split, t + 2, "depth_static"))


def test_dynamic_mask_marks_the_moving_block(split: Path) -> None:
    ds = dataset(split)
    by_episode = {0: False, 1: False}
    for index, (t, ep, _) in enumerate(ds.samples):
        mask = ds.sample(index)["targets"]["dynamic_static"].numpy()
        seg_now, seg_next = stored(split, t, "seg_static"), stored(split, t + 2, "seg_static")
        want = ((seg_now == RED) | (seg_next == RED)) if ep == 1 else np.zeros_like(mask)
        assert mask.dtype == bool and np.array_equal(mask, want)
        by_episode[int(ep)] = True
    assert all(by_episode.values())


def test_flags_say_which_targets_exist(split: Path) -> None:
    s = dataset(split).sample(0)
    assert set(s["targets"]) == set(TARGET_NAMES) and all(s["has_target"].values())
    none = dataset(split, forecast_n=0).sample(0)
    assert none["targets"] == {} and not any(none["has_target"].values())


def test_split_without_depth_and_seg_has_no_such_targets(tmp_path: Path) -> None:
    root = make_split(tmp_path / "plain", drop=DEPTH_SEG)
    ds = dataset(root)
    s = ds.sample(3)
    assert s["targets"] == {} and set(s["has_target"]) == set(TARGET_NAMES)
    assert not any(s["has_target"].values())
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["actions"].shape == (4, 4, 7) and not batch["has_target"]["depth_static"].any()
    assert target_names({"seg_static", "scene_obs"}, 1) == ["seg_static", "dynamic_static"]


def test_without_language_every_episode_window_is_a_sample(split: Path) -> None:
    ds = dataset(split, language=False)
    assert len(ds) == len(episode_samples(EPISODES, ds.spec))
    s = ds.sample(0)
    assert "lang_emb" not in s and s["ann_index"] == NO_ANN


def test_cache_stays_bounded_and_holds_no_frames_when_pickled(split: Path) -> None:
    ds = dataset(split, cache_size=5)
    for index in ds.positions()[:20]:
        ds.sample(int(index))
        assert len(ds.cache) <= 5
    assert len(pickle.dumps(ds)) < 40_000  # indices and embeddings only: less than one rgb_static frame
    unbounded_reads = FrameCache(0)
    unbounded_reads.get(split, 5, ["robot_obs"], ds.features)
    assert len(unbounded_reads) == 0


def test_dataloader_workers_yield_each_sample_once_per_epoch(split: Path) -> None:
    ds = dataset(split, seed=3)
    loader = DataLoader(ds, batch_size=4, num_workers=2)
    ids = torch.cat([b["sample_id"] for b in loader]).tolist()
    assert sorted(ids) == list(range(len(ds.samples))) and len(ds) == len(ids)


def test_ranks_get_disjoint_equal_shares(split: Path) -> None:
    shares = [dataset(split, rank=r, world_size=2) for r in range(2)]
    ids = [set(np.concatenate([d.positions(w, 2) for w in range(2)]).tolist()) for d in shares]
    n = len(shares[0].samples)
    assert len(ids[0]) == len(ids[1]) == n // 2 == len(shares[0]) and not ids[0] & ids[1]


def test_seed_and_epoch_fix_the_order(split: Path) -> None:
    def order(seed: int, epoch: int = 0) -> list[int]:
        ds = dataset(split, seed=seed)
        ds.set_epoch(epoch)
        return [s["sample_id"] for s in ds]

    first = order(0)
    assert first == order(0) and first != order(1) and first != order(0, epoch=1)
    assert sorted(first) == list(range(len(first)))
    unshuffled = dataset(split, shuffle=False)
    assert unshuffled.positions().tolist() == list(range(len(unshuffled.samples)))


# ---- clear errors -------------------------------------------------------------------------------

def rewrite(root: Path, frame_id: int, **changes: np.ndarray | None) -> Path:
    path = frame_file(root, frame_id)
    with np.load(path) as data:
        frame = {k: data[k] for k in data.files}
    frame.update({k: v for k, v in changes.items() if v is not None})
    np.savez(path, **{k: v for k, v in frame.items() if changes.get(k, v) is not None})
    return path


def test_missing_key_names_the_file(tmp_path: Path) -> None:
    root = make_split(tmp_path / "s")
    path = rewrite(root, 20, rgb_gripper=None)
    ds = dataset(root, shuffle=False)
    with pytest.raises(FrameError, match=rf"{re.escape(str(path))}.*'rgb_gripper'"):
        for _ in ds:
            pass
    rewrite(root, 5, robot_obs=None)
    with pytest.raises(FrameError, match=r"episode_0000005.npz.*robot_obs"):
        dataset(root)


def test_wrong_shape_names_file_key_and_expected_shape(tmp_path: Path) -> None:
    root = make_split(tmp_path / "s")
    path = rewrite(root, 20, rgb_static=np.zeros((100, 100, 3), np.uint8))
    ds = dataset(root, shuffle=False)
    with pytest.raises(FrameError, match=rf"{re.escape(str(path))}: key 'rgb_static'.*\(200, 200, 3\)"):
        for _ in ds:
            pass


def test_truncated_file_names_the_file(tmp_path: Path) -> None:
    root = make_split(tmp_path / "s")
    ds = dataset(root, shuffle=False)  # statistics are computed (and saved) before the damage
    path = frame_file(root, 20)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(FrameError, match=rf"{re.escape(str(path))}: truncated or corrupt"):
        for _ in ds:
            pass


def test_windows_longer_than_any_span_fail_early(split: Path) -> None:
    with pytest.raises(ValueError, match="no window of .* fits inside an annotated window"):
        dataset(split, history=20, chunk=20)
