"""The named-block target (dream_policy.data.named_block): which block a task names, where it is relative to the
gripper, how the packed data set serves it, and the model's training-only head on it."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_packed import IMAGE, TARGET, WINDOW, packed, source  # noqa: F401  (module fixtures)
from test_model import random_batch

from dream_policy.data.named_block import (
    NO_BLOCK,
    SCALE,
    block_offsets,
    named_block,
    named_block_mask,
    named_blocks,
)
from dream_policy.data.packed import PackedDataError, PackedUnion, PackedWindowDataset
from dream_policy.model import DreamVLA, load_model_config
from sim.calvin_dataset import LANG_FILE
from sim.snapshot import BLOCKS
from sim.task_oracle import TASK_NAMES as TASKS


def test_every_calvin_task_names_the_block_of_its_colour_or_none():
    assert len(TASKS) == 34
    for task in TASKS:
        colours = [i for i, b in enumerate(BLOCKS) if f"{b.removeprefix('block_')}_block" in task]
        assert named_block(task) == (colours[0] if colours else NO_BLOCK), task
    assert named_block("lift_red_block_slider") == 0 and named_block("rotate_pink_block_right") == 2
    assert named_block("push_blue_block_left") == 1
    for task in ("stack_block", "unstack_block", "push_into_drawer", "open_drawer", "place_in_slider"):
        assert named_block(task) == NO_BLOCK
    assert named_block("put_red_block_on_blue_block") == NO_BLOCK  # two blocks: no single target
    assert named_block("reddish_block") == NO_BLOCK
    assert named_blocks(["lift_blue_block_table", "turn_on_led"]).tolist() == [1, NO_BLOCK]


def test_offsets_are_the_named_blocks_position_minus_the_gripper_in_scale_units():
    scene = torch.zeros(3, 24)
    for i in range(3):  # block i at (i, 2i, 3i) / 10, every block's position distinct
        scene[:, 6 + 6 * i:9 + 6 * i] = torch.tensor([i, 2 * i, 3 * i]) / 10 + torch.arange(3)[:, None] / 100
    robot = torch.zeros(3, 15)
    robot[:, :3] = torch.tensor([0.05, -0.1, 0.2])
    got = block_offsets(scene, robot, torch.tensor([2, NO_BLOCK, 1]))
    torch.testing.assert_close(got[0], (scene[0, 18:21] - robot[0, :3]) / SCALE)
    torch.testing.assert_close(got[1], torch.zeros(3))
    torch.testing.assert_close(got[2], (scene[2, 12:15] - robot[2, :3]) / SCALE)
    with pytest.raises(ValueError, match="scene_obs must be"):
        block_offsets(torch.zeros(3, 20), robot, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="robot_obs"):
        block_offsets(scene, torch.zeros(2, 15), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="block indices"):
        block_offsets(scene, robot, torch.tensor([0, 3, 1]))


def named_copy(packed: Path, dst: Path, tasks: list[str]) -> Path:  # noqa: F811
    """A copy of the packed fixture whose annotations cycle through ``tasks``."""
    for split in ("training", "validation"):
        shutil.copytree(packed / split, dst / split)
        lang = np.load(dst / split / LANG_FILE, allow_pickle=True).item()
        n = len(lang["language"]["task"])
        lang["language"]["task"] = [tasks[i % len(tasks)] for i in range(n)]
        np.save(dst / split / LANG_FILE, lang, allow_pickle=True)
    return dst


def test_the_packed_set_serves_the_named_blocks_offset(packed: Path, tmp_path: Path):  # noqa: F811
    assert (packed / "training" / "scene_obs.npy").is_file()  # packing keeps scene_obs where the source has it
    tasks = ["lift_red_block_table", "open_drawer", "push_pink_block_left"]
    root = named_copy(packed, tmp_path, tasks)
    data = PackedWindowDataset(root, "training", **WINDOW)
    batch = data.__getitems__(list(range(len(data))))
    scene = np.load(root / "training" / "scene_obs.npy")
    robot = np.load(root / "training" / "robot_obs.npy")
    frame_ids = np.load(root / "training" / "frame_ids.npy").tolist()
    seen = set()
    for i in range(len(data)):
        ann, frame = int(batch["ann_index"][i]), int(batch["frame_id"][i])
        block = [0, NO_BLOCK, 2][ann % 3]
        seen.add(block)
        assert bool(batch["has_block"][i]) == (block != NO_BLOCK)
        row = frame_ids.index(frame)  # the anchor frame: where the block is now, not in the history
        want = np.zeros(3) if block == NO_BLOCK else (scene[row, 6 + 6 * block:9 + 6 * block] - robot[row, :3]) / SCALE
        np.testing.assert_allclose(batch["block_offset"][i].numpy(), want, rtol=1e-5, atol=1e-6)
    assert seen == {0, NO_BLOCK, 2}
    assert PackedWindowDataset(root, "training", language=False, **WINDOW)[0].get("block_offset") is None


def without_scene_obs(packed: Path, dst: Path) -> Path:  # noqa: F811
    """A copy of a packed set as packed before scene_obs was kept (its packed.json lists no scene_obs)."""
    shutil.copytree(packed, dst)
    for split in ("training", "validation"):
        meta_file = dst / split / "packed.json"
        meta = json.loads(meta_file.read_text())
        del meta["arrays"]["scene_obs"]
        meta_file.write_text(json.dumps(meta))
    return dst


def test_a_union_needs_scene_obs_in_every_part_or_none(packed: Path, tmp_path: Path):  # noqa: F811
    older = without_scene_obs(packed, tmp_path / "older")
    new = PackedWindowDataset(packed, "training", **WINDOW)
    old = PackedWindowDataset(older, "training", normalizer=new.normalizer, **WINDOW)
    assert "block_offset" not in old[0]
    with pytest.raises(PackedDataError, match="scene_obs packed in some parts only"):
        PackedUnion([new, old])


def block_model(weight: float = 1.0) -> DreamVLA:
    config = dataclasses.replace(load_model_config("tiny"), block_weight=weight, cfg_dropout=0.0)
    torch.manual_seed(0)
    return DreamVLA(config).train()


def test_the_block_term_counts_only_rows_that_name_a_block_and_trains_the_features():
    model = block_model().eval()  # no image augmentation: the same features in every call
    batch = random_batch(model.config, b=3, targets=False)
    batch["block_offset"] = torch.randn(3, 3)
    batch["has_block"] = torch.tensor([True, False, True])
    torch.manual_seed(1)
    loss, info = model(batch)
    with torch.no_grad():
        pred = model.block_head(model.features(batch)["action"].mean(dim=1))
    want = (pred - batch["block_offset"]).pow(2).mean(dim=1)[[0, 2]].mean()
    assert math.isclose(info["block"], float(want), rel_tol=1e-4)
    assert math.isclose(info["loss"], info["action"] + info["block"], rel_tol=1e-5)
    assert info["world_terms"] == 0
    loss.backward()
    assert model.block_head[-1].weight.grad.abs().sum() > 0
    assert model.lang_proj.weight.grad.abs().sum() > 0  # the instruction's path to the features learns from it
    model.zero_grad()
    batch["block_offset"][1] = 1e3  # a row that names no block does not count, whatever its offset
    torch.manual_seed(1)
    _, again = model(batch)
    assert math.isclose(again["block"], info["block"], rel_tol=1e-5)
    batch["has_block"][:] = False
    torch.manual_seed(1)
    loss, none = model(batch)
    assert none["block"] == 0.0
    loss.backward()  # still in the graph: DDP sees a gradient for every parameter
    assert model.block_head[-1].weight.grad is not None
    with pytest.raises(ValueError, match="block_offset must be"):
        model({**batch, "block_offset": torch.zeros(3, 2)})
    plain = {k: v for k, v in batch.items() if k not in ("block_offset", "has_block")}
    assert model(plain)[1]["block"] == 0.0


def test_a_few_steps_fit_the_block_offset():
    model = block_model()
    batch = random_batch(model.config, b=4, targets=False)
    batch["block_offset"] = torch.randn(4, 3)
    batch["has_block"] = torch.ones(4, dtype=torch.bool)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    errors = []
    for _ in range(20):
        torch.manual_seed(0)
        loss, info = model(batch)
        errors.append(info["block"])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert errors[-1] < errors[0] * 0.3, errors


def test_the_head_is_training_only_and_absent_by_default():
    assert DreamVLA(load_model_config("tiny")).block_head is None
    model = block_model().eval()
    batch = random_batch(model.config, b=2, targets=False)
    chunk = model.predict_chunk(batch, generator=torch.Generator().manual_seed(0))
    model.block_head = None  # acting never uses it
    assert torch.equal(chunk, model.predict_chunk(batch, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="block_weight"):
        dataclasses.replace(load_model_config("tiny"), block_weight=-1.0)


def test_train_command_fits_the_block_term_and_refuses_data_without_scene_obs(packed: Path, tmp_path: Path):  # noqa: F811
    import csv

    from dream_policy.cli import main

    root = named_copy(packed, tmp_path / "named", ["lift_red_block_table", "open_drawer"])
    out = tmp_path / "run"
    args = [f"trainer.out_dir={out}", "trainer.total_steps=2", "trainer.batch_size=4", "trainer.warmup_steps=1",
            "trainer.log_every=1", "forecast_n=2", f"model.vision.image_size={IMAGE}",
            f"model.world.target_size={TARGET}", "model.block_weight=0.5"]
    assert main(["train", f"data={root}", *args]) == 0
    with open(out / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == "block"]
    assert {r["split"] for r in rows} == {"train", "val"} and all(float(r["value"]) > 0 for r in rows)
    old = without_scene_obs(root, tmp_path / "old")
    with pytest.raises(ValueError, match="block_weight=0.5 needs"):
        main(["train", f"data={old}", *[a.replace(str(out), str(tmp_path / "run2")) for a in args]])


def test_the_named_block_mask_is_its_segment_or_nothing():
    seg = torch.tensor([[[0, 3], [4, 5]], [[3, 3], [5, 1]], [[5, 4], [3, 5]]], dtype=torch.uint8)  # (3, 2, 2)
    mask = named_block_mask(seg, torch.tensor([BLOCKS.index("block_red"), NO_BLOCK, BLOCKS.index("block_pink")]))
    assert mask.dtype == torch.bool
    assert mask[0].tolist() == [[False, True], [False, False]]  # red is segment 3
    assert not mask[1].any()  # names no block: nothing, although red and pink are in view
    assert mask[2].tolist() == [[True, False], [False, True]]  # pink is segment 5
    with pytest.raises(ValueError, match=r"\(N, s, s\)"):
        named_block_mask(seg[0], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="block indices"):
        named_block_mask(seg, torch.tensor([0, 3, 1]))


def test_the_packed_set_serves_where_the_named_block_is_in_the_static_image(packed: Path, tmp_path: Path):  # noqa: F811
    tasks = ["lift_red_block_table", "open_drawer", "push_pink_block_left"]
    root = named_copy(packed, tmp_path, tasks)
    data = PackedWindowDataset(root, "training", **WINDOW)
    assert "seg_static" in data.target_names
    batch = data.__getitems__(list(range(len(data))))
    seg = np.load(root / "training" / "seg_static.npy")
    frame_ids = np.load(root / "training" / "frame_ids.npy").tolist()
    assert batch["named_mask_static"].shape == (len(data), TARGET, TARGET)
    for i in range(len(data)):
        block = [0, NO_BLOCK, 2][int(batch["ann_index"][i]) % 3]
        row = frame_ids.index(int(batch["frame_id"][i]))  # the anchor frame's segmentation, not the forecast's
        want = np.zeros_like(seg[row], dtype=bool) if block == NO_BLOCK else seg[row] == 3 + block
        assert np.array_equal(batch["named_mask_static"][i].numpy(), want)
    assert "named_mask_static" not in PackedWindowDataset(root, "training", history=3, chunk=4)[0]


def ground_model() -> DreamVLA:
    config = dataclasses.replace(load_model_config("tiny"), lang_query=4, ground_weight=1.0, cfg_dropout=0.0)
    torch.manual_seed(0)
    return DreamVLA(config)


def test_the_grounding_term_pulls_the_first_static_head_onto_the_named_block():
    model = ground_model().eval()  # no augmentation: the same patches in every call
    batch = random_batch(model.config, b=3, targets=False)
    mask = torch.zeros(3, 32, 32, dtype=torch.bool)
    mask[0, 8:12, 20:24] = True  # inside patch (row 2, column 5) of the 8 x 8 grid
    mask[2, 0:4, 0:8] = True  # patches (0, 0) and (0, 1), half each
    batch["named_mask_static"] = mask
    torch.manual_seed(1)
    _, info = model(batch)
    with torch.no_grad():
        patches = model.encode_frames(batch)["patches_static"][:, -1:]
        weights = model.lang_query["static"].attention(batch["lang_emb"], patches)[0][:, 0, 0]  # (B, 64)
    want = (-weights[0, 2 * 8 + 5].log() - 0.5 * (weights[2, 0].log() + weights[2, 1].log())) / 2  # row 1 sees none
    assert math.isclose(info["ground"], float(want), rel_tol=1e-4)
    assert math.isclose(info["loss"], info["action"] + info["ground"], rel_tol=1e-5)
    optimiser = torch.optim.Adam(model.lang_query.parameters(), lr=1e-2)
    for _ in range(60):  # the instruction query alone learns to look there
        optimiser.zero_grad()
        model._grounding(batch, model.encode_frames(batch))["ground"].backward()
        optimiser.step()
    with torch.no_grad():
        after = model.lang_query["static"].attention(batch["lang_emb"], model.encode_frames(batch)["patches_static"][:, -1:])[0]
    assert after[0, 0, 0, 2 * 8 + 5] > 0.5 > weights[0, 2 * 8 + 5]
    assert model._grounding({k: v for k, v in batch.items() if k != "named_mask_static"}, {}) == {}
    with pytest.raises(ValueError, match="ground_weight=0.5.*lang_query"):
        dataclasses.replace(load_model_config("tiny"), lang_query=0, ground_weight=0.5)


def test_train_command_fits_the_grounding_term_and_refuses_data_without_world_targets(packed: Path,  # noqa: F811
                                                                                       tmp_path: Path):
    import csv

    from dream_policy.cli import main

    root = named_copy(packed, tmp_path / "named", ["lift_red_block_table", "open_drawer"])
    out = tmp_path / "run"
    args = [f"trainer.out_dir={out}", "trainer.total_steps=2", "trainer.batch_size=4", "trainer.warmup_steps=1",
            "trainer.log_every=1", f"model.vision.image_size={IMAGE}", f"model.world.target_size={TARGET}",
            "model.lang_query=4", "model.ground_weight=0.5"]
    assert main(["train", f"data={root}", "forecast_n=2", *args]) == 0
    with open(out / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == "ground"]
    assert {r["split"] for r in rows} == {"train", "val"} and all(float(r["value"]) > 0 for r in rows)
    with pytest.raises(ValueError, match="ground_weight=0.5 needs"):  # no world targets: no segmentation
        main(["train", f"data={root}", "forecast_n=0", *[a.replace(str(out), str(tmp_path / "run2")) for a in args]])
