"""CALVIN's instruction sentences: training and validation sentences per task."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

DATA_DIR = Path(__file__).parent / "data"
TRAINING_FILE = DATA_DIR / "new_playtable.yaml"
VALIDATION_FILE = DATA_DIR / "new_playtable_validation.yaml"


@lru_cache
def _load(path: Path) -> dict[str, tuple[str, ...]]:
    """Read a ``task: [sentence, ...]`` YAML file (immutable values, safe to cache)."""
    with path.open(encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    if not isinstance(raw, dict) or not all(isinstance(v, list) and v for v in raw.values()):
        raise ValueError(f"{path}: expected a mapping of task name to a non-empty sentence list")
    return {task: tuple(sentences) for task, sentences in raw.items()}


def training_sentences() -> dict[str, list[str]]:
    """Task name -> its training instruction sentences."""
    return {task: list(s) for task, s in _load(TRAINING_FILE).items()}


def validation_sentences() -> dict[str, list[str]]:
    """Task name -> its validation instruction sentences (never seen in training)."""
    return {task: list(s) for task, s in _load(VALIDATION_FILE).items()}


def eval_instruction(task: str) -> str:
    """The sentence CALVIN's evaluation instructs ``task`` with: its first validation sentence."""
    sentences = _load(VALIDATION_FILE)
    if task not in sentences:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(sentences)}")
    return sentences[task][0]


@lru_cache
def _task_by_sentence() -> dict[str, str]:
    return {
        sentence: task
        for path in (TRAINING_FILE, VALIDATION_FILE)
        for task, sentences in _load(path).items()
        for sentence in sentences
    }


def task_for_sentence(sentence: str) -> str:
    """The task a training or validation sentence belongs to."""
    try:
        return _task_by_sentence()[sentence]
    except KeyError:
        raise ValueError(f"sentence {sentence!r} is not a CALVIN instruction") from None
