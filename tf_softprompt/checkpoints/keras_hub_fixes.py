r"""Where keras-hub 0.32 computes something else than the checkpoint's own
implementation, and what corrects it.

Each correction is the smallest change to keras-hub's own classes (a
subclass that sets a keras-hub layer attribute, or a preprocessing step),
registered with Keras so that saved models keep it, and each says which
keras-hub behaviour it corrects, so that it can be dropped when keras-hub
fixes it. Measured against transformers on `tests/fixtures` (see
`tests/test_checkpoints.py`).

- `BertBackbone`: keras-hub always builds the feed-forward layers with the
  tanh-approximate GELU (`bert_backbone.py`, `activation=gelu_approximate`)
  and layer norms with epsilon 1e-12; a checkpoint's `config.json` says
  `hidden_act` ("gelu" is the exact one) and `layer_norm_eps`.
- `BertTokenizer`: keras-hub's converter passes `do_lower_case` only, so
  accents are kept where the reference strips them (`strip_accents` null
  follows `do_lower_case`), control characters split words where the
  reference deletes them, and keras-hub's Unicode case folding maps "ß" to
  "ss" where Python's `str.lower()` keeps it.
- GPT-2's `CausalLMPreprocessor.generate_preprocess` always packs a start
  token, even with `add_start_token=False`; Hugging Face's GPT-2 tokenizer
  adds none (`without_start_token`).
- `Llama3Tokenizer`: keras-hub's in-graph byte-pair tokenizer splits text
  with GPT-2's pattern (` ?\p{N}+`: " 2024" one piece) where Llama 3's
  `tokenizer.json` says `\p{N}{1,3}` and more (" ", "202", "4").
- Llama's converter does not pass `rms_norm_eps` (see
  `tf_softprompt.checkpoints.settings`, which passes it as keras-hub's own
  `layer_norm_epsilon`).

Example:
```python
backbone = BertBackbone(**config, hidden_activation="gelu")
tokenizer = BertTokenizer(vocabulary="vocab.txt", lowercase=True, strip_accents=True)
```
"""

import re

import keras
import keras_hub
import tensorflow as tf
from keras_hub.src.utils.tensor_utils import preprocessing_function

# What `hidden_act` names in transformers' ACT2FN, as Keras activations.
ACTIVATIONS = {
    "gelu": lambda x: keras.activations.gelu(x, approximate=False),
    "gelu_new": lambda x: keras.activations.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: keras.activations.gelu(x, approximate=True),
    "relu": keras.activations.relu,
}


@keras.saving.register_keras_serializable(package="tf_softprompt")
class BertBackbone(keras_hub.models.BertBackbone):
    """keras-hub's `BertBackbone` with the checkpoint's activation and
    layer-norm epsilon.

    Args:
        hidden_activation: a `hidden_act` name of transformers' BERT
            (`"gelu"`, exact, is what most checkpoints say;
            `"gelu_approximate"` is keras-hub's own, the tanh form).
        layer_norm_epsilon: float, every layer norm's epsilon.
        **kwargs: `keras_hub.models.BertBackbone`'s arguments.

    Example:
    ```python
    backbone = BertBackbone(
        vocabulary_size=30522, num_layers=6, num_heads=12, hidden_dim=384,
        intermediate_dim=1536, hidden_activation="gelu",
    )
    ```
    """

    def __init__(
        self,
        *args,
        hidden_activation="gelu_approximate",
        layer_norm_epsilon=1e-12,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if hidden_activation != "gelu_approximate":
            if hidden_activation not in ACTIVATIONS:
                raise ValueError(
                    f"hidden_activation={hidden_activation!r} is not one of "
                    f"{sorted(ACTIVATIONS)} (transformers' names) or "
                    "'gelu_approximate' (keras-hub's)."
                )
            for block in self.transformer_layers:
                block.activation = ACTIVATIONS[hidden_activation]
                block._feedforward_intermediate_dense.activation = ACTIVATIONS[
                    hidden_activation
                ]
        for layer in self._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.LayerNormalization):
                layer.epsilon = float(layer_norm_epsilon)
        self.hidden_activation = hidden_activation
        self.layer_norm_epsilon = float(layer_norm_epsilon)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_activation=self.hidden_activation,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config


