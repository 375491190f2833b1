"""The prefix layer's behaviour, shared by the Keras 3 and Keras 2 shells.

`PrefixAttentionMixin` holds everything `tf_softprompt.layers.
PrefixAttention` and `tf_softprompt.keras2.PrefixAttention` have in common:
argument checks, the prefix weight, `call` (the wrapped attention runs
with the prefix in front of its keys and values, through the same
`methods.prefix` computation the keras-hub hooks use), `get_config` and the
prompt artifact methods.
"""

import copy

import tensorflow as tf

from tf_softprompt import artifact, initializers, methods, ops
from tf_softprompt.layer_mixins import FrozenSublayerMixin, initializer_config
from tf_softprompt.patching import patched
from tf_softprompt.validation import check_num_prompt_tokens


def _attention_weight_name(variable):
    """A weight's name relative to its attention layer, e.g. `"query/kernel"`.

    Keras 3 paths and tf-keras names carry the scopes the weight was built
    in (`"outer/multi_head_attention/query/kernel"` when first called inside
    another layer, `"multi_head_attention/query/kernel"` when rebuilt from a
    saved model), so the full name would change a fingerprint on reload.
    Every `MultiHeadAttention` weight lives in a projection sublayer:
    `<sublayer>/<weight>` is stable, and the same in both flavours.
    """
    name = getattr(variable, "path", None) or variable.name
    return "/".join(name.split(":")[0].split("/")[-2:])


