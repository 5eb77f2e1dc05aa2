"""The entity-tracking task (spec sections 2-3) for any tokenizer.

Prompts follow the paper's template, "The {o1} is in Box {L1}, the {o2} is in Box {L2}, ... Box {Lq}
contains the". Token positions are found by searching the real tokenization (never by constants) and
asserted, so that LLaMA, GPT-2 style byte-level BPE and word-level tokenizers all give correct layouts.
Everything is seeded with local random generators: the same arguments always give the same data.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import operator
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mechtest.errors import TaskError, TokenizerError
from mechtest.spec import ADDITIONAL_DESIDERATA, DESIDERATA

log = logging.getLogger(__name__)

DEFAULT_LABELS = tuple(string.ascii_uppercase)

# A word must be one and the same token wherever the template puts it (left context, then what may follow).
# Only the paper template is probed: a variant of an additional desideratum that tokenizes a word
# differently (e.g. "cup," glued into one token) raises TokenizerError when its sources are built.
_OBJECT_LEFTS = ("The", "the", "contains the")
_OBJECT_RIGHTS = (" is",)
_LABEL_LEFTS = ("is in Box", ". Box")
_LABEL_RIGHTS = (",", ".", " contains")
# Template words: an object or label sharing a token id with them would make the layout search ambiguous.
_SKELETON = "The is in Box, the is in Box. Box contains the"
_EXTRA_BOXES = "there are three additional boxes, Box PP, Box BB and Box AA, "
_RANDOM_TEXT = "there are a bunch of boxes containing objects, "
_RANDOM_TEXT_END = ", these are a bunch of boxes containing objects"


@dataclass(frozen=True)
class Vocabulary:
    """Objects and box labels that are single tokens in context for one tokenizer, and what was dropped."""

    objects: tuple[str, ...]
    labels: tuple[str, ...]
    dropped_objects: tuple[str, ...]
    dropped_labels: tuple[str, ...]
    object_ids: tuple[int, ...]  # in-context (leading-space) token id of each object
    label_ids: tuple[int, ...]

    def token_id(self, word: str) -> int:
        """The in-context token id of a usable object or label."""
        if word in self.labels:
            return self.label_ids[self.labels.index(word)]
        if word in self.objects:
            return self.object_ids[self.objects.index(word)]
        raise TaskError(f"{word!r} is not a usable object or label of this vocabulary")


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
        rows = _indices(idx, len(self))
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
# vocabulary


def object_names() -> list[str]:
    """The shipped object list (the paper's objects.csv), in file order."""
    import csv
    from importlib import resources

    with resources.files("mechtest.data").joinpath("objects.csv").open(newline="") as f:
        return [row["object_name"] for row in csv.DictReader(f)]


def usable_vocabulary(tokenizer, objects=None, labels=None) -> Vocabulary:
    """Keep the objects and labels that are exactly one token (not unk) wherever the prompts place them.

    "In context" means after "the" / "Box" and before what follows them, which is what the model sees; for
    GPT-2 style tokenizers that is the ``Ġword`` token, for SentencePiece ``▁word`` (the same id as encoding
    " word" without special tokens, but also right where a lone " word" encodes oddly, e.g. with a dummy
    prefix), and it is also the answer id: the token the model emits after " the". The shipped defaults
    (objects.csv, "A".."Z") are filtered with a logged warning; a word the caller supplied that fails
    raises ``TokenizerError``, since silently dropping it would change the caller's experiment.
    """
    strict_objects, strict_labels = objects is not None, labels is not None
    if objects is None:
        objects = object_names()
    objects = _words(objects, "object")
    labels = _words(DEFAULT_LABELS if labels is None else labels, "label")
    name = _tokenizer_name(tokenizer)

    template_ids = set(_encode_batch(tokenizer, [_SKELETON])[0])
    kept_labels, label_ids, dropped_labels = _filter(
        tokenizer, labels, _LABEL_LEFTS, _LABEL_RIGHTS, template_ids, "label", strict_labels
    )
    kept_objects, object_ids, dropped_objects = _filter(
        tokenizer, objects, _OBJECT_LEFTS, _OBJECT_RIGHTS, template_ids | set(label_ids), "object", strict_objects
    )
    if dropped_objects or dropped_labels:
        log.warning(
            "tokenizer %s: dropped %d objects %s and %d labels %s that are not single tokens in context",
            name, len(dropped_objects), list(dropped_objects), len(dropped_labels), list(dropped_labels),
        )
    return Vocabulary(kept_objects, kept_labels, dropped_objects, dropped_labels, object_ids, label_ids)


def _filter(tokenizer, words, lefts, rights, taken_ids, kind, strict):
    """Split words into (kept, their ids, dropped); raise on a failing word when the caller supplied them."""
    ids = _in_context_ids(tokenizer, words, lefts, rights)
    taken = set(taken_ids)
    unk = getattr(tokenizer, "unk_token_id", None)
    kept, kept_ids, dropped = [], [], []
    for word, token in zip(words, ids):
        problem = None
        if token is None or token == unk:
            problem = "is not a single known token in context"
        elif token in taken:
            problem = "shares its token with a template word or another object/label"
        if problem is None:
            kept.append(word)
            kept_ids.append(token)
            taken.add(token)
        elif strict:
            raise TokenizerError(f"{kind} {word!r} {problem} for tokenizer {_tokenizer_name(tokenizer)}")
        else:
            dropped.append(word)
    return tuple(kept), tuple(kept_ids), tuple(dropped)


def _in_context_ids(tokenizer, words, lefts, rights) -> list[int | None]:
    """Per word, the single token it becomes after every left context, unchanged by what follows; else None."""
    texts = list(lefts)
    for word in words:
        for left in lefts:
            texts += [f"{left} {word}"] + [f"{left} {word}{right}" for right in rights]
    encoded = iter(_encode_batch(tokenizer, texts))
    heads = [next(encoded) for _ in lefts]
    result = []
    for _ in words:
        found = set()
        for head in heads:
            with_word = next(encoded)
            followed = [next(encoded) for _ in rights]
            ok = len(with_word) == len(head) + 1 and with_word[: len(head)] == head
            ok = ok and all(f[: len(with_word)] == with_word for f in followed)
            found.add(with_word[-1] if ok else None)
        result.append(found.pop() if len(found) == 1 else None)
    return result


def _words(words, kind: str) -> tuple[str, ...]:
    if isinstance(words, str):
        raise TaskError(f"{kind}s must be a sequence of words, not the string {words!r}")
    words = tuple(words)
    for word in words:
        if not isinstance(word, str) or not word or word != word.strip() or " " in word:
            raise TaskError(f"{kind} {word!r} is not a single word")
    duplicates = sorted({w for w in words if words.count(w) > 1})
    if duplicates:
        raise TaskError(f"duplicate {kind}s supplied: {duplicates}")
    return words


def _tokenizer_name(tokenizer) -> str:
    path = getattr(tokenizer, "name_or_path", "")
    return f"{type(tokenizer).__name__}({path!r})" if path else type(tokenizer).__name__


def _vocabulary_for(tokenizer, n_boxes, objects, labels) -> Vocabulary:
    """Validate the request, then return a vocabulary large enough for n_boxes."""
    if not isinstance(n_boxes, int) or isinstance(n_boxes, bool) or n_boxes < 2:
        raise TaskError(f"n_boxes must be an integer >= 2, got {n_boxes!r}")
    for kind, given in (("label", DEFAULT_LABELS if labels is None else labels), ("object", objects)):
        if given is not None and n_boxes > len(_words(given, kind)):
            raise TaskError(f"{n_boxes} boxes need {n_boxes} distinct {kind}s, only {len(given)} available")
    vocab = usable_vocabulary(tokenizer, objects, labels)
    _check_enough(vocab, n_boxes, tokenizer)
    return vocab


def _check_enough(vocab: Vocabulary, needed: int, tokenizer) -> None:
    for kind, kept, dropped in (("labels", vocab.labels, vocab.dropped_labels),
                                ("objects", vocab.objects, vocab.dropped_objects)):
        if needed > len(kept):
            raise TokenizerError(
                f"only {len(kept)} {kind} are single tokens for tokenizer {_tokenizer_name(tokenizer)}, "
                f"{needed} needed (dropped: {list(dropped)})"
            )


def _check_n(n) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise TaskError(f"n must be a positive integer, got {n!r}")


# ---------------------------------------------------------------------------------------------------
# prompts: text pieces with marked words, rendered, tokenized and located


@dataclass(frozen=True)
class _Mark:
    kind: str  # "object", "label" or "query"
    segment: int  # segment index in this prompt; -1 for the query
    word: str


@dataclass(frozen=True)
class _Row:
    objects: tuple[str, ...]
    labels: tuple[str, ...]
    queried: int
    query_label: str
    answer: str
    pieces: tuple[str | _Mark, ...]


def _row(objects, labels, queried, *, query_label=None, styles=None, prefix="", context_end="",
         before=None, replace=None) -> _Row:
    """One prompt: segments "the {o} is in Box {L}" (or a variant style) joined by ", ", then the query.

    The first character of the prompt is capitalised, so the first segment reads "The ..." and any text
    placed before it (a prefix or extra boxes) starts with a capital instead.
    """
    objects, labels = tuple(objects), tuple(labels)
    query_label = labels[queried] if query_label is None else query_label
    pieces: list[str | _Mark] = [prefix]
    for s, (obj, label) in enumerate(zip(objects, labels)):
        pieces.append(", " if s else "")
        pieces.append((before or {}).get(s, ""))
        pieces += _segment(s, obj, label, (styles or {}).get(s, "is_in"))
    pieces += [context_end, ". Box ", _Mark("query", -1, query_label), " contains the"]
    pieces = _merge_literals(pieces)
    if replace is not None:
        pieces = [p.replace(*replace) if isinstance(p, str) else p for p in pieces]
    pieces[0] = pieces[0][:1].upper() + pieces[0][1:]
    return _Row(objects, labels, queried, query_label, objects[queried], tuple(pieces))


def _segment(s: int, obj: str, label: str, style: str) -> list[str | _Mark]:
    o, lab = _Mark("object", s, obj), _Mark("label", s, label)
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
    merged: list[str | _Mark] = []
    for p in pieces:
        if isinstance(p, str) and merged and isinstance(merged[-1], str):
            merged[-1] += p
        else:
            merged.append(p)
    return merged


def _render(row: _Row) -> str:
    return "".join(p if isinstance(p, str) else p.word for p in row.pieces)


def _encode_batch(tokenizer, texts, special: bool = False) -> list[list[int]]:
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=special)["input_ids"]]