@keras.saving.register_keras_serializable(package="tf_softprompt")
class BertTokenizer(keras_hub.models.BertTokenizer):
    """keras-hub's `BertTokenizer` normalising text as transformers' does.

    Before keras-hub splits the text: tab, newline, carriage return and
    every space separator become spaces, and every other control or format
    character (`\\p{C}`, e.g. a zero-width space or NUL) and U+FFFD are
    deleted (transformers' `_clean_text`); then, with `lowercase`, the text
    is lowercased as Python's `str.lower()` does, not case-folded. Accents
    are stripped (NFD, then marks removed) after lowercasing, as the
    reference does.

    Args:
        vocabulary: the WordPiece vocabulary (list or file).
        lowercase: bool, transformers' `do_lower_case`.
        strip_accents: bool, transformers' `strip_accents` (its `None`
            means `do_lower_case`).
        **kwargs: `keras_hub.models.BertTokenizer`'s arguments
            (`split_on_cjk` is transformers' `tokenize_chinese_chars`).

    Example:
    ```python
    tokenizer = BertTokenizer("vocab.txt", lowercase=True, strip_accents=True)
    tokenizer("Amélie")  # the id of "amelie", as transformers gives it
    ```
    """

    def __init__(self, vocabulary=None, lowercase=False, strip_accents=None, **kwargs):
        if strip_accents is None:
            strip_accents = lowercase
        super().__init__(
            vocabulary=vocabulary,
            lowercase=False,
            strip_accents=bool(strip_accents),
            **kwargs,
        )
        self.lowercase_like_transformers = bool(lowercase)

    def tokenize(self, inputs):
        if self._use_tf_workflow():
            inputs = self._normalize_tf(inputs)
        else:
            inputs = self._normalize_python(inputs)
        return super().tokenize(inputs)

    def _normalize_tf(self, inputs):
        if isinstance(inputs, tf.RaggedTensor):
            return tf.ragged.map_flat_values(self._normalize_tf, inputs)
        text = tf.convert_to_tensor(inputs)
        text = tf.strings.regex_replace(text, r"[\t\n\r\p{Zs}]", " ")
        # Deleted before lowercasing: `tf.strings.lower` stops at a NUL.
        text = tf.strings.regex_replace(text, r"[\p{C}\x{FFFD}]", "")
        if self.lowercase_like_transformers:
            text = tf.strings.lower(text, encoding="utf-8")
        return text

    def _normalize_python(self, inputs):
        import unicodedata

        def clean(text):
            if isinstance(text, bytes):
                text = text.decode("utf-8")
            out = []
            for char in text:
                if char in "\t\n\r" or unicodedata.category(char) == "Zs":
                    out.append(" ")
                elif char == "\ufffd" or unicodedata.category(char).startswith("C"):
                    continue
                else:
                    out.append(char)
            text = "".join(out)
            return text.lower() if self.lowercase_like_transformers else text

        def walk(value):
            if isinstance(value, (str, bytes)):
                return clean(value)
            return [walk(item) for item in value]

        if isinstance(inputs, tf.Tensor):
            inputs = inputs.numpy()
        return walk(inputs.tolist() if hasattr(inputs, "tolist") else inputs)

    def get_config(self):
        config = super().get_config()
        config.update(
            lowercase=self.lowercase_like_transformers,
            strip_accents=self.strip_accents,
        )
        return config


# Llama 3's pre-tokenizer pattern (`tokenizer.json`), in RE2, which has no
# lookahead: its `\s+(?!\S)` leaves the last whitespace character before a
# non-space for the next piece, so `llama3_split` first puts a marker there
# (a private-use character, excluded from every class) that ends a
# whitespace run, and drops the marker pieces afterwards. `\s` is Unicode
# whitespace, as in the reference (RE2's `\s` is ASCII only).
_LINE_BREAKS = r"\r\n"
_OTHER_SPACES = r"\t\x0B\f\x{85}\p{Z}"
_SPACES = _LINE_BREAKS + _OTHER_SPACES
_MARK = "\ue000"
_NUL = "\ue001"
LLAMA3_SPLIT = (
    r"\x{E000}"
    r"|(?i:'s|'t|'re|'ve|'m|'ll|'d)"
    r"|[^\r\n\p{L}\p{N}\x{E000}]?\p{L}+"
    r"|\p{N}{1,3}"
    rf"| ?[^{_SPACES}\p{{L}}\p{{N}}\x{{E000}}]+[\r\n]*"
    rf"|[{_SPACES}]*[\r\n]+"
    rf"|[{_SPACES}]+"
)


