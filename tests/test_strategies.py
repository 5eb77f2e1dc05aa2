"""Hypothesis strategies: valid examples for every tokenizer, shrinking toward small prompts, readable failures."""

from __future__ import annotations

import functools

import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

import tokenizers_for_tests as T
from mechtest.errors import TaskError, TokenizerError
from mechtest.tasks.entity_tracking import usable_vocabulary
from mechtest.tasks.strategies import entity_tracking_examples, register_profiles
from tokenizers_for_tests import assert_layout, token_id

register_profiles()


@functools.lru_cache(maxsize=None)
def examples(name: str, n_boxes=None):
    return entity_tracking_examples(T.get(name), n_boxes)


@functools.lru_cache(maxsize=None)
def vocabulary(name: str):
    return usable_vocabulary(T.get(name))


@pytest.mark.parametrize("name", T.NAMES)
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_examples_are_valid_prompts(name, data):
    tok = T.get(name)
    ex = data.draw(examples(name))
    assert len(ex) == 1 and 2 <= ex.n_boxes <= 7
    assert_layout(ex, tok)
    q = int(ex.queried_index[0])
    assert ex.query_labels[0] == ex.labels[0][q]  # the answer is the object in the queried box
    assert int(ex.answer_ids[0]) == token_id(tok, ex.objects[0][q])
    vocab = vocabulary(name)
    assert set(ex.objects[0]) <= set(vocab.objects) and set(ex.labels[0]) <= set(vocab.labels)


@settings(deadline=None, max_examples=10)
@given(ex=examples("sentencepiece", 5))
def test_fixed_box_count(ex):
    assert ex.n_boxes == 5 and ex.label_pos.shape == (1, 5)


@settings(deadline=None, max_examples=10)
@given(ex=examples("byte_bpe", st.integers(3, 4)))
def test_box_count_strategy(ex):
    assert ex.n_boxes in (3, 4)


def test_shrinks_toward_few_boxes_and_first_words():
    tok = T.byte_bpe()
    vocab = usable_vocabulary(tok)
    smallest = find(entity_tracking_examples(tok), lambda ex: True, settings=settings(database=None))
    assert smallest.n_boxes == 2 and int(smallest.queried_index[0]) == 0
    assert smallest.objects[0] == vocab.objects[:2] and smallest.labels[0] == vocab.labels[:2]
    four = find(entity_tracking_examples(tok), lambda ex: ex.n_boxes >= 4, settings=settings(database=None))
    assert four.n_boxes == 4 and four.objects[0] == vocab.objects[:4]


def test_failure_report_shows_the_prompt():
    @settings(database=None, max_examples=5, deadline=None)
    @given(ex=examples("word_level"))
    def prop(ex):
        assert ex.n_boxes > 100

    with pytest.raises(AssertionError) as info:
        prop()
    report = "\n".join(getattr(info.value, "__notes__", []))
    assert "prompt: 'The " in report and "contains the'" in report
    assert "EntityTrackingDataset(n=1, n_boxes=2, seed=-1, prompts[0]='The " in report, report


def test_invalid_box_counts():
    tok = T.word_level()
    for bad in (1, 30, "3"):
        with pytest.raises(TaskError, match="n_boxes"):
            entity_tracking_examples(tok, bad)
    with pytest.raises(TaskError, match="n_boxes"):
        find(entity_tracking_examples(tok, st.just(1)), lambda ex: True)
    with pytest.raises(TokenizerError):
        entity_tracking_examples(T.sentencepiece_glued_punctuation())


def test_register_profiles_is_idempotent_and_leaves_hypothesis_default_alone():
    default = settings.get_profile("default")
    register_profiles()
    register_profiles()
    assert settings.get_profile("dev").max_examples == 25
    assert settings.get_profile("ci").max_examples == 200
    assert settings.get_profile("ci").deadline is None and settings.get_profile("dev").deadline is None
    assert settings.get_profile("default") is default
