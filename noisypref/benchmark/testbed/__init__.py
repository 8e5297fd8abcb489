"""The synthetic gold-reward testbed: the embedded default of DESIGN.md §6 (see docs/testbed.md).

A prompt is one topic token (``"topic_3"``), a response a space-separated list of words
(``"w12 w5 w33"``), and a hidden gold reward scores every response to every prompt. A tiny
random-initialised causal LM is supervised fine-tuned into the reference policy; preference pairs are
sampled from it and labelled by Bradley–Terry on the gold reward. ``build_testbed`` builds all of this
once per config and caches it; ``sample_responses`` samples from any causal LM (also the evaluator's).

Tokenisation convention (shared with the training engine): prompt and response are tokenised
separately, ``tokenizer(text, add_special_tokens=False)``, and a training sequence is

    [bos] + prompt_ids + response_ids + [eos]

with the loss (or the sequence log-prob) taken over the response tokens and the eos token only.
Supervised fine-tuning here follows it, so the reference policy is the distribution DPO then trains;
``sample_responses`` continues ``[bos] + prompt_ids`` until eos.
"""

from noisypref.benchmark.testbed.build import Testbed, build_testbed
from noisypref.benchmark.testbed.config import TESTBED_FORMAT_VERSION, TestbedConfig
from noisypref.benchmark.testbed.language import GoldReward
from noisypref.benchmark.testbed.sampling import sample_responses
from noisypref.benchmark.testbed.tokenizer import build_word_tokenizer

__all__ = [
    "TESTBED_FORMAT_VERSION",
    "GoldReward",
    "Testbed",
    "TestbedConfig",
    "build_testbed",
    "build_word_tokenizer",
    "sample_responses",
]