def llama3_split(inputs, unsplittable_tokens=None):
    """Llama 3's pre-tokenization of a `[B]` string tensor: ragged pieces.

    The in-graph twin of keras-hub's `split_strings_for_bpe` (GPT-2's
    pattern), with the pattern of Llama 3's `tokenizer.json`; special tokens
    stay whole, as keras-hub keeps them.
    """
    import tensorflow_text as tf_text
    from keras_hub.src.tokenizers.byte_pair_tokenizer import (
        create_alts_for_unsplittable_tokens,
        remove_strings_from_inputs,
    )

    # tensorflow-text's regex_split stops at a NUL; a private-use stand-in
    # (like NUL, neither a letter, a number nor a space) goes through.
    inputs = tf.strings.regex_replace(inputs, "\x00", _NUL)
    # A whitespace character other than a line break, before a non-space.
    inputs = tf.strings.regex_replace(
        inputs, rf"([{_OTHER_SPACES}])([^{_SPACES}])", _MARK + r"\1\2"
    )
    alts = []
    if unsplittable_tokens:
        alts = create_alts_for_unsplittable_tokens(unsplittable_tokens)
        for token, alt in zip(unsplittable_tokens, alts):
            escaped = re.escape(token)
            inputs = tf_text.regex_split(inputs, escaped, escaped)
            inputs = tf.strings.regex_replace(inputs, escaped, alt)
    pieces = tf_text.regex_split(inputs, LLAMA3_SPLIT, LLAMA3_SPLIT)
    for token, alt in zip(unsplittable_tokens or (), alts):
        pieces = tf.strings.regex_replace(pieces, re.escape(alt), token)
    while pieces.shape.rank > 2:
        pieces = pieces.merge_dims(1, 2)
    pieces = tf.strings.regex_replace(pieces, _NUL, "\x00")
    return remove_strings_from_inputs(pieces, _MARK)


@keras.saving.register_keras_serializable(package="tf_softprompt")
class Llama3Tokenizer(keras_hub.models.Llama3Tokenizer):
    """keras-hub's `Llama3Tokenizer` splitting text as Llama 3's
    `tokenizer.json` does (`llama3_split`), in-graph.

    keras-hub 0.32 splits with GPT-2's pattern on its TensorFlow path (the
    one traced into a SavedModel), and eagerly runs the `tokenizers`
    library, which gave other ids than transformers on numbers here. This
    class always takes the TensorFlow path, whose `_tokenize_tf` below is
    keras-hub 0.32's `BytePairTokenizer._tokenize_tf` with the split
    replaced.

    Example:
    ```python
    tokenizer = loader.load_tokenizer(Llama3Tokenizer)  # from tokenizer.json
    tokenizer(" 2024")  # the pieces " ", "202", "4", as transformers splits
    ```
    """

    def _use_tf_workflow(self):
        return True

    @preprocessing_function
    def _tokenize_tf(self, inputs):
        self._maybe_initialized_tf()
        if self.add_prefix_space:
            inputs = tf.strings.join([" ", inputs])
        inputs = tf.convert_to_tensor(inputs)
        unbatched = inputs.shape.rank == 0
        if unbatched:
            inputs = tf.expand_dims(inputs, 0)
        raw_tokens = llama3_split(inputs, self.unsplittable_tokens)
        token_row_splits = raw_tokens.row_splits
        flat_tokens = raw_tokens.flat_values
        cache_lookup = self.cache.lookup(flat_tokens)
        cache_mask = cache_lookup == ""
        has_unseen_words = tf.math.reduce_any(cache_mask & (flat_tokens != ""))

        def process_unseen_tokens():
            unseen_tokens = tf.boolean_mask(flat_tokens, cache_mask)
            self._bpe_merge_and_update_cache_tf(unseen_tokens)
            return self.cache.lookup(flat_tokens)

        tokenized_words = tf.cond(
            has_unseen_words, process_unseen_tokens, lambda: cache_lookup
        )
        tokens = tf.strings.split(tokenized_words, sep=" ")
        if self.compute_dtype != tf.string:
            tokens = self.token_to_id_map.lookup(tokens)
        tokens = tf.RaggedTensor.from_row_splits(
            tokens.flat_values, tf.gather(tokens.row_splits, token_row_splits)
        )
        if self.sequence_length:
            output_shape = tokens.shape.as_list()
            output_shape[-1] = self.sequence_length
            tokens = tokens.to_tensor(shape=output_shape)
        if unbatched:
            tokens = tf.squeeze(tokens, 0)
            tf.ensure_shape(tokens, shape=[self.sequence_length])
        return tokens


def without_start_token(preprocessor):
    """Make a `CausalLMPreprocessor` add no start token, for generation too.

    keras-hub's `generate_preprocess` ignores `add_start_token` and packs
    with the packer's `start_value`; Hugging Face's GPT-2 tokenizer adds no
    start token, so the packer loses it as well.
    """
    preprocessor.add_start_token = False
    if not preprocessor.built:
        preprocessor.build(None)
    preprocessor.packer.start_value = None
    return preprocessor


__all__ = [
    "ACTIVATIONS",
    "BertBackbone",
    "BertTokenizer",
    "Llama3Tokenizer",
    "llama3_split",
    "without_start_token",
]
