"""Tiny keras-hub causal LMs with a fast word-level preprocessor (not a test
module).

The backbones come from `tiny_models`; the preprocessor is keras-hub's
generic `CausalLMPreprocessor` over a WordPiece tokenizer whose vocabulary is
the specials, a few words and single letters (V = 97, as the backbones), so
any lower-case text tokenises. Tracing it takes a tenth of the time GPT-2's
byte-pair tokenizer takes, which keeps the export tests fast; what is under
test (prompts, baking) does not depend on the tokenizer.
"""

import string

import keras
import keras_hub
from tiny_models import V, build_backbone

SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
WORDS = ["the", "film", "plot", "was", "very", "good", "long", "slow", "story"]
LETTERS = list(string.ascii_lowercase)
VOCABULARY = SPECIALS + WORDS + LETTERS + ["##" + c for c in LETTERS]
VOCABULARY += [f"w{i}" for i in range(V - len(VOCABULARY))]
assert len(VOCABULARY) == V


@keras.saving.register_keras_serializable(package="tf_softprompt_tests")
class TinyWordTokenizer(keras_hub.tokenizers.WordPieceTokenizer):
    """WordPiece with start/end/pad specials, as a causal LM expects."""

    def __init__(self, vocabulary=None, **kwargs):
        self._add_special_token("[BOS]", "start_token")
        self._add_special_token("[EOS]", "end_token")
        self._add_special_token("[PAD]", "pad_token")
        kwargs.setdefault("lowercase", True)
        super().__init__(vocabulary=vocabulary or VOCABULARY, **kwargs)


def word_preprocessor(sequence_length):
    return keras_hub.models.CausalLMPreprocessor(
        tokenizer=TinyWordTokenizer(), sequence_length=sequence_length
    )


TASK_CLASSES = {
    "gpt2": keras_hub.models.GPT2CausalLM,
    "gemma": keras_hub.models.GemmaCausalLM,
    "llama": keras_hub.models.LlamaCausalLM,
}


def build_lm(kind, sequence_length, seed=0, num_layers=2):
    """A seeded tiny causal LM of `kind` with the word preprocessor, greedy."""
    backbone = build_backbone(kind, seed, num_layers=num_layers)
    lm = TASK_CLASSES[kind](
        backbone=backbone, preprocessor=word_preprocessor(sequence_length)
    )
    lm.compile(sampler="greedy")
    return lm
