"""The word-level tokenizer every shipped tiny model shares.

It is saved with ``save_pretrained`` as a ``PreTrainedTokenizerFast`` so that fixtures load through
``AutoTokenizer.from_pretrained`` exactly like a user's checkpoint. Every word of the entity-tracking
template, its additional-desiderata variants, the 26 box labels and the shipped object list is one token;
anything else maps to ``<unk>``.
"""

from __future__ import annotations

import string

from mechtest.tasks.entity_tracking import object_names

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
TEMPLATE_WORDS = ["The", "the", "is", "in", "Box", "contains", ",", "."]
# Words of the additional (robustness) desiderata of spec 3.4, so those prompts tokenize too.
EXTRA_WORDS = [
    "There", "are", "a", "bunch", "of", "boxes", "containing", "objects", "these", "not", "contained",
    "there", "three", "additional", "and", "PP", "BB", "AA",
]
LABELS = list(string.ascii_uppercase)


def vocabulary() -> list[str]:
    """All tokens in id order; duplicates (an object that is also a template word) appear once."""
    words = SPECIAL_TOKENS + TEMPLATE_WORDS + EXTRA_WORDS + LABELS + object_names()
    return list(dict.fromkeys(words))


def build_tokenizer():
    """A fresh ``PreTrainedTokenizerFast``: whitespace + punctuation split, BOS prepended, no EOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        clean_up_tokenization_spaces=False,
    )
