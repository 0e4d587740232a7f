"""bench/language_probe.py: colour swaps, task families, the other-task draw, and a probe run of a random
tiny model on a small packed data set (every variant scored, the sampler's spread nonzero)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_loader import make_split

from dream_policy.data.packed import PackedWindowDataset, pack_dataset
from dream_policy.model import DreamVLA, load_model_config
from sim.calvin_dataset import LANG_FILE, load_pickled

spec = importlib.util.spec_from_file_location("language_probe",
                                              Path(__file__).parents[1] / "bench" / "language_probe.py")
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)


def test_swap_colour_changes_the_one_named_block():
    assert probe.swap_colour("lift the red block") == "lift the blue block"
    assert probe.swap_colour("push the pink block to the left") == "push the red block to the left"
    assert probe.swap_colour("grasp the blue block, then lift it up") == "grasp the pink block, then lift it up"
    assert probe.swap_colour("open the drawer") is None
    assert probe.swap_colour("stack the red block on the blue block") is None  # two colours: ambiguous
    assert probe.swap_colour("the reddish block") is None  # whole words only


def test_families_and_phases():
    assert probe.family("lift_red_block_slider") == "lift"
    assert probe.family("rotate_pink_block_left") == "rotate"
    assert probe.family("unstack_block") == "unstack"
    assert probe.family("turn_on_lightbulb") == probe.family("open_drawer") == "articulated"
    assert probe.phase(3, 15) == "start" and probe.phase(15, 15) == "rest"


def test_other_task_rows_name_another_task():
    tasks = ["open_drawer", "lift_red_block_table", "open_drawer", "turn_on_led"]
    rows = probe.other_task_rows(tasks, np.random.default_rng(0))
    assert all(tasks[j] != tasks[i] for i, j in enumerate(rows))
    with pytest.raises(ValueError, match="one task only"):
        probe.other_task_rows(["open_drawer"] * 3, np.random.default_rng(0))


def test_probe_scores_every_variant_of_a_random_model(tmp_path: Path):
    src, out = tmp_path / "calvin", tmp_path / "packed"
    make_split(src / "training")
    make_split(src / "validation", seed=1)
    cfg = load_model_config("tiny")
    pack_dataset(src, out, cfg.vision.image_size, cfg.world.target_size, 0, workers=1)
    torch.manual_seed(0)
    model = DreamVLA(cfg).eval()
    data = PackedWindowDataset(out, "training", history=cfg.backbone.history, chunk=cfg.chunk,
                               image_size=cfg.vision.image_size)
    ann = load_pickled(data.root / LANG_FILE)
    named = [("lift the red block", "lift_red_block_table"), ("open the drawer", "open_drawer"),
             ("lift the pink block", "lift_pink_block_table")]  # sentences of the shipped embedding table
    sentences, tasks = zip(*(named[i % len(named)] for i in range(len(ann["language"]["ann"]))))
    starts = np.asarray([s for s, _ in ann["info"]["indx"]])
    scores = probe.probe(model, data, list(sentences), list(tasks), starts, windows=12, batch_size=5, seed=0, early=4)
    whole = scores["all/all"]
    assert len(whole["own"]) == min(12, len(data))
    for name in ("own", "resample", "other", "resample_shift", "other_shift"):
        assert len(whole[name]) == len(whole["own"]) and np.isfinite(whole[name]).all()
    assert np.mean(whole["resample_shift"]) > 0  # fresh noise gives another chunk
    lifts = scores["lift/all"]
    assert 0 < len(lifts["colour"]) == len(lifts["own"]) and "colour" not in scores["articulated/all"]
    assert len(scores["all/start"]["own"]) + len(scores["all/rest"]["own"]) == len(whole["own"])
    assert "all/all" in probe.format_table(scores).splitlines()[-3]
    first = probe.probe(model, data, list(sentences), list(tasks), starts, windows=6, batch_size=6, seed=0, early=4,
                        only_start=True)
    assert len(first["all/start"]["own"]) == len(first["all/all"]["own"]) > 0 and "all/rest" not in first
    probe.plot(scores, str(tmp_path / "shifts.png"), "random tiny")
    assert (tmp_path / "shifts.png").stat().st_size > 1000
