"""Colour-swapped instructions (dream_policy.data.colour_negatives), their embeddings in the packed data set,
and the model's colour-contrast loss on them."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_packed import WINDOW, packed, source  # noqa: F401  (module fixtures)
from test_model import random_batch

from dream_policy.data.colour_negatives import negative_table, swapped_colours
from dream_policy.data.packed import PackedDataError, PackedWindowDataset
from dream_policy.model import DreamVLA, load_model_config
from sim.calvin_dataset import LANG_FILE


def test_one_named_colour_is_swapped_for_each_other_one():
    assert swapped_colours("lift the red block") == ("lift the blue block", "lift the pink block")
    assert swapped_colours("push the pink block to the left") == ("push the red block to the left",
                                                                  "push the blue block to the left")
    assert swapped_colours("open the drawer") == ()
    assert swapped_colours("stack the red block on the blue block") == ()  # two colours: no single swap
    assert swapped_colours("the red block, yes the red one") == ()  # named twice: left alone
    assert swapped_colours("a reddish bluebell") == ()  # whole words only
    negatives, first = negative_table(["lift the blue block", "open the drawer", "rotate the pink block"])
    assert first == [0, -1, 2]
    assert negatives == ["lift the pink block", "lift the red block", "rotate the red block", "rotate the blue block"]


class TableEncoder:
    """A stand-in text encoder: a fixed random vector per distinct sentence, counting its calls."""

    dim = 384

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, sentences):
        self.calls += 1
        return torch.stack([torch.from_numpy(np.random.default_rng(abs(hash(s)) % 2**32)
                                             .standard_normal(384).astype(np.float32)) for s in sentences])


def test_the_packed_set_serves_a_swapped_sentence_where_one_colour_is_named(packed: Path, tmp_path: Path):  # noqa: F811
    split = tmp_path / "training"
    shutil.copytree(packed / "training", split)
    lang = np.load(split / LANG_FILE, allow_pickle=True).item()
    n = len(lang["language"]["ann"])
    lang["language"]["ann"] = ["lift the red block" if i % 2 == 0 else "open the drawer" for i in range(n)]
    np.save(split / LANG_FILE, lang, allow_pickle=True)
    encoder = TableEncoder()
    data = PackedWindowDataset(tmp_path, "training", colour_negatives=True, text_encoder=encoder, **WINDOW)
    assert encoder.calls == 1  # embedded once, at construction
    batch = data.__getitems__(list(range(len(data))))
    ann = batch["ann_index"]
    torch.testing.assert_close(batch["has_neg"], ann % 2 == 0)
    wanted = encoder.encode(["lift the blue block", "lift the pink block"])
    for i in np.flatnonzero(batch["has_neg"].numpy()):
        torch.testing.assert_close(batch["lang_neg"][i], wanted[i % 2])  # alternating with the sample index
    assert {i % 2 for i in np.flatnonzero(batch["has_neg"].numpy())} == {0, 1}
    plain = PackedWindowDataset(tmp_path, "training", **WINDOW)[0]
    assert "lang_neg" not in plain and "has_neg" not in plain
    with pytest.raises(PackedDataError, match="colour_negatives=True need language"):
        PackedWindowDataset(tmp_path, "training", language=False, colour_negatives=True, **WINDOW)


def colour_model(weight: float = 1.0, margin: float = 0.05) -> DreamVLA:
    config = dataclasses.replace(load_model_config("tiny"), colour_weight=weight, colour_margin=margin,
                                 cfg_dropout=0.0)
    torch.manual_seed(0)
    model = DreamVLA(config).train()
    with torch.no_grad():  # past the DiT's adaLN-Zero start, where every condition predicts the same noise
        for p in model.dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_colour_contrast_hinges_the_true_sentence_against_the_swapped_one():
    model = colour_model()
    batch = random_batch(model.config, b=3, targets=False)
    batch["has_neg"] = torch.tensor([True, False, True])
    batch["lang_neg"] = batch["lang_emb"].clone()  # the "swapped" sentence is the true one: err == err_neg
    torch.manual_seed(1)
    _, info = model(batch)
    assert math.isclose(info["colour"], 0.05, abs_tol=1e-5)  # the hinge is the margin exactly
    batch["lang_neg"] = torch.randn_like(batch["lang_emb"])
    torch.manual_seed(1)
    loss, info = model(batch)
    assert not math.isclose(info["colour"], 0.05, abs_tol=1e-4)
    assert math.isclose(info["loss"], info["action"] + info["colour"], rel_tol=1e-5)
    assert info["world_terms"] == 0  # the colour term is not a world term
    loss.backward()
    assert model.lang_proj.weight.grad.abs().sum() > 0
    model.zero_grad()
    batch["has_neg"] = torch.zeros(3, dtype=torch.bool)  # no row names a colour: no term
    torch.manual_seed(1)
    _, info = model(batch)
    assert info["colour"] == 0.0 and math.isclose(info["loss"], info["action"], rel_tol=1e-6)
    del batch["lang_neg"]
    with pytest.raises(KeyError, match="colour_negatives=True"):
        model(batch)


def test_the_contrast_lowers_the_true_sentence_error_against_the_swapped_one():
    """A few optimiser steps on one batch: the noise error from the swapped sentence rises above the true one's."""
    model = colour_model(weight=10.0, margin=0.05)
    batch = random_batch(model.config, b=4, targets=False)
    batch["has_neg"] = torch.ones(4, dtype=torch.bool)
    batch["lang_neg"] = torch.randn_like(batch["lang_emb"])
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    hinges = []
    for _ in range(15):
        torch.manual_seed(0)  # the same noise and steps each time
        loss, info = model(batch)
        hinges.append(info["colour"])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert hinges[-1] < hinges[0] * 0.5, hinges
