"""Keras 2 (`tf_keras`) soft-prompt layers.

The same layers, names and behaviour as `tf_softprompt.layers`, for tf-keras
models (what `tf.keras` resolves to under `TF_USE_LEGACY_KERAS=1`). See
`tf_softprompt.layers.PromptEmbedding`, `PromptPrepend` and
`PrefixAttention` for the full documentation; the math is shared in `tf_softprompt.ops`.

Example:
```python
import tf_keras
from tf_softprompt import keras2

ids = tf_keras.Input((None,), dtype="int32")
x = tf_keras.layers.Embedding(1000, 32, mask_zero=True)(ids)
x = keras2.PromptPrepend(4)(x)
x = tf_keras.layers.LSTM(16)(x)
model = tf_keras.Model(ids, tf_keras.layers.Dense(2)(x))
```
"""

import tf_keras

from tf_softprompt.layer_mixins import PromptEmbeddingMixin, PromptPrependMixin
from tf_softprompt.prefix_attention_mixin import PrefixAttentionMixin


@tf_keras.utils.register_keras_serializable(package="tf_softprompt")
class PromptEmbedding(PromptEmbeddingMixin, tf_keras.layers.Layer):
    """Keras 2 twin of `tf_softprompt.layers.PromptEmbedding`.

    Args:
        num_prompt_tokens: int, P.
        embedding: an existing `tf_keras.layers.Embedding` to wrap (shared and
            frozen), or `None` to make one from `input_dim` and `output_dim`.
        input_dim: int, V. output_dim: int, H.
        prompt_initializer: `"uniform"` (U(-0.5, 0.5)), a
            `tf_softprompt.initializers` initialiser, a tf-keras initializer,
            or such a config; saved with its arguments.
        mask_zero: bool, as in `Embedding`; virtual tokens are never masked.
        validate_ids: bool, assert the id range at run time.

    Call arguments:
        inputs: int tensor `(batch_size, sequence_length)`.
        reverse: bool; logits `(..., V)` over the real vocabulary only.

    Example:
    ```python
    layer = keras2.PromptEmbedding.from_matrix(vocabulary, 20)
    ```
    """

    _embedding_class = tf_keras.layers.Embedding
    _serialize = staticmethod(tf_keras.layers.serialize)
    _deserialize = staticmethod(tf_keras.layers.deserialize)


@tf_keras.utils.register_keras_serializable(package="tf_softprompt")
class PromptPrepend(PromptPrependMixin, tf_keras.layers.Layer):
    """Keras 2 twin of `tf_softprompt.layers.PromptPrepend`.

    Args:
        num_prompt_tokens: int, P.
        offset: int, 0 = first, 1 = after [CLS]/BOS.
        prompt_initializer: `"uniform"` (U(-0.5, 0.5)), a
            `tf_softprompt.initializers` initialiser or a tf-keras
            initializer; a vocabulary-based one cannot be saved (see
            `tf_softprompt.layers.PromptPrepend`).

    Call arguments:
        inputs: float tensor `(batch_size, sequence_length, hidden_dim)`.
        mask: optional bool tensor `(batch_size, sequence_length)`.

    Example:
    ```python
    x = keras2.PromptPrepend(4, offset=1)(embedded)
    ```
    """


@tf_keras.utils.register_keras_serializable(package="tf_softprompt")
class PrefixAttention(PrefixAttentionMixin, tf_keras.layers.Layer):
    """Keras 2 twin of `tf_softprompt.layers.PrefixAttention`.

    Args:
        num_prompt_tokens: int, P.
        attention: a `tf_keras.layers.MultiHeadAttention` to wrap (shared
            and frozen), with `value_dim == key_dim` and the default
            `attention_axes`.
        prefix_initializer: `"uniform"` (U(-0.5, 0.5)), a non-vocabulary
            `tf_softprompt.initializers` initialiser (e.g. `from_array` of
            `[2, P, num_heads, key_dim]` values), a tf-keras initializer, or
            such a config; saved with its arguments.

    Call arguments:
        query: `(batch_size, target_length, dim)`.
        value: `(batch_size, source_length, dim)`.
        key: optional, default `value`.
        **kwargs: passed to the attention (`attention_mask`,
            `return_attention_scores`, `training`, `use_causal_mask`); the
            query's and value's Keras masks are read off the inputs, as
            `tf_keras.layers.MultiHeadAttention` does.

    Example:
    ```python
    attention = tf_keras.layers.MultiHeadAttention(4, 16)
    x = tf_keras.Input((None, 64))
    y = keras2.PrefixAttention(10, attention)(x, x, use_causal_mask=True)
    ```
    """

    _attention_class = tf_keras.layers.MultiHeadAttention
    _serialize = staticmethod(tf_keras.layers.serialize)
    _deserialize = staticmethod(tf_keras.layers.deserialize)
