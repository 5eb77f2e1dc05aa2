"""Three offline tokenizers of the kinds real checkpoints use, for the entity-tracking tests.

The two trained ones learn whole words from template text, except for a few objects (and one label) kept
out of the training text, which therefore stay multi-token and must be dropped by the vocabulary filter.
"""

from __future__ import annotations

import functools
import random
import string

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from tools.zoo.vocab import EXTRA_WORDS, build_tokenizer, object_names

BPE_HELD_OUT_OBJECTS = ("television", "newspaper", "magazine", "chemical")
BPE_HELD_OUT_LABELS = ("Z",)
SP_HELD_OUT_OBJECTS = ("guitar", "medicine", "camera")
NAMES = ("word_level", "byte_bpe", "sentencepiece")


def _training_text(held_out_objects, held_out_labels, verb: str = "contains") -> list[str]:
    """Template sentences (and the additional-desiderata words) without the held-out words; another query
    verb than "contains" leaves " contains" split up, so the query label is no longer at last - 2."""
    rng = random.Random(0)
    objects = [o for o in object_names() if o not in held_out_objects]
    labels = [lab for lab in string.ascii_uppercase if lab not in held_out_labels]
    lines = [" ".join(EXTRA_WORDS) + ", there are three additional boxes, Box PP, Box BB and Box AA, is contained"]
    for _ in range(400):
        objs, labs = rng.sample(objects, 7), rng.sample(labels, 7)
        segments = ", ".join(f"the {o} is in Box {lab}" for o, lab in zip(objs, labs))
        lines.append(f"T{segments[1:]}. Box {labs[3]} {verb} the {objs[3]}.")
    return lines


@functools.lru_cache(maxsize=None)
def byte_bpe() -> PreTrainedTokenizerFast:
    """GPT-2 style: byte-level BPE, no prefix space, no BOS added, no pad token (pads with eos), and
    " contains" is several tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_training_text(BPE_HELD_OUT_OBJECTS, BPE_HELD_OUT_LABELS, verb="holds"), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", name_or_path="test-byte-bpe"
    )


def _metaspace_bpe(split_punctuation: bool) -> Tokenizer:
    metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = (
        pre_tokenizers.Sequence([metaspace, pre_tokenizers.Punctuation()]) if split_punctuation else metaspace
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator(_training_text(SP_HELD_OUT_OBJECTS, ()), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return tok


@functools.lru_cache(maxsize=None)
def sentencepiece() -> PreTrainedTokenizerFast:
    """LLaMA style: Metaspace ("▁word"), punctuation split off, BOS prepended, unk token."""
    return PreTrainedTokenizerFast(
        tokenizer_object=_metaspace_bpe(split_punctuation=True),
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", name_or_path="test-sentencepiece",
    )


@functools.lru_cache(maxsize=None)
def sentencepiece_glued_punctuation() -> PreTrainedTokenizerFast:
    """A Metaspace tokenizer that learns "▁F," as one token: labels are single tokens alone but not in context."""
    return PreTrainedTokenizerFast(
        tokenizer_object=_metaspace_bpe(split_punctuation=False),
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", name_or_path="test-glued-punctuation",
    )


@functools.lru_cache(maxsize=None)
def word_level() -> PreTrainedTokenizerFast:
    """The project's own word-level tokenizer (every template word, label and shipped object is a token)."""
    return build_tokenizer()


def get(name: str) -> PreTrainedTokenizerFast:
    return {"word_level": word_level, "byte_bpe": byte_bpe, "sentencepiece": sentencepiece}[name]()


# ---------------------------------------------------------------------------------------------------
# independent checks of a dataset, shared by the task and strategy tests


def token_id(tok, word: str) -> int:
    """The leading-space token of a word, computed the plain way (" word" without special tokens)."""
    ids = tok.encode(" " + word, add_special_tokens=False)
    assert len(ids) == 1, (word, ids)
    return ids[0]


def token_text(tok, token: int) -> str:
    return tok.convert_ids_to_tokens(token).lstrip("Ġ▁")


def paper_prompt(objects, labels, query_label) -> str:
    """The paper template, written out independently of the library."""
    segments = ", ".join(f"the {o} is in Box {lab}" for o, lab in zip(objects, labels))
    return f"T{segments[1:]}. Box {query_label} contains the"


def assert_layout(ds, tok, *, template: bool = True, answers: bool = True) -> None:
    """Every position holds the token it claims, on the real tokenization of each prompt.

    ``template``: the prompts are the paper template (not a modified desideratum source), so the query
    label's context occurrence is unique and object precedes label in each segment.
    ``answers``: answer_ids are the object in the queried box (false for the path-patching corruption).
    """
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    assert ds.input_ids.shape == ds.attention_mask.shape
    assert ds.label_pos.shape == ds.object_pos.shape == (len(ds), ds.n_boxes)
    for i in range(len(ds)):
        ids = ds.input_ids[i].tolist()
        last = int(ds.last_pos[i])
        assert ids[: last + 1] == tok(ds.prompts[i])["input_ids"]
        assert ds.attention_mask[i, : last + 1].all() and not ds.attention_mask[i, last + 1 :].any()
        assert all(t == pad for t in ids[last + 1 :])
        assert token_text(tok, ids[last]) == "the"
        for s in range(ds.n_boxes):
            obj, lab = ds.objects[i][s], ds.labels[i][s]
            assert ids[ds.object_pos[i, s]] == token_id(tok, obj) and token_text(tok, ids[ds.object_pos[i, s]]) == obj
            assert ids[ds.label_pos[i, s]] == token_id(tok, lab) and token_text(tok, ids[ds.label_pos[i, s]]) == lab
        qpos, q = int(ds.query_label_pos[i]), int(ds.queried_index[i])
        assert ids[qpos] == token_id(tok, ds.query_labels[i])
        assert int(ds.label_pos[i, -1]) < qpos < last
        assert int(ds.query_context_pos[i]) == int(ds.label_pos[i, q])
        if answers:
            assert int(ds.answer_ids[i]) == token_id(tok, ds.objects[i][q])
        if template:
            assert ds.prompts[i] == paper_prompt(ds.objects[i], ds.labels[i], ds.query_labels[i])
            positions = [p for s in range(ds.n_boxes) for p in (ds.object_pos[i, s], ds.label_pos[i, s])]
            assert positions == sorted(positions) and len(set(positions)) == len(positions)
            if ds.query_labels[i] == ds.labels[i][q]:
                assert ids[: qpos].count(ids[qpos]) == 1
                assert ids[int(ds.query_context_pos[i])] == ids[qpos]
