"""Which objects and box labels a tokenizer can use: single tokens wherever the template puts them."""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass

from mechtest.errors import TaskError, TokenizerError

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
EXTRA_BOXES = "there are three additional boxes, Box PP, Box BB and Box AA, "
RANDOM_TEXT = "there are a bunch of boxes containing objects, "
RANDOM_TEXT_END = ", these are a bunch of boxes containing objects"


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
    objects = checked_words(objects, "object")
    labels = checked_words(DEFAULT_LABELS if labels is None else labels, "label")
    name = tokenizer_name(tokenizer)

    template_ids = set(encode_batch(tokenizer, [_SKELETON])[0])
    check_template_words(tokenizer, template_ids)
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
            raise TokenizerError(f"{kind} {word!r} {problem} for tokenizer {tokenizer_name(tokenizer)}")
        else:
            dropped.append(word)
    return tuple(kept), tuple(kept_ids), tuple(dropped)


def _in_context_ids(tokenizer, words, lefts, rights) -> list[int | None]:
    """Per word, the single token it becomes after every left context, unchanged by what follows; else None."""
    texts = list(lefts)
    for word in words:
        for left in lefts:
            texts += [f"{left} {word}"] + [f"{left} {word}{right}" for right in rights]
    encoded = iter(encode_batch(tokenizer, texts))
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


def checked_words(words, kind: str) -> tuple[str, ...]:
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


def tokenizer_name(tokenizer) -> str:
    path = getattr(tokenizer, "name_or_path", "")
    return f"{type(tokenizer).__name__}({path!r})" if path else type(tokenizer).__name__


def vocabulary_for(tokenizer, n_boxes, objects, labels) -> Vocabulary:
    """Validate the request, then return a vocabulary large enough for n_boxes."""
    if not isinstance(n_boxes, int) or isinstance(n_boxes, bool) or n_boxes < 2:
        raise TaskError(f"n_boxes must be an integer >= 2, got {n_boxes!r}")
    for kind, given in (("label", DEFAULT_LABELS if labels is None else labels), ("object", objects)):
        if given is not None and n_boxes > len(checked_words(given, kind)):
            raise TaskError(f"{n_boxes} boxes need {n_boxes} distinct {kind}s, only {len(given)} available")
    vocab = usable_vocabulary(tokenizer, objects, labels)
    check_enough(vocab, n_boxes, tokenizer)
    return vocab


def check_enough(vocab: Vocabulary, needed: int, tokenizer) -> None:
    for kind, kept, dropped in (("labels", vocab.labels, vocab.dropped_labels),
                                ("objects", vocab.objects, vocab.dropped_objects)):
        if needed > len(kept):
            raise TokenizerError(
                f"only {len(kept)} {kind} are single tokens for tokenizer {tokenizer_name(tokenizer)}, "
                f"{needed} needed (dropped: {list(dropped)})"
            )


def check_n(n) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise TaskError(f"n must be a positive integer, got {n!r}")


def encode_batch(tokenizer, texts, special: bool = False) -> list[list[int]]:
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=special)["input_ids"]]


def check_template_words(tokenizer, template_ids: set[int]) -> None:
    """Refuse a tokenizer that maps a word of the template itself to its unknown token: every prompt would
    then contain an ``<unk>`` the model never learned to read, and the layout search could match it."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or unk not in template_ids:
        return
    words = [w for w in dict.fromkeys(_SKELETON.replace(",", " ,").replace(".", " .").split())
             if unk in encode_batch(tokenizer, [" " + w])[0]]
    raise TokenizerError(f"tokenizer {tokenizer_name(tokenizer)} maps template word(s) {words or ['?']} to its "
                         "unknown token; the entity-tracking prompts cannot be written for it")
