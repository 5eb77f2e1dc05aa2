"""The entity-tracking task on three kinds of tokenizer: layout, vocabulary filtering, corruptions, desiderata."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch

import tokenizers_for_tests as T
from mechtest.errors import MechtestError, TaskError, TokenizerError
from mechtest.tasks.layout import build_dataset, prompt_row
from mechtest.tasks.vocabulary import RANDOM_TEXT
from mechtest.tasks.entity_tracking import (
    ADDITIONAL_DESIDERATA,
    DESIDERATA,
    desiderata,
    make_dataset,
    make_example,
    mean_ablation_set,
    path_patching_corruption,
    usable_vocabulary,
)
from tools.zoo.vocab import build_tokenizer
from tokenizers_for_tests import assert_layout, paper_prompt, token_id


@pytest.fixture(params=T.NAMES)
def tok(request):
    return T.get(request.param)


# --- vocabulary --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, objects, labels",
    [
        ("word_level", (), ()),
        ("byte_bpe", T.BPE_HELD_OUT_OBJECTS, T.BPE_HELD_OUT_LABELS),
        ("sentencepiece", T.SP_HELD_OUT_OBJECTS, ()),
    ],
)
def test_vocabulary_drops_exactly_the_multi_token_words(name, objects, labels, caplog):
    tok = T.get(name)
    with caplog.at_level(logging.WARNING, logger="mechtest.tasks.vocabulary"):
        vocab = usable_vocabulary(tok)
    assert set(vocab.dropped_objects) == set(objects)
    assert set(vocab.dropped_labels) == set(labels)
    assert not set(vocab.objects) & set(objects) and not set(vocab.labels) & set(labels)
    assert len(vocab.objects) + len(objects) == 85 and len(vocab.labels) + len(labels) == 26
    assert vocab.object_ids == tuple(token_id(tok, o) for o in vocab.objects)
    assert vocab.label_ids == tuple(token_id(tok, lab) for lab in vocab.labels)
    if objects:
        assert objects[0] in caplog.text
    else:
        assert not caplog.records


def test_label_glued_to_punctuation_is_not_single_token_in_context():
    tok = T.sentencepiece_glued_punctuation()
    assert len(tok.encode(" F", add_special_tokens=False)) == 1  # alone it is one token ...
    vocab = usable_vocabulary(tok)
    assert "F" in vocab.dropped_labels  # ... but "Box F," becomes "▁F,"
    with pytest.raises(TokenizerError, match="labels are single tokens"):
        make_dataset(tok, 10, n_boxes=3)


# --- layout ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_boxes", [2, 3, 7])
def test_make_dataset_layout(tok, n_boxes):
    ds = make_dataset(tok, 30, n_boxes=n_boxes, seed=1)
    assert len(ds) == 30 and ds.n_boxes == n_boxes
    assert ds.attention_mask.all()  # one shared length, no padding
    assert_layout(ds, tok)
    for i in range(30):
        assert ds.query_labels[i] == ds.labels[i][i % n_boxes]
    # one layout for all rows
    for field in (ds.label_pos, ds.object_pos, ds.query_label_pos, ds.last_pos):
        assert (field == field[0]).all()


def test_paper_token_layout():
    """Spec 2.4: 54 tokens with BOS, objects at 2+7s, labels at 6+7s, query label 51, last 53; the GPT-2
    style tokenizer has no BOS and splits " contains" in three, so its positions are found, not assumed."""
    for name, shift, contains in (("word_level", 0, 1), ("sentencepiece", 0, 1), ("byte_bpe", -1, 3)):
        tok = T.get(name)
        assert len(tok.encode(" contains", add_special_tokens=False)) == contains
        ds = make_dataset(tok, 14, n_boxes=7)
        assert ds.input_ids.shape == (14, 54 + shift + contains - 1)
        assert ds.object_pos[0].tolist() == [2 + 7 * s + shift for s in range(7)]
        assert ds.label_pos[0].tolist() == [6 + 7 * s + shift for s in range(7)]
        assert (ds.query_label_pos == 51 + shift).all() and (ds.last_pos == 53 + shift + contains - 1).all()
        assert (ds.query_context_pos == ds.label_pos[0][ds.queried_index]).all()
        if tok.bos_token_id is not None and shift == 0:
            assert (ds.input_ids[:, 0] == tok.bos_token_id).all()
        else:
            assert T.token_text(tok, int(ds.input_ids[0, 0])) == "The"


def test_trailing_special_tokens_are_not_part_of_the_prompt():
    """A tokenizer that appends EOS: the prediction is still read at "the", the last real token."""
    from tokenizers import processors

    tok = build_tokenizer()
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.bos_token_id), ("</s>", tok.eos_token_id)]
    )
    assert tok("The")["input_ids"][-1] == tok.eos_token_id
    ds = make_dataset(tok, 7)
    assert ds.input_ids.shape == (7, 54) and (ds.last_pos == 53).all()
    assert T.token_text(tok, int(ds.input_ids[0, 53])) == "the" and (ds.input_ids[:, 0] == tok.bos_token_id).all()


def test_paper_example_prompt():
    tok = T.word_level()
    objects = ("apple", "computer", "document", "plant", "ring", "bell", "fish")
    ex = make_example(tok, objects, ("F", "Q", "X", "A", "M", "K", "W"), 2)
    assert ex.prompts[0] == (
        "The apple is in Box F, the computer is in Box Q, the document is in Box X, the plant is in Box A, "
        "the ring is in Box M, the bell is in Box K, the fish is in Box W. Box X contains the"
    )
    assert int(ex.answer_ids[0]) == token_id(tok, "document")
    assert ex.seed == -1


def test_rows_come_in_blocks_sharing_a_context(tok):
    ds = make_dataset(tok, 17, n_boxes=5, seed=3)
    assert ds.queried_index.tolist() == [i % 5 for i in range(17)]
    for i in range(17):
        k = i - i % 5
        assert (ds.objects[i], ds.labels[i]) == (ds.objects[k], ds.labels[k])
        assert len(set(ds.objects[i])) == 5 and len(set(ds.labels[i])) == 5
    assert ds.objects[0] != ds.objects[5] != ds.objects[10]


def test_custom_objects_and_labels(tok):
    objects, labels = ["cup", "key", "map", "egg"], ["B", "C", "D"]
    ds = make_dataset(tok, 12, n_boxes=3, objects=objects, labels=labels)
    assert all(set(o) <= set(objects) for o in ds.objects) and all(set(lab) == set(labels) for lab in ds.labels)
    assert_layout(ds, tok)


def test_seeded_and_independent_of_global_random(tok):
    random.seed(1)
    a = make_dataset(tok, 20, n_boxes=4, seed=5)
    state = random.getstate()
    random.seed(2)
    b = make_dataset(tok, 20, n_boxes=4, seed=5)
    c = make_dataset(tok, 20, n_boxes=4, seed=6)
    assert a.prompts == b.prompts and torch.equal(a.input_ids, b.input_ids)
    assert a.prompts != c.prompts
    assert random.getstate() != state
    before = random.getstate()  # generating consumes no global randomness
    make_dataset(tok, 5, n_boxes=4, seed=5)
    assert random.getstate() == before


def test_indexing_and_repr():
    tok = T.word_level()
    ds = make_dataset(tok, 10, n_boxes=3, seed=0)
    one = ds[4]
    assert len(one) == 1 and one.prompts == (ds.prompts[4],) and torch.equal(one.input_ids[0], ds.input_ids[4])
    assert ds[-1].prompts == (ds.prompts[9],)
    assert ds[2:5].prompts == ds.prompts[2:5] and torch.equal(ds[2:5].label_pos, ds.label_pos[2:5])
    picked = ds[[7, 1]]
    assert picked.query_labels == (ds.query_labels[7], ds.query_labels[1])
    assert torch.equal(picked.answer_ids, ds.answer_ids[[7, 1]])
    assert ds[torch.tensor([0, 3])].objects == (ds.objects[0], ds.objects[3])
    assert ds[np.int64(2)].prompts == (ds.prompts[2],)
    assert len(ds[ds.queried_index == 0]) == 4
    with pytest.raises(IndexError):
        ds[10]
    text = repr(ds)
    assert "n=10" in text and "n_boxes=3" in text and "seed=0" in text and ds.prompts[0] in text


# --- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_boxes", [0, 1, -3, 27, 2.0, True])
def test_impossible_box_counts(n_boxes):
    with pytest.raises(TaskError, match="n_boxes|boxes need"):
        make_dataset(T.word_level(), 10, n_boxes=n_boxes)


def test_other_invalid_requests():
    tok = T.word_level()
    with pytest.raises(TaskError, match="duplicate object"):
        make_dataset(tok, 10, n_boxes=2, objects=["cup", "key", "cup"])
    with pytest.raises(TaskError, match="duplicate label"):
        make_dataset(tok, 10, n_boxes=2, labels=["A", "B", "A"])
    with pytest.raises(TaskError, match="3 boxes need 3 distinct objects"):
        make_dataset(tok, 10, n_boxes=3, objects=["cup", "key"])
    with pytest.raises(TaskError, match="n must be"):
        make_dataset(tok, 0)
    with pytest.raises(TaskError, match="unknown desideratum 'position'"):
        desiderata(tok, "position", 10)
    with pytest.raises(TaskError, match="not a single word"):
        make_dataset(tok, 10, objects=["cup", "coffee cup", "key"], n_boxes=2)


def test_bad_words_name_the_word_and_the_tokenizer():
    with pytest.raises(TokenizerError, match="object 'television'.*test-byte-bpe"):
        make_dataset(T.byte_bpe(), 10, n_boxes=2, objects=["cup", "television", "key"])
    with pytest.raises(TokenizerError, match="label 'Z'.*test-byte-bpe"):
        make_dataset(T.byte_bpe(), 10, n_boxes=2, labels=["A", "Z"])
    with pytest.raises(TokenizerError, match="object 'xylophone'"):
        make_dataset(T.word_level(), 10, n_boxes=2, objects=["cup", "xylophone", "key"])
    with pytest.raises(TokenizerError, match="label 'AB'"):
        make_dataset(T.word_level(), 10, n_boxes=2, labels=["A", "AB", "C"])


def test_too_few_usable_labels_is_a_tokenizer_error():
    make_dataset(T.word_level(), 26, n_boxes=26)
    with pytest.raises(TokenizerError, match="only 25 labels"):
        make_dataset(T.byte_bpe(), 26, n_boxes=26)
    assert issubclass(TokenizerError, MechtestError) and issubclass(TaskError, MechtestError)


# --- path-patching corruption and mean-ablation set -------------------------------------------------


def test_path_patching_corruption(tok):
    base = make_dataset(tok, 60, n_boxes=5, seed=2)
    corrupt = path_patching_corruption(base, tok, seed=1)
    assert corrupt.input_ids.shape == base.input_ids.shape
    assert (corrupt.queried_index == (base.queried_index + 1) % 5).all()
    assert torch.equal(corrupt.answer_ids, base.answer_ids)
    assert_layout(corrupt, tok, answers=False)
    assert all(c != b for c, b in zip(corrupt.objects, base.objects))
    absent = [q not in labels for q, labels in zip(corrupt.query_labels, corrupt.labels)]
    assert any(absent) and not all(absent)  # a uniformly random label, in the context or not
    again = path_patching_corruption(base, tok, seed=1)
    assert again.prompts == corrupt.prompts
    assert path_patching_corruption(base, tok, seed=2).prompts != corrupt.prompts


def test_mean_ablation_set(tok):
    ds = make_dataset(tok, 80, n_boxes=4, seed=3)
    ref = mean_ablation_set(tok, 20, n_boxes=4, seed=3)
    assert len(ref) == 20 and ref.input_ids.shape[1] == ds.input_ids.shape[1] and ref.attention_mask.all()
    assert ref.objects == ds.objects[::4] and ref.labels == ds.labels[::4]  # one per context, as rows 0, 7, ...
    assert_layout(ref, tok)
    absent = [q not in labels for q, labels in zip(ref.query_labels, ref.labels)]
    assert any(absent)
    assert mean_ablation_set(tok, 20, n_boxes=4, seed=3).prompts == ref.prompts


# --- desiderata --------------------------------------------------------------------------------------


def test_positional_and_object_value(tok):
    for name in ("positional", "object_value"):
        pairs = desiderata(tok, name, 40, n_boxes=5, seed=2)
        base, source = pairs.base, pairs.source
        assert base.prompts == make_dataset(tok, 40, n_boxes=5, seed=2).prompts
        assert len(source) == 40 and source.input_ids.shape == base.input_ids.shape
        assert_layout(source, tok)
        assert (source.queried_index != base.queried_index).all()  # intent, not quirk Q2
        for i in range(40):
            sq = int(source.queried_index[i])
            expected = base.objects[i][sq] if name == "positional" else source.objects[i][sq]
            assert int(pairs.target_ids[i]) == token_id(tok, expected)
        if name == "object_value":
            assert torch.equal(pairs.target_ids, source.answer_ids)
        else:
            assert (pairs.target_ids != base.answer_ids).all()


def test_box_label_value(tok):
    pairs = desiderata(tok, "box_label_value", 40, n_boxes=4, seed=7)
    base, source = pairs.base, pairs.source
    assert_layout(source, tok)
    for i in range(40):
        label = source.query_labels[i]
        assert label in base.labels[i] and label != base.query_labels[i]
        assert int(pairs.target_ids[i]) == token_id(tok, base.objects[i][base.labels[i].index(label)])
    assert {q for q in source.query_labels} & {"B", "T"}  # exact token match: quirk Q3 excluded these


def test_desiderata_are_seeded(tok):
    for name in DESIDERATA + ("add_seg_start",):
        a, b = desiderata(tok, name, 15, n_boxes=3, seed=4), desiderata(tok, name, 15, n_boxes=3, seed=4)
        assert a.source.prompts == b.source.prompts and torch.equal(a.target_ids, b.target_ids)
        assert desiderata(tok, name, 15, n_boxes=3, seed=5).source.prompts != a.source.prompts


def _modified(name, prompt, objects, labels, q) -> bool:
    """Whether a source prompt shows its desideratum's modification around queried segment q."""
    o, lab = objects[q], labels[q]
    context = prompt.rsplit(". Box ", 1)[0]
    return {
        "random_text_start": prompt.startswith("There are a bunch of boxes containing objects, the "),
        "random_text_end": context.endswith(", these are a bunch of boxes containing objects"),
        "add_tokens_btw_box_and_obj": f"he {o} is contained in the Box {lab}" in prompt
        and prompt.count("contained") == 1,
        "add_seg_start": q >= 1 and prompt == paper_prompt(objects, labels, lab),
        "add_seg_end": q < len(objects) - 1 and prompt == paper_prompt(objects, labels, lab),
        "add_box_before_correct_segment": f"here are three additional boxes, Box PP, Box BB and Box AA, the {o} is in"
        in prompt,
        "incorrect_segment": prompt == paper_prompt(objects, labels, lab),
        "altered_box_obj_order": f"Box {lab} contains the {o}" in context and f"is in Box {lab}" not in context
        and ", ." not in prompt,
        "altered_box_obj_association": prompt.count(" not ") == 1 and f"he {o} is not in Box {lab}" in prompt,
        "no_comma": ", " not in prompt and prompt.count(" is in Box ") == len(objects),
        "add_comma": prompt.count(", is in Box ") == len(objects),
    }[name]


