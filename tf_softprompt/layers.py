"""Keras 3 soft-prompt layers (`keras`, as keras-hub uses it).

Thin shells over `tf_softprompt.layer_mixins` and `tf_softprompt.ops`; the
Keras 2 twins with the same names and behaviour are in
`tf_softprompt.keras2`.
"""

import keras
from keras.src.backend import compute_output_spec

from tf_softprompt.layer_mixins import PromptEmbeddingMixin, PromptPrependMixin
from tf_softprompt.prefix_attention_mixin import PrefixAttentionMixin


@keras.saving.register_keras_serializable(package="tf_softprompt")
class PromptMask(keras.Operation):
    """The mask of a prompt layer, as a Keras 3 operation.

    Keras 3 builds functional models from symbolic `KerasTensor`s, which
    TensorFlow ops reject, and records a mask as a node of the graph that
    must be serialisable. This operation names the layer's mask rule by its
    config and runs the layer mixin's TensorFlow `compute_mask`, so the mask
    math stays in one place.

    Args:
        layer_config: the config of the `PromptEmbedding` or `PromptPrepend`
            whose mask this is.
        layer_class: `"PromptEmbedding"` or `"PromptPrepend"`.
    """

    def __init__(self, layer_class, layer_config, name=None):
        super().__init__(name=name)
        self.layer_class = layer_class
        self.layer_config = layer_config
        mixin = {
            "PromptEmbedding": PromptEmbeddingMixin,
            "PromptPrepend": PromptPrependMixin,
        }[layer_class]
        self._rule = _MaskRule(mixin, layer_config)

    def call(self, inputs, mask=None):
        return self._rule.compute_mask(inputs, mask)

    def compute_output_spec(self, inputs, mask=None):
        return compute_output_spec(self._rule.compute_mask, inputs, mask)

    def get_config(self):
        return {
            "layer_class": self.layer_class,
            "layer_config": self.layer_config,
            "name": self.name,
        }


class _MaskRule:
    """Just enough of a layer for its mixin's `compute_mask` to run."""

    def __init__(self, mixin, config):
        self._compute_mask = mixin.compute_mask
        self.num_prompt_tokens = config.get("num_prompt_tokens")
        self.offset = config.get("offset", 0)
        self.mask_zero = config.get("mask_zero", False)

    def compute_mask(self, inputs, mask=None):
        return self._compute_mask(self, inputs, mask)


class _SymbolicMaskMixin:
    """Route `compute_mask` through `PromptMask` on symbolic inputs."""

    def compute_mask(self, inputs, mask=None):
        if any(isinstance(x, keras.KerasTensor) for x in (inputs, mask)):
            config = {
                "num_prompt_tokens": self.num_prompt_tokens,
                "offset": self.offset,
                "mask_zero": self.mask_zero,
            }
            return PromptMask(type(self).__name__, config)(inputs, mask)
        return super().compute_mask(inputs, mask)


@keras.saving.register_keras_serializable(package="tf_softprompt")
class PromptEmbedding(_SymbolicMaskMixin, PromptEmbeddingMixin, keras.layers.Layer):
    """An embedding with P trainable virtual tokens after V frozen ids.

    Ids in `[0, V)` look up the frozen vocabulary matrix (through
    `tf.stop_gradient`); ids in `[V, V + P)` look up a trainable `[P, H]`
    prompt table. The vocabulary lives in a frozen `Embedding` sublayer and
    is never a trainable variable, so no optimizer, weight decay or EMA
    touches it, and the gradient is a dense `[P, H]` tensor. It stays frozen
    when the layer or its model is set `trainable = True` again.

    Ids outside `[0, V + P)` raise `InvalidArgumentError` on every device
    (the range is asserted; `tf.gather` alone returns zeros on GPU). Under
    `jit_compile=True` XLA drops assertions: such ids then give NaN rows, so
    check ids in the `tf.data` pipeline with
    `tf_softprompt.ops.validate_token_ids`.

    Args:
        num_prompt_tokens: int, P, the number of virtual prompt tokens.
        embedding: an existing `keras.layers.Embedding` or keras-hub
            `ReversibleEmbedding` to wrap (shared, not copied; it is frozen).
            If `None`, a new frozen `Embedding(input_dim, output_dim)` is made.
        input_dim: int, V; only when `embedding` is `None`.
        output_dim: int, H; only when `embedding` is `None`.
        prompt_initializer: `"uniform"` (U(-0.5, 0.5), not Keras'
            U(-0.05, 0.05)), an initialiser from `tf_softprompt.initializers`
            (its config keeps its arguments; a vocabulary-based one reads
            this layer's vocabulary when rebuilt), a Keras initializer, or
            such a config. `get_config` raises for any other callable.
        mask_zero: bool, as in `keras.layers.Embedding`; defaults to the
            wrapped layer's. Virtual tokens are never masked.
        validate_ids: bool, assert the id range at run time (default True).
        **kwargs: passed to `keras.layers.Layer` (`name`, `dtype`, ...).

    Call arguments:
        inputs: int tensor `(batch_size, sequence_length)`.
        reverse: bool. If True, `inputs` are hidden states `(..., H)` and the
            output is logits `(..., V)` over the real vocabulary only.

    Example:
    ```python
    layer = tf_softprompt.PromptEmbedding.from_matrix(vocabulary, 20)
    ids = np.concatenate([np.arange(V, V + 20)[None], token_ids], axis=1)
    embedded = layer(ids)  # (1, 20 + T, H)
    ```

    Reference:
     - [Lester et al., 2021](https://arxiv.org/abs/2104.08691)
    """

    _embedding_class = keras.layers.Embedding
    _serialize = staticmethod(keras.saving.serialize_keras_object)
    _deserialize = staticmethod(keras.saving.deserialize_keras_object)


