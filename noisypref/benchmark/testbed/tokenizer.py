"""A word-level tokenizer for the testbed language, built in code (no hub access)."""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from noisypref.benchmark.testbed.language import topic_names, word_names

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<bos>"
EOS_TOKEN = "<eos>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)


def build_word_tokenizer(num_topics: int, num_words: int) -> PreTrainedTokenizerFast:
    """One token per special token, topic and word; text is split on whitespace.

    Encoding adds no special tokens: callers add bos/eos explicitly (see the package docstring).
    Decoding joins tokens with single spaces.
    """
    vocabulary = [*SPECIAL_TOKENS, *topic_names(num_topics), *word_names(num_words)]
    word_level = Tokenizer(
        models.WordLevel({token: index for index, token in enumerate(vocabulary)}, unk_token=UNK_TOKEN)
    )
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=word_level,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=False,
    )
