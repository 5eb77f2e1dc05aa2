"""Prompts as text pieces with marked words, tokenized, and every patched position located and checked."""

from __future__ import annotations

import dataclasses
import operator
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mechtest.errors import TaskError, TokenizerError
from mechtest.tasks.vocabulary import Vocabulary, encode_batch, tokenizer_name


@dataclass(frozen=True, eq=False)
class EntityTrackingDataset:
    """Tokenized prompts with every position the methods patch, found on the real tokens and checked."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    answer_ids: torch.Tensor
    last_pos: torch.Tensor
    query_label_pos: torch.Tensor
    query_context_pos: torch.Tensor
    label_pos: torch.Tensor
    object_pos: torch.Tensor
    queried_index: torch.Tensor
    prompts: tuple[str, ...]
    objects: tuple[tuple[str, ...], ...]
    labels: tuple[tuple[str, ...], ...]
    query_labels: tuple[str, ...]
    n_boxes: int
    seed: int  # -1 when the rows were not drawn from a seed (hand-made or Hypothesis examples)
    vocabulary: Vocabulary | None = None  # the pool the rows were drawn from, reused by the corruptions

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, idx) -> EntityTrackingDataset:
        rows = row_indices(idx, len(self))
        index = torch.tensor(rows, dtype=torch.long)
        tensors = {
            f.name: getattr(self, f.name)[index]
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        tuples = {
            name: tuple(getattr(self, name)[i] for i in rows)
            for name in ("prompts", "objects", "labels", "query_labels")
        }
        return dataclasses.replace(self, **tensors, **tuples)

    def __repr__(self) -> str:
        first = self.prompts[0] if self.prompts else None
        return (
            f"EntityTrackingDataset(n={len(self)}, n_boxes={self.n_boxes}, seed={self.seed}, "
            f"prompts[0]={first!r})"
        )

    def _repr_pretty_(self, printer, cycle) -> None:
        """Keep Hypothesis's falsifying-example report (and IPython) to the short repr, not every tensor."""
        printer.text(repr(self))


@dataclass(frozen=True, eq=False)
class CounterfactualPairs:
    """Base and source prompts, and the answer a desideratum predicts when the base run receives the
    source's information (DCM, spec 6; transfer patching, spec 6.7)."""

    name: str
    base: EntityTrackingDataset
    source: EntityTrackingDataset
    target_ids: torch.Tensor

    def __len__(self) -> int:
        return len(self.base)

    def __repr__(self) -> str:
        first = self.source.prompts[0] if len(self.source) else None
        return f"CounterfactualPairs(name={self.name!r}, n={len(self)}, base={self.base!r}, source[0]={first!r})"


# ---------------------------------------------------------------------------------------------------
# prompts: text pieces with marked words, rendered, tokenized and located


@dataclass(frozen=True)
class Marked:
    kind: str  # "object", "label" or "query"
    segment: int  # segment index in this prompt; -1 for the query
    word: str


@dataclass(frozen=True)
class PromptRow:
    objects: tuple[str, ...]
    labels: tuple[str, ...]
    queried: int
    query_label: str
    answer: str
    pieces: tuple[str | Marked, ...]


def prompt_row(objects, labels, queried, *, query_label=None, styles=None, prefix="", context_end="",
         before=None, replace=None) -> PromptRow:
    """One prompt: segments "the {o} is in Box {L}" (or a variant style) joined by ", ", then the query.

    The first character of the prompt is capitalised, so the first segment reads "The ..." and any text
    placed before it (a prefix or extra boxes) starts with a capital instead.
    """
    objects, labels = tuple(objects), tuple(labels)
    query_label = labels[queried] if query_label is None else query_label
    pieces: list[str | Marked] = [prefix]
    for s, (obj, label) in enumerate(zip(objects, labels)):
        pieces.append(", " if s else "")
        pieces.append((before or {}).get(s, ""))
        pieces += _segment(s, obj, label, (styles or {}).get(s, "is_in"))
    pieces += [context_end, ". Box ", Marked("query", -1, query_label), " contains the"]
    pieces = _merge_literals(pieces)
    if replace is not None:
        pieces = [p.replace(*replace) if isinstance(p, str) else p for p in pieces]
    pieces[0] = pieces[0][:1].upper() + pieces[0][1:]
    return PromptRow(objects, labels, queried, query_label, objects[queried], tuple(pieces))


def _segment(s: int, obj: str, label: str, style: str) -> list[str | Marked]:
    o, lab = Marked("object", s, obj), Marked("label", s, label)
    if style == "is_in":
        return ["the ", o, " is in Box ", lab]
    if style == "contained":
        return ["the ", o, " is contained in the Box ", lab]
    if style == "not":
        return ["the ", o, " is not in Box ", lab]
    if style == "box_first":
        return ["Box ", lab, " contains the ", o]
    raise TaskError(f"unknown segment style {style!r}")


def _merge_literals(pieces):
    merged: list[str | Marked] = []
    for p in pieces:
        if isinstance(p, str) and merged and isinstance(merged[-1], str):
            merged[-1] += p
        else:
            merged.append(p)
    return merged


def _render(row: PromptRow) -> str:
    return "".join(p if isinstance(p, str) else p.word for p in row.pieces)


