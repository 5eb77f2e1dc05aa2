"""Prompts of a template task (:mod:`mechtest.tasks.template`): drawn, tokenized and located.

Every slot word must be one known token wherever the templates put it (checked once per tokenizer, naming
the task, slot and word); positions are found by searching those tokens in the real tokenization and checked
(each word's token occurs exactly as often as the word), never by constants.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import torch

from mechtest.errors import TaskError, TokenizerError
from mechtest.tasks.layout import row_indices, tokenize
from mechtest.tasks.vocabulary import check_n, encode_batch, tokenizer_name


@dataclass(frozen=True, eq=False)
class TaskDataset:
    """Tokenized prompts of a template task with their named positions (``<name>_pos`` attributes)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    answer_ids: torch.Tensor
    last_pos: torch.Tensor
    named: dict
    prompts: tuple[str, ...]
    words: tuple[dict, ...]
    template: torch.Tensor
    seed: int
    task: str
    n_boxes: int = 0  # no boxes: kept so box-count keys and messages read the same for every task

    def __getattr__(self, name: str):
        named = self.__dict__.get("named", {})
        if name.endswith("_pos") and name[:-4] in named:
            return named[name[:-4]]
        raise AttributeError(name)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, idx) -> TaskDataset:
        rows = row_indices(idx, len(self))
        index = torch.tensor(rows, dtype=torch.long)
        return dataclasses.replace(
            self, input_ids=self.input_ids[index], attention_mask=self.attention_mask[index],
            answer_ids=self.answer_ids[index], last_pos=self.last_pos[index], template=self.template[index],
            named={k: v[index] for k, v in self.named.items()}, prompts=tuple(self.prompts[i] for i in rows),
            words=tuple(self.words[i] for i in rows))

    def __repr__(self) -> str:
        first = self.prompts[0] if self.prompts else None
        return f"TaskDataset(task={self.task!r}, n={len(self)}, seed={self.seed}, prompts[0]={first!r})"


_IDS: dict = {}


def token_ids(task, tokenizer) -> dict[str, int]:
    """Word -> its in-context token id, for every word of every vocabulary; a TokenizerError naming the task,
    slot and word when a word is not one known token wherever a template puts it."""
    key = (task.identity(), id(tokenizer), tokenizer_name(tokenizer), len(tokenizer))
    if key in _IDS:
        return _IDS[key]
    unk = getattr(tokenizer, "unk_token_id", None)
    contexts: dict[str, list[tuple[str, str]]] = {}  # slot -> (text before, text after) in each template
    for t in range(len(task.templates)):
        parts = task.pieces(t)
        for i, piece in enumerate(parts):
            if isinstance(piece, tuple):
                before = "".join(p if isinstance(p, str) else "" for p in parts[:i]).rstrip(" ")
                after = next((p for p in parts[i + 1:] if isinstance(p, str)), "")[:2]
                contexts.setdefault(piece[0], []).append((before, after))
    unknown = [t for t, text in enumerate(_texts(task, [(t, None, {m: task.vocabularies[task.slots[m[0]]][0]
                                                                    for m in _marks(task, t)})
                                                      for t in range(len(task.templates))]))
               if unk is not None and unk in encode_batch(tokenizer, [text])[0]]
    if unknown:
        raise TokenizerError(f"task {task.name!r}: template {task.templates[unknown[0]]!r} has words the tokenizer "
                             f"{tokenizer_name(tokenizer)} maps to its unknown token")
    ids = {}
    for slot, vocab in task.slots.items():
        for word in task.vocabularies[vocab]:
            found = {_one_token(tokenizer, before, word, after) for before, after in contexts[slot]}
            token = found.pop() if len(found) == 1 else None
            if token is None or token == unk:
                raise TokenizerError(f"task {task.name!r}, slot {slot!r}: word {word!r} is not a single known token "
                                     f"in context for tokenizer {tokenizer_name(tokenizer)}")
            if ids.setdefault(word, token) != token:  # pragma: no cover - one word, two contexts
                raise TokenizerError(f"task {task.name!r}, slot {slot!r}: word {word!r} tokenizes differently "
                                     "in different slots")
    clash = {}
    for word, token in ids.items():
        if token in clash:
            raise TokenizerError(f"task {task.name!r}: words {clash[token]!r} and {word!r} share one token for "
                                 f"tokenizer {tokenizer_name(tokenizer)}")
        clash[token] = word
    _IDS[key] = ids
    return ids


def _one_token(tokenizer, before: str, word: str, after: str) -> int | None:
    sep = " " if before else ""
    head, with_word, followed = encode_batch(tokenizer, [before, f"{before}{sep}{word}", f"{before}{sep}{word}{after}"])
    if not before:
        head = []
    ok = len(with_word) == len(head) + 1 and with_word[: len(head)] == head and followed[: len(with_word)] == with_word
    return with_word[-1] if ok else None