@pytest.mark.parametrize("name", ADDITIONAL_DESIDERATA)
def test_additional_desiderata(tok, name):
    n_boxes = 4
    pairs = desiderata(tok, name, 16, n_boxes=n_boxes, seed=3)
    base, source = pairs.base, pairs.source
    extra = name in ("add_seg_start", "add_seg_end")
    assert source.n_boxes == n_boxes + extra and len(source) == 16
    assert_layout(source, tok, template=False)
    for i in range(16):
        q = int(source.queried_index[i])
        assert _modified(name, source.prompts[i], source.objects[i], source.labels[i], q), source.prompts[i]
        original = q - 1 if name == "add_seg_start" else q
        assert original != int(base.queried_index[i])
        if name == "incorrect_segment":
            expected = base.objects[i][(original + 1) % n_boxes]
        else:
            expected = base.objects[i][original]
        assert int(pairs.target_ids[i]) == token_id(tok, expected)
        if extra:
            assert len(set(source.objects[i])) == len(set(source.labels[i])) == n_boxes + 1


def test_sources_of_different_lengths_are_right_padded(tok):
    vocab = usable_vocabulary(tok)
    objects, labels = vocab.objects[:3], vocab.labels[:3]
    rows = [prompt_row(objects, labels, 1), prompt_row(objects, labels, 2, prefix=RANDOM_TEXT)]
    ds = build_dataset(tok, vocab, rows, seed=0, one_length=False, strict=False)
    short, long = (len(tok(p)["input_ids"]) for p in ds.prompts)
    assert short < long and ds.input_ids.shape == (2, long)
    assert ds.last_pos.tolist() == [short - 1, long - 1]
    assert ds.attention_mask.sum(1).tolist() == [short, long]
    assert_layout(ds, tok, template=False)
    with pytest.raises(TokenizerError, match="different lengths"):
        build_dataset(tok, vocab, rows, seed=0)
