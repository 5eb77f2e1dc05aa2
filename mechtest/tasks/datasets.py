"""The public dataset builders (spec 2): evaluation prompts, one example, corruptions, mean-ablation sets."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence

from mechtest.errors import TaskError
from mechtest.tasks.layout import EntityTrackingDataset, build_dataset, prompt_row, sample_context
from mechtest.tasks.vocabulary import Vocabulary, check_n, checked_words, usable_vocabulary, vocabulary_for

def make_dataset(tokenizer, n: int = 500, *, n_boxes: int = 7, seed: int = 0, objects=None,
                 labels=None) -> EntityTrackingDataset:
    """The evaluation dataset (spec 2.7): blocks of n_boxes rows sharing one context, row k*n_boxes + j
    querying segment j; the last block is cut when n is not a multiple of n_boxes."""
    check_n(n)
    vocab = vocabulary_for(tokenizer, n_boxes, objects, labels)
    rng = random.Random(seed)
    rows = []
    for _ in range(math.ceil(n / n_boxes)):
        context = sample_context(rng, vocab, n_boxes)
        rows += [prompt_row(*context, j) for j in range(n_boxes)]
    return build_dataset(tokenizer, vocab, rows[:n], seed)


def make_example(tokenizer, objects: Sequence[str], labels: Sequence[str], queried_index: int = 0, *,
                 vocabulary: Vocabulary | None = None) -> EntityTrackingDataset:
    """One hand-made prompt (a dataset of length 1); every word must be usable for the tokenizer."""
    objects, labels = checked_words(objects, "object"), checked_words(labels, "label")
    if len(objects) != len(labels):
        raise TaskError(f"{len(objects)} objects but {len(labels)} labels")
    if len(objects) < 2:
        raise TaskError(f"n_boxes must be an integer >= 2, got {len(objects)}")
    if not 0 <= queried_index < len(objects):
        raise TaskError(f"queried_index {queried_index} outside 0..{len(objects) - 1}")
    vocab = vocabulary if vocabulary is not None else usable_vocabulary(tokenizer, objects, labels)
    missing = [w for w in objects if w not in vocab.objects] + [w for w in labels if w not in vocab.labels]
    if missing:
        raise TaskError(f"words not in the given vocabulary: {missing}")
    return build_dataset(tokenizer, vocab, [prompt_row(objects, labels, queried_index)], seed=-1)


def path_patching_corruption(base: EntityTrackingDataset, tokenizer, *, seed: int = 0) -> EntityTrackingDataset:
    """The corrupt set of spec 3.1, one row per base row.

    Row i is a fresh random context (rather than another block of the base, so it is never the base's own
    context: quirk Q11) queried at segment (j + 1) mod n_boxes for base segment j, whose query label token is
    then replaced by a uniformly random label that may be absent from its context. ``queried_index`` and
    ``query_context_pos`` still name the segment the row queried before the replacement; ``answer_ids`` are
    the base's answers, since scoring stays on the base answer.
    """
    vocab = base.vocabulary if base.vocabulary is not None else vocabulary_for(tokenizer, base.n_boxes, None, None)
    rng = random.Random(f"path_patching_corruption:{seed}")
    rows = []
    for j in base.queried_index.tolist():
        objects, labels = sample_context(rng, vocab, base.n_boxes)
        queried = (j + 1) % base.n_boxes
        rows.append(prompt_row(objects, labels, queried, query_label=rng.choice(vocab.labels)))
    corrupt = build_dataset(tokenizer, vocab, rows, seed)
    if corrupt.input_ids.shape[1] != base.input_ids.shape[1]:
        raise TaskError(
            f"the corrupt prompts have {corrupt.input_ids.shape[1]} tokens, the base {base.input_ids.shape[1]}: "
            "the base must come from make_dataset with this tokenizer"
        )
    return dataclasses.replace(corrupt, answer_ids=base.answer_ids.clone())


def mean_ablation_set(tokenizer, n: int = 500, *, n_boxes: int = 7, seed: int = 0, objects=None,
                      labels=None) -> EntityTrackingDataset:
    """Mean-ablation reference prompts (spec 3.2): one per context, query label replaced by a uniformly
    random label (possibly absent from the context).

    As in the paper (rows 0, n_boxes, 2*n_boxes, ...), the contexts are those of make_dataset with the same
    seed and the row queries segment 0 before its label is replaced; ``queried_index``, ``answer_ids`` and
    ``query_context_pos`` describe that row.
    """
    check_n(n)
    vocab = vocabulary_for(tokenizer, n_boxes, objects, labels)
    contexts_rng = random.Random(seed)
    label_rng = random.Random(f"mean_ablation_set:{seed}")
    rows = [
        prompt_row(*sample_context(contexts_rng, vocab, n_boxes), 0, query_label=label_rng.choice(vocab.labels))
        for _ in range(n)
    ]
    return build_dataset(tokenizer, vocab, rows, seed)
