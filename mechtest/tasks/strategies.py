"""Hypothesis strategies for entity-tracking prompts that are valid for a given tokenizer.

Examples are drawn as indices into the tokenizer's usable object and label lists, so Hypothesis shrinks a
failure toward fewer boxes and toward the first objects and labels, and every example's layout is checked
by the same code as ``make_dataset``.
"""

from __future__ import annotations

from hypothesis import note, settings
from hypothesis import strategies as st

from mechtest.errors import TaskError, TokenizerError
from mechtest.tasks.entity_tracking import make_example, usable_vocabulary


def entity_tracking_examples(tokenizer, n_boxes=None, *, objects=None, labels=None) -> st.SearchStrategy:
    """Single-example ``EntityTrackingDataset``s for ``tokenizer``.

    ``n_boxes`` is an int or a strategy of ints (default: 2..7, capped by the usable vocabulary). A failing
    property shows the prompt both in the example's repr and as a Hypothesis note.
    """
    vocab = usable_vocabulary(tokenizer, objects, labels)
    limit = min(len(vocab.objects), len(vocab.labels))
    if limit < 2:
        raise TokenizerError(f"fewer than 2 objects or labels are single tokens for {type(tokenizer).__name__}")
    if n_boxes is None:
        n_boxes = st.integers(2, min(7, limit))
    elif isinstance(n_boxes, int) and not isinstance(n_boxes, bool):
        _check_boxes(n_boxes, limit)
        n_boxes = st.just(n_boxes)
    elif not isinstance(n_boxes, st.SearchStrategy):
        raise TaskError(f"n_boxes must be an int or a strategy of ints, got {n_boxes!r}")

    @st.composite
    def examples(draw):
        n = draw(n_boxes)
        _check_boxes(n, limit)
        object_idx = draw(st.lists(st.integers(0, len(vocab.objects) - 1), min_size=n, max_size=n, unique=True))
        label_idx = draw(st.lists(st.integers(0, len(vocab.labels) - 1), min_size=n, max_size=n, unique=True))
        queried = draw(st.integers(0, n - 1))
        example = make_example(
            tokenizer,
            [vocab.objects[i] for i in object_idx],
            [vocab.labels[i] for i in label_idx],
            queried,
            vocabulary=vocab,
        )
        note(f"prompt: {example.prompts[0]!r} -> answer {example.objects[0][queried]!r}")
        return example

    return examples()


def _check_boxes(n, limit: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or not 2 <= n <= limit:
        raise TaskError(f"n_boxes must be an integer in 2..{limit} for this tokenizer, got {n!r}")


def register_profiles() -> None:
    """Register a quick "dev" and a thorough "ci" profile (idempotent), leaving Hypothesis's own "default"
    alone; load one with ``--hypothesis-profile`` or ``settings.load_profile``."""
    settings.register_profile("dev", max_examples=25, deadline=None)
    settings.register_profile("ci", max_examples=200, deadline=None)