class PrefixAttentionMixin(FrozenSublayerMixin):
    """Form 3 for a plain Keras model: a prefix in one `MultiHeadAttention`.

    Shells set `_attention_class`, `_serialize` and `_deserialize`.
    """

    method = "prefix"
    _frozen_sublayer = "attention"

    def __init__(
        self, num_prompt_tokens, attention, prefix_initializer="uniform", **kwargs
    ):
        super().__init__(**kwargs)
        self.num_prompt_tokens = check_num_prompt_tokens(num_prompt_tokens)
        if isinstance(attention, dict):
            # tf-keras' `MultiHeadAttention.from_config` pops keys from the
            # config it is given: keep the caller's intact.
            attention = self._deserialize(copy.deepcopy(attention))
        if not isinstance(attention, self._attention_class):
            raise ValueError(
                f"`attention` must be a `{self._attention_class.__module__}."
                f"{self._attention_class.__name__}` layer (this flavour's "
                f"MultiHeadAttention). Received: {type(attention).__name__} "
                f"{attention!r}."
            )
        # tf-keras' MultiHeadAttention has no public `key_dim`/`value_dim`;
        # both flavours keep these private attributes.
        num_heads, key_dim = int(attention._num_heads), int(attention._key_dim)
        value_dim = int(attention._value_dim)
        if value_dim != key_dim:
            raise ValueError(
                "PrefixAttention needs equal key and value sizes: the prefix "
                "holds keys and values in one [2, P, num_heads, key_dim] weight. "
                f"Received: {attention.name} with key_dim={key_dim}, "
                f"value_dim={value_dim}. Build the attention with "
                "value_dim=None (or equal to key_dim)."
            )
        axes = attention._attention_axes
        if isinstance(axes, int):
            axes = (axes,)
        if axes is not None and tuple(axes) != (1,):
            raise ValueError(
                "PrefixAttention supports attention over the sequence axis only "
                "(inputs of shape (batch_size, sequence_length, dim)). Received: "
                f"{attention.name} with attention_axes={attention._attention_axes}. "
                "Build the attention with attention_axes=None."
            )
        self.attention = self._freeze(attention)
        self.num_heads = num_heads
        self.key_dim = key_dim
        if isinstance(prefix_initializer, methods.prefix.KeyValueInitializer):
            raise ValueError(
                f"The prefix initializer {prefix_initializer.description} runs a "
                "keras-hub model to read its keys and values; it works with "
                "`tf_softprompt.hub.enable_prompt_tuning` only. Pass "
                "`prefix_initializer=tf_softprompt.initializers.from_array(values)` "
                "with the [2, num_prompt_tokens, num_heads, key_dim] keys and values "
                "instead."
            )
        self.prefix_initializer = initializers.get(prefix_initializer)
        if getattr(self.prefix_initializer, "needs_vocabulary", False):
            raise ValueError(
                f"The prefix initializer {self.prefix_initializer.description} "
                "reads a [V, H] vocabulary, but a prefix is "
                "[2, num_prompt_tokens, num_heads, key_dim] keys and values. Pass "
                "`prefix_initializer=tf_softprompt.initializers.from_array(values)` "
                "or 'uniform'."
            )
        self.supports_masking = True

    @property
    def prefix_shape(self):
        """`(2, P, num_heads, key_dim)`: index 0 keys, 1 values."""
        return (2, self.num_prompt_tokens, self.num_heads, self.key_dim)

    def build(self, query_shape=None, value_shape=None, key_shape=None):
        if not self.attention.built and value_shape is not None:
            self.attention.build(query_shape, value_shape, key_shape)
            # Keras 3 makes the projection sublayers inside `build`, trainable
            # whatever the attention's flag was: freeze them now.
            self._freeze(self.attention)
        self.prefix = self.add_weight(
            name="prefix",
            shape=self.prefix_shape,
            initializer=self.prefix_initializer,
            dtype="float32",
            trainable=True,
        )
        self.built = True

    def call(self, query, value, key=None, **kwargs):
        for name, tensor in (("query", query), ("value", value), ("key", key)):
            if tensor is not None and tf.TensorShape(tensor.shape).rank != 3:
                raise ValueError(
                    f"PrefixAttention expects a rank-3 `{name}` (batch_size, "
                    f"sequence_length, dim). Received: shape={tensor.shape}."
                )
        # tf-keras hands `mask` (the query's Keras mask) to a call that takes
        # **kwargs; the attention reads the Keras masks off its inputs.
        kwargs.pop("mask", None)
        attention = self.attention
        method = methods.get(self.method)
        prefix = self.prefix[None]  # one layer: [1, 2, P, heads, key_dim]
        rows, prefix_mask = self.prefix_rows(query)

        def prefixed(key, value, mask, query_length):
            return method.attention_inputs(
                prefix,
                0,
                key,
                value,
                mask,
                rows=rows,
                prefix_mask=prefix_mask,
                query_length=query_length,
            )

        compute = attention._compute_attention

        def compute_attention(query, key, value, attention_mask=None, *a, **kw):
            return methods.prefix.compute_attention_with(
                compute, prefixed, query, key, value, attention_mask, *a, **kw
            )

        # Only for this call: the same attention may also run unprefixed
        # elsewhere in the model.
        was_built = attention.built
        with patched(attention, "_compute_attention", compute_attention):
            outputs = attention(query, value, key=key, **kwargs)
        if not was_built:  # built by this call: see `build`
            self._freeze(attention)
        return outputs

    def prefix_rows(self, query):
        """The prefix rows this call reads, per example: `(rows [B, W],
        mask [B, W])`, or `(None, None)` for all P rows (the default; the
        exporter's multi-task layer picks each example's task rows)."""
        return None, None

    # Artifact ---------------------------------------------------------------

    def _check_built_for_artifact(self, action):
        if not self.built or not self.attention.built:
            raise ValueError(
                f"Layer {self.name} is not built yet. Call it on inputs before "
                f"`{action}()`."
            )

    def dims_metadata(self):
        """The dims a prefix artifact records and a loader checks."""
        dims = methods.ModelDims(
            vocab_size=0,
            hidden_dim=int(self.attention._query_dense.kernel.shape[0]),
            attention=(methods.AttentionDims(self.num_heads, self.key_dim),),
        )
        metadata = methods.get(self.method).shape_metadata(dims)
        # A MultiHeadAttention has no vocabulary; the fingerprint covers its
        # weights instead.
        metadata.pop("vocab_size")
        return metadata

    @property
    def base_fingerprint(self):
        """`sha256:...` of the wrapped attention's weights (its base)."""
        return artifact.weights_fingerprint(
            [(_attention_weight_name(w), w.numpy()) for w in self.attention.weights]
        )

    def save_prompt(self, path, *, task="default", **extra):
        """Write the prefix artifact (`.npz`, method `"prefix"`).

        The file holds the prefix as `[1, 2, P, num_heads, key_dim]` (one
        self-attention layer) and the fingerprint of the wrapped attention's
        weights (`base_fingerprint`).

        Args:
            path: destination, ending in `.npz`.
            task: str, the task's name.
            **extra: more JSON-serialisable metadata.

        Returns:
            The metadata dict.
        """
        self._check_built_for_artifact("save_prompt")
        method = methods.get(self.method)
        return artifact.save_artifact(
            path,
            self.prefix.numpy()[None],
            method=method.name,
            dims_metadata=self.dims_metadata(),
            fingerprint_key=method.fingerprint_key,
            fingerprint=self.base_fingerprint,
            num_prompt_tokens=self.num_prompt_tokens,
            initializer=initializers.describe(self.prefix_initializer),
            task=task,
            **extra,
        )

    def load_prompt(self, path):
        """Load a prefix artifact into this (built) layer; it stays trainable.

        Returns:
            The metadata dict.

        Raises:
            ValueError: if the method, P, the attention's dims or the
                fingerprint of its weights differ (naming both), or the file
                is corrupt or holds NaN/Inf.
        """
        self._check_built_for_artifact("load_prompt")
        method = methods.get(self.method)
        loaded = artifact.load_artifact(path)
        artifact.check_artifact(
            loaded,
            method.name,
            self.dims_metadata(),
            method.fingerprint_key,
            self.base_fingerprint,
        )
        ops.check_prompt_shape(loaded.values, (1, *self.prefix_shape), what="prefix")
        self.prefix.assign(loaded.values[0])
        return loaded.metadata

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_prompt_tokens": self.num_prompt_tokens,
                "attention": self._serialize(self.attention),
                "prefix_initializer": initializer_config(
                    self, False, "prefix_initializer"
                ),
            }
        )
        return config
