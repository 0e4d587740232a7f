"""Tests for dream_policy.data.packed: the packed copy serves the streaming loader's samples."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_loader import make_split
from torch import nn
from torch.utils.data import DataLoader

from dream_policy.data.loader import TARGET_NAMES, CalvinWindowDataset
from dream_policy.data.packed import (
    PackedDataError,
    PackedUnion,
    PackedWindowDataset,
    is_packed,
    load_packed_statistics,
    pack_dataset,
    resize_images,
)
from dream_policy.encoders import ImagePreprocessor, VisionConfig
from dream_policy.world_heads import resize_target
from sim.calvin_dataset import LANG_FILE

IMAGE, TARGET, FORECAST = 32, 16, 2
WINDOW = {"history": 3, "chunk": 4, "forecast_n": FORECAST}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("calvin")
    make_split(root / "training")
    make_split(root / "validation", seed=1)
    return root


@pytest.fixture(scope="module")
def packed(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "data"
    pack_dataset(source, out, IMAGE, TARGET, FORECAST, workers=2)
    return out


def test_pack_writes_every_split_with_its_meta(source: Path, packed: Path) -> None:
    assert is_packed(packed) and is_packed(packed, "validation") and not is_packed(source)
    meta = json.loads((packed / "training" / "packed.json").read_text())
    assert meta["frames"] == 60 and meta["image_size"] == IMAGE and meta["forecast_n"] == FORECAST
    assert set(meta["targets"]) == set(TARGET_NAMES)
    assert np.load(packed / "training" / "rgb_static.npy", mmap_mode="r").shape == (60, IMAGE, IMAGE, 3)
    assert not (packed.parent / "data.packing").exists()


def test_a_copy_packed_before_the_circular_statistics_gets_them(packed: Path, tmp_path: Path) -> None:
    split = tmp_path / "training"
    shutil.copytree(packed / "training", split)
    fresh = json.loads((split / "normalization_stats.json").read_text())
    assert fresh["robot_obs"]["angle_dims"] == [3, 4, 5]
    old = {**fresh, "robot_obs": {k: v for k, v in fresh["robot_obs"].items() if not k.startswith(("circ", "angle"))}}
    (split / "normalization_stats.json").write_text(json.dumps(old))
    assert load_packed_statistics(split) == fresh
    assert json.loads((split / "normalization_stats.json").read_text()) == fresh  # saved back
    assert PackedWindowDataset(tmp_path, "training", **WINDOW).normalizer.angle_dims == (3, 4, 5)


def test_packed_samples_equal_the_streamed_samples_resized(source: Path, packed: Path) -> None:
    stream = CalvinWindowDataset(source, "training", **WINDOW)
    pack = PackedWindowDataset(packed, "training", **WINDOW)
    np.testing.assert_array_equal(pack.samples, stream.samples)
    np.testing.assert_allclose(pack.normalizer.obs_mean, stream.normalizer.obs_mean, rtol=1e-6)
    np.testing.assert_allclose(pack.normalizer.obs_std, stream.normalizer.obs_std, rtol=1e-6)
    for i in (0, 7, len(stream) - 1):
        a, b = stream.sample(i), pack[i]
        assert (a["frame_id"], a["episode"], a["ann_index"]) == (b["frame_id"], b["episode"], b["ann_index"])
        torch.testing.assert_close(b["lang_emb"], a["lang_emb"])
        torch.testing.assert_close(b["actions"], a["actions"])
        torch.testing.assert_close(b["actions_history"], a["actions_history"])
        torch.testing.assert_close(a["actions_history"][-1], a["actions"])  # the anchor's chunk is the last row
        torch.testing.assert_close(b["history"]["robot_obs"], a["history"]["robot_obs"], rtol=1e-5, atol=1e-5)
        for key in ("rgb_static", "rgb_gripper"):
            want = resize_images(a["history"][key].permute(0, 2, 3, 1).numpy(), IMAGE)  # (T, S, S, 3)
            assert torch.equal(b["history"][key], torch.from_numpy(want).permute(0, 3, 1, 2))
        assert b["has_target"] == a["has_target"]
        for name, target in a["targets"].items():
            kind = name.split("_")[0]
            mode = "area" if kind == "dynamic" else "nearest"
            want = resize_target(target[None], TARGET, mode)[0]
            torch.testing.assert_close(b["targets"][name].float(), want, atol=1e-3, rtol=1e-3)


def test_resized_images_match_the_vision_preprocessor(source: Path, packed: Path) -> None:
    """What the model sees from a packed image differs from the full-resolution path only by rounding."""
    stream = CalvinWindowDataset(source, "training", **WINDOW)
    pack = PackedWindowDataset(packed, "training", **WINDOW)
    prep = ImagePreprocessor(VisionConfig(image_size=IMAGE)).eval()
    full = prep(stream.sample(3)["history"]["rgb_static"])
    small = prep(pack[3]["history"]["rgb_static"])
    assert (full - small).abs().max() < 0.5 / 255 / 0.22 + 1e-6  # half a grey level over the smallest std


def test_batches_are_gathered_whole_and_equal_single_samples(packed: Path) -> None:
    pack = PackedWindowDataset(packed, "training", **WINDOW)
    loader = DataLoader(pack, batch_size=5, shuffle=False, collate_fn=pack.collate)
    batch = next(iter(loader))
    assert batch["history"]["rgb_static"].shape == (5, 3, 3, IMAGE, IMAGE)
    assert batch["history"]["rgb_static"].dtype == torch.uint8
    assert batch["actions"].shape == (5, 4, 7) and batch["has_target"]["seg_static"].shape == (5,)
    for i in range(5):
        one = pack[i]
        assert torch.equal(batch["history"]["rgb_gripper"][i], one["history"]["rgb_gripper"])
        assert torch.equal(batch["targets"]["depth_static"][i], one["targets"]["depth_static"])


def test_loader_workers_reopen_the_memory_maps(packed: Path) -> None:
    pack = PackedWindowDataset(packed, "training", **WINDOW)
    pack[0]  # opens the maps in this process
    batches = list(DataLoader(pack, batch_size=8, num_workers=2, collate_fn=pack.collate))
    assert sum(len(b["sample_id"]) for b in batches) == len(pack)
    assert torch.equal(torch.cat([b["sample_id"] for b in batches]), torch.arange(len(pack)))


def test_no_forecast_means_no_targets_and_no_language_means_every_window(packed: Path) -> None:
    pack = PackedWindowDataset(packed, "training", history=2, chunk=2, forecast_n=0, language=False)
    sample = pack[0]
    assert sample["targets"] == {} and not any(sample["has_target"].values()) and "lang_emb" not in sample
    assert len(pack) == 2 * (30 - 2)  # two episodes of 30 frames, windows of 1 before and 1 after


def test_attempt_starts_can_be_weighted_up(packed: Path) -> None:
    plain = PackedWindowDataset(packed, "training", **WINDOW)
    weighted = PackedWindowDataset(packed, "training", start_repeat=3, start_frames=4, **WINDOW)
    lang = np.load(packed / "training" / LANG_FILE, allow_pickle=True).item()
    starts = np.asarray([s for s, _ in lang["info"]["indx"]])
    early = plain.samples[plain.samples[:, 0] - starts[plain.samples[:, 2]] < 4]
    assert len(early) and len(weighted) == len(plain) + 2 * len(early)
    last = weighted[len(weighted) - 1]  # a repeat is the same sample as its original
    index = int(np.flatnonzero((plain.samples == weighted.samples[-1]).all(axis=1))[0])
    assert torch.equal(last["actions"], plain[index]["actions"])
    with pytest.raises(PackedDataError, match="start_repeat=2, pad_history=False, colour_negatives=False need language"):
        PackedWindowDataset(packed, "training", language=False, start_repeat=2, **WINDOW)


def test_padded_history_repeats_the_window_start_frame(packed: Path) -> None:
    plain = PackedWindowDataset(packed, "training", **WINDOW)
    padded = PackedWindowDataset(packed, "training", pad_history=True, **WINDOW)
    assert len(padded) > len(plain)
    lang = np.load(packed / "training" / LANG_FILE, allow_pickle=True).item()
    starts = np.asarray([s for s, _ in lang["info"]["indx"]])
    at_start = np.flatnonzero(padded.samples[:, 0] == starts[padded.samples[:, 2]])
    assert len(at_start)
    batch = padded.__getitems__(at_start[:3].tolist())
    for key in ("rgb_static", "robot_obs"):
        history = batch["history"][key]  # (B, H, ...): every frame the anchor's own
        assert all(torch.equal(history[:, k], history[:, -1]) for k in range(history.shape[1]))
    chunks = batch["actions_history"]  # a padded frame's chunk is its window start's, like its image
    assert all(torch.equal(chunks[:, k], batch["actions"]) for k in range(chunks.shape[1]))
    later = int(np.flatnonzero(padded.samples[:, 0] - starts[padded.samples[:, 2]] >= WINDOW["history"])[0])
    same = int(np.flatnonzero((plain.samples == padded.samples[later]).all(axis=1))[0])
    torch.testing.assert_close(padded[later]["history"]["robot_obs"], plain[same]["history"]["robot_obs"])
    with pytest.raises(PackedDataError, match="pad_history=True, colour_negatives=False need"):
        PackedWindowDataset(packed, "training", language=False, pad_history=True, **WINDOW)


def test_mismatches_and_damage_are_clear_errors(packed: Path, tmp_path: Path) -> None:
    with pytest.raises(PackedDataError, match="forecast_n=2, asked for forecast_n=3"):
        PackedWindowDataset(packed, "training", history=3, chunk=4, forecast_n=3)
    with pytest.raises(PackedDataError, match="image_size=32, but the model uses image_size=64"):
        PackedWindowDataset(packed, "training", **WINDOW, image_size=64)
    with pytest.raises(PackedDataError, match="not a packed split"):
        PackedWindowDataset(tmp_path, None, **WINDOW)
    broken = tmp_path / "broken"
    shutil.copytree(packed / "training", broken)
    array = np.load(broken / "rgb_static.npy")
    np.save(broken / "rgb_static.npy", array[:10])  # truncated
    with pytest.raises(PackedDataError, match=r"rgb_static.npy: uint8 \(10, 32, 32, 3\)"):
        PackedWindowDataset(broken, None, **WINDOW)[0]
    with pytest.raises(IndexError):
        PackedWindowDataset(packed, "training", **WINDOW).__getitems__([10_000])


def test_pack_refuses_to_overwrite_and_names_missing_splits(source: Path, packed: Path, tmp_path: Path) -> None:
    with pytest.raises(FileExistsError, match="overwrite=true"):
        pack_dataset(source, packed, IMAGE, TARGET, FORECAST)
    with pytest.raises(FileNotFoundError, match="none of the splits"):
        pack_dataset(tmp_path, tmp_path / "out", IMAGE, TARGET, FORECAST)


def test_train_command_trains_on_packed_data(packed: Path, tmp_path: Path) -> None:
    from dream_policy.cli import main

    out = tmp_path / "run"
    code = main(["train", f"data={packed}", f"trainer.out_dir={out}", "trainer.total_steps=3",
                 "trainer.batch_size=4", "trainer.warmup_steps=1", "trainer.log_every=1", "forecast_n=2",
                 f"model.vision.image_size={IMAGE}", f"model.world.target_size={TARGET}"])
    assert code == 0
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted({int(r["step"]) for r in rows if r["split"] == "train"}) == [1, 2, 3]
    assert any(r["split"] == "val" for r in rows)
    world = [float(r["value"]) for r in rows if r["split"] == "train" and r["metric"] == "world_terms"]
    assert world and all(w == 3 for w in world)  # dynamic, depth and semantic targets all reached the loss
    assert (out / "checkpoints" / "latest").exists() or any((out / "checkpoints").glob("step_*"))


def test_a_union_serves_each_part_in_turn(packed: Path) -> None:
    train = PackedWindowDataset(packed, "training", **WINDOW)
    val = PackedWindowDataset(packed, "validation", normalizer=train.normalizer, **WINDOW)
    union = PackedUnion([train, val])
    assert len(union) == len(train) + len(val) and union.normalizer is train.normalizer
    picks = [0, len(train) - 1, len(train), len(union) - 1, 3]
    batch = union.__getitems__(picks)
    assert batch["sample_id"].tolist() == sorted(picks, key=lambda i: i >= len(train))  # grouped by part
    for row, i in enumerate(batch["sample_id"].tolist()):
        one = train[i] if i < len(train) else val[i - len(train)]
        assert int(batch["frame_id"][row]) == one["frame_id"]
        assert torch.equal(batch["history"]["rgb_static"][row], one["history"]["rgb_static"])
        assert torch.equal(batch["actions"][row], one["actions"])
        assert torch.equal(batch["targets"]["seg_gripper"][row], one["targets"]["seg_gripper"])
        torch.testing.assert_close(batch["lang_emb"][row], one["lang_emb"])
    batches = list(DataLoader(union, batch_size=7, shuffle=True, collate_fn=union.collate,
                              generator=torch.Generator().manual_seed(0)))
    assert sorted(torch.cat([b["sample_id"] for b in batches]).tolist()) == list(range(len(union)))
    with pytest.raises(IndexError, match="out of range"):
        union.__getitems__([len(union)])


def test_a_union_refuses_parts_that_do_not_fit(packed: Path) -> None:
    train = PackedWindowDataset(packed, "training", **WINDOW)
    with pytest.raises(PackedDataError, match="pack both alike"):
        PackedUnion([train, PackedWindowDataset(packed, "validation", normalizer=train.normalizer,
                                                **{**WINDOW, "chunk": 2})])
    with pytest.raises(PackedDataError, match="one normaliser"):
        PackedUnion([train, PackedWindowDataset(packed, "validation", **WINDOW)])
    with pytest.raises(PackedDataError, match="at least one"):
        PackedUnion([])


def test_a_union_is_held_where_its_parts_are(packed: Path, tmp_path: Path) -> None:
    """The trainer reads ``device`` to decide whether batches need pinned copies and loader workers: a union
    of sets held on an accelerator must say so (pinning its batches failed on a GPU), and parts held on
    different devices are refused."""
    from dream_policy.trainer import Trainer, TrainerConfig

    train = PackedWindowDataset(packed, "training", **WINDOW)
    assert PackedUnion([train, train]).device == torch.device("cpu")
    held = PackedWindowDataset(packed, "training", normalizer=train.normalizer, device="meta", **WINDOW)
    union = PackedUnion([held, held])
    assert union.device == torch.device("meta")
    config = TrainerConfig(out_dir=str(tmp_path), batch_size=4, num_workers=2, eval_every=0, save_every=0)
    loader = Trainer(nn.Linear(1, 1), union, None, config)._loader(union, train=True, epoch=0)
    assert loader.num_workers == 0 and not loader.pin_memory
    with pytest.raises(PackedDataError, match="held on meta"):
        PackedUnion([train, held])


def test_train_command_pools_several_packed_sets(packed: Path, source: Path, tmp_path: Path, capsys) -> None:
    from dream_policy.cli import main

    out = tmp_path / "run"
    args = [f"trainer.out_dir={out}", "trainer.total_steps=2", "trainer.batch_size=4", "trainer.warmup_steps=1",
            "trainer.log_every=1", "forecast_n=2", f"model.vision.image_size={IMAGE}",
            f"model.world.target_size={TARGET}"]
    assert main(["train", f"data=[{packed},{packed}]", *args]) == 0
    pooled = PackedWindowDataset(packed, "training", **WINDOW)
    assert f"{packed} ({len(pooled)} samples), {packed} ({len(pooled)} samples)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="must all be packed"):
        main(["train", f"data=[{packed},{source}]", f"trainer.out_dir={tmp_path / 'b'}", "trainer.total_steps=1"])


def test_train_command_names_a_packed_size_mismatch(packed: Path, tmp_path: Path) -> None:
    from dream_policy.cli import main

    with pytest.raises(PackedDataError, match="re-pack with dream-policy pack image_size=64"):
        main(["train", f"data={packed}", f"trainer.out_dir={tmp_path}", "trainer.total_steps=1", "forecast_n=2"])


def test_an_empty_validation_split_is_skipped_by_pack_and_train(source: Path, tmp_path: Path) -> None:
    from dream_policy.cli import main

    src = tmp_path / "src"
    shutil.copytree(source / "training", src / "training")
    (src / "validation").mkdir()
    np.save(src / "validation" / "ep_start_end_ids.npy", np.zeros((0, 2), np.int64))  # a one-episode collect
    pack_dataset(src, tmp_path / "packed", IMAGE, TARGET, FORECAST)
    assert is_packed(tmp_path / "packed") and not (tmp_path / "packed" / "validation").exists()
    for data in (src, tmp_path / "packed"):
        out = tmp_path / f"run_{data.name}"
        assert main(["train", f"data={data}", f"trainer.out_dir={out}", "trainer.total_steps=1",
                     "trainer.warmup_steps=0", "trainer.batch_size=2", "forecast_n=2",
                     f"model.vision.image_size={IMAGE}", f"model.world.target_size={TARGET}"]) == 0
        assert (out / "checkpoints" / "latest").exists()


def test_start_repeat_reaches_the_packed_training_set_and_needs_packed_data(source: Path, packed: Path,
                                                                             tmp_path: Path) -> None:
    from dream_policy.cli import main

    out = tmp_path / "run"
    assert main(["train", f"data={packed}", f"trainer.out_dir={out}", "trainer.total_steps=1", "trainer.warmup_steps=0",
                 "trainer.batch_size=2", "forecast_n=2", "start_repeat=3", "start_frames=4", "pad_history=true",
                 f"model.vision.image_size={IMAGE}", f"model.world.target_size={TARGET}"]) == 0
    assert (out / "checkpoints" / "latest").exists()
    with pytest.raises(ValueError, match="start_repeat=3, pad_history=False, colour_weight=0.0 need packed data"):
        main(["train", f"data={source}", f"trainer.out_dir={tmp_path / 'plain'}", "trainer.total_steps=1",
              "start_repeat=3"])