def _tokenize(tokenizer, texts) -> list[list[int]]:
    """Token ids with the tokenizer's leading special tokens (BOS) kept and any trailing ones (EOS) removed:
    the prediction is read at the last real token."""
    specials = set(tokenizer.all_special_ids)
    result = []
    for text, full, plain in zip(texts, _encode_batch(tokenizer, texts, True), _encode_batch(tokenizer, texts)):
        start = next(
            (k for k in range(len(full) - len(plain) + 1)
             if full[k : k + len(plain)] == plain and all(t in specials for t in full[:k])),
            None,
        )
        if start is None:
            raise TokenizerError(
                f"tokenizer {_tokenizer_name(tokenizer)} tokenizes {text!r} differently with special tokens"
            )
        result.append(full[: start + len(plain)])
    return result


def _locate(ids: list[int], row: _Row, vocab: Vocabulary, text: str, strict: bool) -> dict:
    """Find every marked word by token search, left to right, and check the layout it implies."""
    found, cursor = {}, 0
    for mark in (p for p in row.pieces if isinstance(p, _Mark)):
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


def _build(tokenizer, vocab: Vocabulary, rows: Sequence[_Row], seed: int, *, one_length: bool = True,
           strict: bool = True) -> EntityTrackingDataset:
    """Tokenize, locate and pack rows; right-pad (attention 0) when lengths may differ."""
    texts = [_render(r) for r in rows]
    encoded = _tokenize(tokenizer, texts)
    lengths = [len(ids) for ids in encoded]
    if one_length and len(set(lengths)) > 1:
        k = next(i for i, n in enumerate(lengths) if n != lengths[0])
        raise TokenizerError(f"prompts tokenize to different lengths ({lengths[0]} and {lengths[k]}): {texts[k]!r}")
    layouts = [_locate(ids, r, vocab, t, strict) for ids, r, t in zip(encoded, rows, texts)]
    width = max(lengths)
    if min(lengths) < width:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise TokenizerError(f"tokenizer {_tokenizer_name(tokenizer)} has no pad or eos token to pad with")
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


