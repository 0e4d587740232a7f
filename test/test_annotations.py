"""CALVIN's instruction sentences."""

import pytest

from sim.annotations import eval_instruction, task_for_sentence, training_sentences, validation_sentences
from sim.chains import task_names


def test_every_task_has_training_and_validation_sentences():
    training, validation = training_sentences(), validation_sentences()
    assert set(training) == set(validation) == set(task_names())
    for task in task_names():
        assert training[task] and all(isinstance(s, str) and s for s in training[task])
        assert validation[task] and all(isinstance(s, str) and s for s in validation[task])
        assert not set(training[task]) & set(validation[task])


def test_eval_instruction_is_first_validation_sentence():
    assert eval_instruction("open_drawer") == "pull the handle to open the drawer"
    assert eval_instruction("move_slider_left") == "push the sliding door to the left side"
    for task in task_names():
        assert eval_instruction(task) == validation_sentences()[task][0]
    with pytest.raises(ValueError, match="fly_away"):
        eval_instruction("fly_away")


def test_task_for_sentence_round_trips():
    for sentences in (training_sentences(), validation_sentences()):
        for task, task_sentences in sentences.items():
            for sentence in task_sentences:
                assert task_for_sentence(sentence) == task


def test_unknown_sentence_is_named():
    with pytest.raises(ValueError, match="dance a jig"):
        task_for_sentence("dance a jig")


def test_returned_dicts_are_copies():
    training_sentences()["open_drawer"].append("x")
    training_sentences().pop("close_drawer")
    assert "x" not in training_sentences()["open_drawer"]
    assert "close_drawer" in training_sentences()