def tokenize(tokenizer, texts) -> list[list[int]]:
    """Token ids with the tokenizer's leading special tokens (BOS) kept and any trailing ones (EOS) removed:
    the prediction is read at the last real token."""
    specials = set(tokenizer.all_special_ids)
    result = []
    for text, full, plain in zip(texts, encode_batch(tokenizer, texts, True), encode_batch(tokenizer, texts)):
        start = next(
            (k for k in range(len(full) - len(plain) + 1)
             if full[k : k + len(plain)] == plain and all(t in specials for t in full[:k])),
            None,
        )
        if start is None:
            raise TokenizerError(
                f"tokenizer {tokenizer_name(tokenizer)} tokenizes {text!r} differently with special tokens"
            )
        result.append(full[: start + len(plain)])
    return result


def _locate(ids: list[int], row: PromptRow, vocab: Vocabulary, text: str, strict: bool) -> dict:
    """Find every marked word by token search, left to right, and check the layout it implies."""
    found, cursor = {}, 0
    for mark in (p for p in row.pieces if isinstance(p, Marked)):
        token = vocab.token_id(mark.word)
        try:
            cursor = ids.index(token, cursor)
        except ValueError:
            raise TokenizerError(f"token of {mark.word!r} not found in the tokenization of {text!r}") from None
        found[mark.kind, mark.segment] = cursor
        cursor += 1
    n = len(row.objects)
    layout = {
        "object_pos": [found["object", s] for s in range(n)],
        "label_pos": [found["label", s] for s in range(n)],
        "query_label_pos": found["query", -1],
        "last_pos": len(ids) - 1,
    }
    layout["query_context_pos"] = layout["label_pos"][row.queried]
    query_id = vocab.token_id(row.query_label)
    if not layout["query_label_pos"] < layout["last_pos"]:
        raise TokenizerError(f"nothing follows the query label in the tokenization of {text!r}")
    if strict:
        earlier = ids[: layout["query_label_pos"]].count(query_id)
        expected = 1 if row.query_label in row.labels else 0
        objects_once = all(ids.count(vocab.token_id(o)) == 1 for o in row.objects)
        if earlier != expected or not objects_once:
            raise TokenizerError(f"ambiguous token layout (repeated label or object token) in {text!r}")
    return layout


def build_dataset(tokenizer, vocab: Vocabulary, rows: Sequence[PromptRow], seed: int, *, one_length: bool = True,
           strict: bool = True) -> EntityTrackingDataset:
    """Tokenize, locate and pack rows; right-pad (attention 0) when lengths may differ."""
    texts = [_render(r) for r in rows]
    encoded = tokenize(tokenizer, texts)
    lengths = [len(ids) for ids in encoded]
    if one_length and len(set(lengths)) > 1:
        k = next(i for i, n in enumerate(lengths) if n != lengths[0])
        raise TokenizerError(f"prompts tokenize to different lengths ({lengths[0]} and {lengths[k]}): {texts[k]!r}")
    layouts = [_locate(ids, r, vocab, t, strict) for ids, r, t in zip(encoded, rows, texts)]
    width = max(lengths)
    if min(lengths) < width:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise TokenizerError(f"tokenizer {tokenizer_name(tokenizer)} has no pad or eos token to pad with")
        encoded = [ids + [pad] * (width - len(ids)) for ids in encoded]

    def col(key):
        return torch.tensor([lay[key] for lay in layouts], dtype=torch.long)

    n_segments = {len(r.objects) for r in rows}
    if len(n_segments) != 1:
        raise TaskError("all prompts of one dataset must have the same number of segments")
    return EntityTrackingDataset(
        input_ids=torch.tensor(encoded, dtype=torch.long),
        attention_mask=(torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long(),
        answer_ids=torch.tensor([vocab.token_id(r.answer) for r in rows], dtype=torch.long),
        last_pos=col("last_pos"),
        query_label_pos=col("query_label_pos"),
        query_context_pos=col("query_context_pos"),
        label_pos=col("label_pos"),
        object_pos=col("object_pos"),
        queried_index=torch.tensor([r.queried for r in rows], dtype=torch.long),
        prompts=tuple(texts),
        objects=tuple(r.objects for r in rows),
        labels=tuple(r.labels for r in rows),
        query_labels=tuple(r.query_label for r in rows),
        n_boxes=n_segments.pop(),
        seed=seed,
        vocabulary=vocab,
    )


def sample_context(rng: random.Random, vocab: Vocabulary, n_boxes: int, containing: str | None = None):
    """Distinct objects and distinct labels, uniform without replacement; `containing` at a random segment."""
    objects = tuple(rng.sample(vocab.objects, n_boxes))
    if containing is None:
        return objects, tuple(rng.sample(vocab.labels, n_boxes))
    others = rng.sample([lab for lab in vocab.labels if lab != containing], n_boxes - 1)
    others.insert(rng.randrange(n_boxes), containing)
    return objects, tuple(others)


def row_indices(idx, n: int) -> list[int]:
    if isinstance(idx, torch.Tensor):
        idx = idx.nonzero().flatten().tolist() if idx.dtype == torch.bool else idx.flatten().tolist()
    if isinstance(idx, slice):
        return list(range(n))[idx]
    if hasattr(idx, "__index__"):  # int, numpy integer
        idx = [operator.index(idx)]
    rows = []
    for i in idx:
        if not -n <= int(i) < n:
            raise IndexError(f"row {i} out of range for {n} rows")
        rows.append(int(i) % n)
    return rows
