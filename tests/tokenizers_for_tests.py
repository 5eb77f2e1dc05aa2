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

from mechtest.zoo.vocab import EXTRA_WORDS, build_tokenizer, object_names

BPE_HELD_OUT_OBJECTS = ("television", "newspaper", "magazine", "chemical")
BPE_HELD_OUT_LABELS = ("Z",)
SP_HELD_OUT_OBJECTS = ("guitar", "medicine", "camera")
NAMES = ("word_level", "byte_bpe", "sentencepiece")


def _training_text(held_out_objects, held_out_labels) -> list[str]:
    """Template sentences (and the additional-desiderata words) without the held-out words."""
    rng = random.Random(0)
    objects = [o for o in object_names() if o not in held_out_objects]
    labels = [lab for lab in string.ascii_uppercase if lab not in held_out_labels]
    lines = [" ".join(EXTRA_WORDS) + ", there are three additional boxes, Box PP, Box BB and Box AA, is contained"]
    for _ in range(400):
        objs, labs = rng.sample(objects, 7), rng.sample(labels, 7)
        segments = ", ".join(f"the {o} is in Box {lab}" for o, lab in zip(objs, labs))
        lines.append(f"T{segments[1:]}. Box {labs[3]} contains the {objs[3]}.")
    return lines


@functools.lru_cache(maxsize=None)
def byte_bpe() -> PreTrainedTokenizerFast:
    """GPT-2 style: byte-level BPE, no prefix space, no BOS added, no pad token (pads with eos)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_training_text(BPE_HELD_OUT_OBJECTS, BPE_HELD_OUT_LABELS), trainer)
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