def _sample_context(rng: random.Random, vocab: Vocabulary, n_boxes: int, containing: str | None = None):
    """Distinct objects and distinct labels, uniform without replacement; `containing` at a random segment."""
    objects = tuple(rng.sample(vocab.objects, n_boxes))
    if containing is None:
        return objects, tuple(rng.sample(vocab.labels, n_boxes))
    others = rng.sample([lab for lab in vocab.labels if lab != containing], n_boxes - 1)
    others.insert(rng.randrange(n_boxes), containing)
    return objects, tuple(others)


def _indices(idx, n: int) -> list[int]:
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


# ---------------------------------------------------------------------------------------------------
# public builders


def make_dataset(tokenizer, n: int = 500, *, n_boxes: int = 7, seed: int = 0, objects=None,
                 labels=None) -> EntityTrackingDataset:
    """The evaluation dataset (spec 2.7): blocks of n_boxes rows sharing one context, row k*n_boxes + j
    querying segment j; the last block is cut when n is not a multiple of n_boxes."""
    _check_n(n)
    vocab = _vocabulary_for(tokenizer, n_boxes, objects, labels)
    rng = random.Random(seed)
    rows = []
    for _ in range(math.ceil(n / n_boxes)):
        context = _sample_context(rng, vocab, n_boxes)
        rows += [_row(*context, j) for j in range(n_boxes)]
    return _build(tokenizer, vocab, rows[:n], seed)