def _draw(task, rng: random.Random) -> tuple[int, dict]:
    """A template index and one word per slot; slots of one vocabulary get distinct words."""
    t = rng.randrange(len(task.templates))
    words = {}
    for vocab, pool in task.vocabularies.items():
        users = [s for s in task.slots if task.slots[s] == vocab]
        for slot, word in zip(users, rng.sample(pool, len(users))):
            words[slot] = word
    return t, words


def _apply(task, t: int, words: dict, rule, rng: random.Random) -> dict:
    """Occurrence -> word after ``rule``: ((slot, k), source) with k = 0 for every occurrence of the slot."""
    filled = {(s, k): words[s] for s, k in _marks(task, t)}
    for (slot, k), source in rule:
        if source == task.FRESH:
            pool = [w for w in task.vocabularies[task.slots[slot]] if w not in set(filled.values())]
            word = rng.choice(pool)
        else:
            word = words[source]
        for mark in filled:
            if mark[0] == slot and (k == 0 or mark[1] == k):
                filled[mark] = word
    return filled


def _marks(task, t: int) -> list[tuple[str, int]]:
    return [p for p in task.pieces(t) if isinstance(p, tuple)]


def _texts(task, rows) -> list[str]:
    return ["".join(p if isinstance(p, str) else filled[p] for p in task.pieces(t)) for t, _, filled in rows]


def build(task, tokenizer, n: int, *, seed: int = 0, rule=(), purpose: str = "dataset") -> TaskDataset:
    """``n`` prompts drawn with ``seed`` (the reference set draws the same rows, then applies ``rule``)."""
    check_n(n)
    rng, fresh = random.Random(seed), random.Random(f"{task.name}:{purpose}:{seed}")
    rows = []
    for _ in range(n):
        t, words = _draw(task, rng)
        rows.append((t, words, _apply(task, t, words, rule, fresh)))
    return _pack(task, tokenizer, rows, seed)


def corrupt(task, base: TaskDataset, tokenizer, *, seed: int = 0) -> TaskDataset:
    """Each base row with the corruption rule applied (same template, so the same token layout), scored on the
    base's answers."""
    rng = random.Random(f"{task.name}:corruption:{seed}")
    rows = [(int(t), words, _apply(task, int(t), words, task.corruption_rule, rng))
            for t, words in zip(base.template.tolist(), base.words)]
    out = _pack(task, tokenizer, rows, seed)
    if out.input_ids.shape != base.input_ids.shape:
        raise TaskError(f"task {task.name!r}: the corrupt prompts do not share the base prompts' token layout")
    return dataclasses.replace(out, answer_ids=base.answer_ids.clone())


def _pack(task, tokenizer, rows, seed: int) -> TaskDataset:
    ids_of = token_ids(task, tokenizer)
    texts = _texts(task, rows)
    encoded = tokenize(tokenizer, texts)
    lengths = {len(e) for e in encoded}
    if len(lengths) != 1:
        raise TokenizerError(f"task {task.name!r}: prompts tokenize to different lengths {sorted(lengths)} "
                             f"for tokenizer {tokenizer_name(tokenizer)}; path patching needs one layout")
    located = {name: [] for name in task.named}
    for ids, (t, _, filled), text in zip(encoded, rows, texts):
        found, cursor = {}, 0
        for mark in _marks(task, t):
            token = ids_of[filled[mark]]
            try:
                cursor = ids.index(token, cursor)
            except ValueError:
                raise TokenizerError(f"task {task.name!r}: token of {filled[mark]!r} not found in {text!r}") from None
            found[mark] = cursor
            cursor += 1
        for word in set(filled.values()):
            if ids.count(ids_of[word]) != list(filled.values()).count(word):
                raise TokenizerError(f"task {task.name!r}: ambiguous token layout (a template word shares the "
                                     f"token of {word!r}) in {text!r}")
        for name, (slot, k) in task.named.items():
            located[name].append(len(ids) - 1 if slot == "last" else found[(slot, max(k, 1))])
    width = len(encoded[0])
    return TaskDataset(
        input_ids=torch.tensor(encoded, dtype=torch.long),
        attention_mask=torch.ones(len(rows), width, dtype=torch.long),
        answer_ids=torch.tensor([ids_of[words[task.answer]] for _, words, _ in rows], dtype=torch.long),
        last_pos=torch.full((len(rows),), width - 1, dtype=torch.long),
        named={k: torch.tensor(v, dtype=torch.long) for k, v in located.items()},
        prompts=tuple(texts), words=tuple(dict(words) for _, words, _ in rows),
        template=torch.tensor([t for t, _, _ in rows], dtype=torch.long), seed=seed, task=task.name)