@keras.saving.register_keras_serializable(package="tf_softprompt")
class PromptPrepend(_SymbolicMaskMixin, PromptPrependMixin, keras.layers.Layer):
    """Insert P trainable vectors into an embedded sequence at `offset`.

    `(B, T, H)` becomes `(B, P + T, H)`. `compute_mask` inserts P `True`s into
    the incoming mask at the same offset; no incoming mask gives none.

    Wire it **before** the position-embedding sum to give the prompt vectors
    positions (the sequence the position layer sees is P + T long), or
    **after** it to give them none. Companion tensors (padding mask, segment
    ids, labels, sample weights) are extended with `layer.extend(x, fill)` or
    `tf_softprompt.extend_sequence`.

    Args:
        num_prompt_tokens: int, P.
        offset: int, 0 puts the prompt first, 1 after [CLS]/BOS.
        prompt_initializer: `"uniform"` (U(-0.5, 0.5)), an initialiser from
            `tf_softprompt.initializers` or a Keras initializer (or such a
            config). The layer holds no vocabulary, so `get_config` (and
            saving) raises for `from_sample_of_embeddings`, `from_token_ids`
            and `from_label_words`, naming the fix: pass
            `from_array(init((P, H)))`, the same values.
        **kwargs: passed to `keras.layers.Layer`.

    Call arguments:
        inputs: float tensor `(batch_size, sequence_length, hidden_dim)`.
        mask: optional bool tensor `(batch_size, sequence_length)`.

    Example:
    ```python
    x = keras.layers.Embedding(1000, 64, mask_zero=True)(token_ids)
    x = tf_softprompt.PromptPrepend(8)(x)  # mask is now (B, 8 + T)
    x = keras.layers.LSTM(32)(x)
    ```

    Reference:
     - [Li and Liang, 2021](https://arxiv.org/abs/2101.00190)
    """


@keras.saving.register_keras_serializable(package="tf_softprompt")
class PrefixAttention(PrefixAttentionMixin, keras.layers.Layer):
    """P trainable keys and values in front of a frozen `MultiHeadAttention`.

    Prefix tuning (form 3) for a plain Keras model: every query of the
    wrapped attention also attends to P learned key/value pairs, which are
    prepended to its projected keys and values. The attention is shared,
    not copied, and frozen; it stays frozen when the layer or its model is
    set `trainable = True` again. The only trainable weight is the float32
    `prefix`, `[2, P, num_heads, key_dim]` (index 0 keys, 1 values):
    `2 * P * num_heads * key_dim` parameters. The output has the shape of
    the wrapped attention's.

    The attention's `_compute_attention` is patched for the duration of each
    call only, so the same attention called elsewhere in the model (or
    directly) stays unprefixed. Masks work as in `MultiHeadAttention`
    (`attention_mask`, `use_causal_mask=True`, the query's and value's Keras
    masks) over the real keys; the prefix is visible to every query (also
    to masked query positions, whose outputs are meaningless either way).
    It needs `value_dim == key_dim` and the default `attention_axes` (inputs
    `(batch_size, sequence_length, dim)`).

    Args:
        num_prompt_tokens: int, P, the number of prefix key/value pairs.
        attention: a `keras.layers.MultiHeadAttention` (or a subclass that
            keeps its `_compute_attention` contract) to wrap; frozen.
        prefix_initializer: `"uniform"` (U(-0.5, 0.5)), an initialiser from
            `tf_softprompt.initializers` (e.g. `from_array(values)` with
            `[2, P, num_heads, key_dim]` values; vocabulary-based ones are
            refused), a Keras initializer, or such a config. Saved with its
            arguments.
        **kwargs: passed to `keras.layers.Layer` (`name`, `dtype`, ...).

    Call arguments:
        query: `(batch_size, target_length, dim)`.
        value: `(batch_size, source_length, dim)`.
        key: optional `(batch_size, source_length, dim)`; default `value`.
        **kwargs: passed to the attention: `attention_mask`
            `(batch_size, target_length, source_length)`,
            `return_attention_scores` (scores then cover P + source_length
            keys, the prefix first), `training`, `use_causal_mask`,
            `query_mask`, `value_mask`, `key_mask`.

    Example:
    ```python
    attention = keras.layers.MultiHeadAttention(num_heads=4, key_dim=16)
    prefixed = tf_softprompt.PrefixAttention(10, attention)
    x = keras.Input((None, 64))
    model = keras.Model(x, prefixed(x, x, use_causal_mask=True))
    # Trainable: the [2, 10, 4, 16] prefix, 1,280 numbers.
    prefixed.save_prompt("task.prompt.npz", task="task")
    ```

    Reference:
     - [Li and Liang, 2021](https://arxiv.org/abs/2101.00190)
    """

    _attention_class = keras.layers.MultiHeadAttention
    _serialize = staticmethod(keras.saving.serialize_keras_object)
    _deserialize = staticmethod(keras.saving.deserialize_keras_object)