def make_example(tokenizer, objects: Sequence[str], labels: Sequence[str], queried_index: int = 0, *,
                 vocabulary: Vocabulary | None = None) -> EntityTrackingDataset:
    """One hand-made prompt (a dataset of length 1); every word must be usable for the tokenizer."""
    objects, labels = _words(objects, "object"), _words(labels, "label")
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
    return _build(tokenizer, vocab, [_row(objects, labels, queried_index)], seed=-1)


def path_patching_corruption(base: EntityTrackingDataset, tokenizer, *, seed: int = 0) -> EntityTrackingDataset:
    """The corrupt set of spec 3.1, one row per base row.

    Row i is a fresh random context (rather than another block of the base, so it is never the base's own
    context: quirk Q11) queried at segment (j + 1) mod n_boxes for base segment j, whose query label token is
    then replaced by a uniformly random label that may be absent from its context. ``queried_index`` and
    ``query_context_pos`` still name the segment the row queried before the replacement; ``answer_ids`` are
    the base's answers, since scoring stays on the base answer.
    """
    vocab = base.vocabulary if base.vocabulary is not None else _vocabulary_for(tokenizer, base.n_boxes, None, None)
    rng = random.Random(f"path_patching_corruption:{seed}")
    rows = []
    for j in base.queried_index.tolist():
        objects, labels = _sample_context(rng, vocab, base.n_boxes)
        queried = (j + 1) % base.n_boxes
        rows.append(_row(objects, labels, queried, query_label=rng.choice(vocab.labels)))
    corrupt = _build(tokenizer, vocab, rows, seed)
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
    _check_n(n)
    vocab = _vocabulary_for(tokenizer, n_boxes, objects, labels)
    contexts_rng = random.Random(seed)
    label_rng = random.Random(f"mean_ablation_set:{seed}")
    rows = [
        _row(*_sample_context(contexts_rng, vocab, n_boxes), 0, query_label=label_rng.choice(vocab.labels))
        for _ in range(n)
    ]
    return _build(tokenizer, vocab, rows, seed)


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
        _check_enough(vocab, n_boxes + 1, tokenizer)
    rng = random.Random(f"desiderata:{name}:{seed}")
    rows, targets = [], []
    for b_objects, b_labels, j in zip(base.objects, base.labels, base.queried_index.tolist()):
        if name == "box_label_value":
            label = rng.choice([lab for lab in b_labels if lab != b_labels[j]])
            s_objects, s_labels = _sample_context(rng, vocab, n_boxes, containing=label)
            rows.append(_row(s_objects, s_labels, s_labels.index(label)))
            targets.append(b_objects[b_labels.index(label)])
            continue
        queried = rng.choice([s for s in range(n_boxes) if s != j])
        s_objects, s_labels = _sample_context(rng, vocab, n_boxes)
        rows.append(_source_row(name, s_objects, s_labels, queried, rng, vocab))
        if name == "object_value":
            targets.append(s_objects[queried])
        elif name == "incorrect_segment":
            targets.append(b_objects[(queried + 1) % n_boxes])
        else:
            targets.append(b_objects[queried])
    additional = name in ADDITIONAL_DESIDERATA
    source = _build(tokenizer, vocab, rows, seed, one_length=not additional, strict=not additional)
    target_ids = torch.tensor([vocab.token_id(t) for t in targets], dtype=torch.long)
    return CounterfactualPairs(name, base, source, target_ids)


def _source_row(name, objects, labels, queried, rng, vocab) -> _Row:
    """The source prompt of a positional-style desideratum, modified as spec 3.4 describes."""
    if name in ("add_seg_start", "add_seg_end"):
        extra_object = rng.choice([o for o in vocab.objects if o not in objects])
        extra_label = rng.choice([lab for lab in vocab.labels if lab not in labels])
        if name == "add_seg_start":
            return _row((extra_object, *objects), (extra_label, *labels), queried + 1)
        return _row((*objects, extra_object), (*labels, extra_label), queried)
    styles = {
        "add_tokens_btw_box_and_obj": "contained",
        "altered_box_obj_order": "box_first",
        "altered_box_obj_association": "not",
    }
    return _row(
        objects,
        labels,
        queried,
        styles={queried: styles[name]} if name in styles else None,
        prefix=_RANDOM_TEXT if name == "random_text_start" else "",
        context_end=_RANDOM_TEXT_END if name == "random_text_end" else "",
        before={queried: _EXTRA_BOXES} if name == "add_box_before_correct_segment" else None,
        replace={"no_comma": (", ", " "), "add_comma": (" is", ", is")}.get(name),
    )
