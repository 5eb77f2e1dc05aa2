"""Counterfactual pairs of the desiderata (spec 3, 6): base and source prompts and the predicted answer."""

from __future__ import annotations

import random

import torch

from mechtest.errors import TaskError
from mechtest.spec import ADDITIONAL_DESIDERATA, DESIDERATA
from mechtest.tasks.datasets import make_dataset
from mechtest.tasks.layout import CounterfactualPairs, PromptRow, build_dataset, prompt_row, sample_context
from mechtest.tasks.vocabulary import EXTRA_BOXES, RANDOM_TEXT, RANDOM_TEXT_END, check_enough

def desiderata(tokenizer, name: str, n: int = 500, *, n_boxes: int = 7, seed: int = 0, objects=None,
               labels=None) -> CounterfactualPairs:
    """Base/source/target triples for one DCM desideratum (spec 3.3-3.4).

    The base is ``make_dataset`` with the same arguments. Each source is a fresh random context, which has
    the distribution of the paper's "another row drawn until the condition holds", built directly:

    * positional, object_value and every additional desideratum: the source queries a segment other than
      the base's true queried segment (paper intent; the code compared with segment 0, quirk Q2);
    * box_label_value: the source's query label is one of the base's labels other than the base's query
      label, matched by exact token (not by substring, quirk Q3); its target is the base object's normal
      leading-space token (not the raw piece, quirk Q4).

    Additional desiderata modify the source prompt only; their sources are right-padded and all positions
    are computed on the source's own tokens. add_seg_start/add_seg_end add a segment with an object and a
    label absent from the source context (the code used a fixed "apple"/"O", which may repeat a word), and
    altered_box_obj_order leaves no stray ", ." when the queried segment is the last one. For
    add_seg_start the source's ``queried_index`` counts the extra segment; the target uses the original one.
    """
    known = DESIDERATA + ADDITIONAL_DESIDERATA
    if name not in known:
        raise TaskError(f"unknown desideratum {name!r}; choose one of {', '.join(known)}")
    base = make_dataset(tokenizer, n, n_boxes=n_boxes, seed=seed, objects=objects, labels=labels)
    vocab = base.vocabulary
    if name in ("add_seg_start", "add_seg_end"):
        check_enough(vocab, n_boxes + 1, tokenizer)
    rng = random.Random(f"desiderata:{name}:{seed}")
    rows, targets = [], []
    for b_objects, b_labels, j in zip(base.objects, base.labels, base.queried_index.tolist()):
        if name == "box_label_value":
            label = rng.choice([lab for lab in b_labels if lab != b_labels[j]])
            s_objects, s_labels = sample_context(rng, vocab, n_boxes, containing=label)
            rows.append(prompt_row(s_objects, s_labels, s_labels.index(label)))
            targets.append(b_objects[b_labels.index(label)])
            continue
        queried = rng.choice([s for s in range(n_boxes) if s != j])
        s_objects, s_labels = sample_context(rng, vocab, n_boxes)
        rows.append(_source_row(name, s_objects, s_labels, queried, rng, vocab))
        if name == "object_value":
            targets.append(s_objects[queried])
        elif name == "incorrect_segment":
            targets.append(b_objects[(queried + 1) % n_boxes])
        else:
            targets.append(b_objects[queried])
    additional = name in ADDITIONAL_DESIDERATA
    source = build_dataset(tokenizer, vocab, rows, seed, one_length=not additional, strict=not additional)
    target_ids = torch.tensor([vocab.token_id(t) for t in targets], dtype=torch.long)
    return CounterfactualPairs(name, base, source, target_ids)


def _source_row(name, objects, labels, queried, rng, vocab) -> PromptRow:
    """The source prompt of a positional-style desideratum, modified as spec 3.4 describes."""
    if name in ("add_seg_start", "add_seg_end"):
        extra_object = rng.choice([o for o in vocab.objects if o not in objects])
        extra_label = rng.choice([lab for lab in vocab.labels if lab not in labels])
        if name == "add_seg_start":
            return prompt_row((extra_object, *objects), (extra_label, *labels), queried + 1)
        return prompt_row((*objects, extra_object), (*labels, extra_label), queried)
    styles = {
        "add_tokens_btw_box_and_obj": "contained",
        "altered_box_obj_order": "box_first",
        "altered_box_obj_association": "not",
    }
    return prompt_row(
        objects,
        labels,
        queried,
        styles={queried: styles[name]} if name in styles else None,
        prefix=RANDOM_TEXT if name == "random_text_start" else "",
        context_end=RANDOM_TEXT_END if name == "random_text_end" else "",
        before={queried: EXTRA_BOXES} if name == "add_box_before_correct_segment" else None,
        replace={"no_comma": (", ", " "), "add_comma": (" is", ", is")}.get(name),
    )
