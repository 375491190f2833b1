"""Layer behaviour shared by the Keras 3 and the Keras 2 shells.

The mixins here hold everything the two flavours have in common: argument
checks, weight creation, `call`, `compute_mask`, `get_config` and the prompt
artifact methods, all over `tf_softprompt.ops`. A shell
(`tf_softprompt.layers` for Keras 3, `tf_softprompt.keras2` for Keras 2)
only names its base `Layer` class, its `Embedding` and `MultiHeadAttention`
classes and its (de)serialisation functions. `FrozenSublayerMixin` keeps a
wrapped sublayer (the vocabulary embedding, the attention) frozen for both
kinds of wrapper.
"""

import copy

import tensorflow as tf

from tf_softprompt import artifact, initializers, methods, ops
from tf_softprompt.patching import patched
from tf_softprompt.validation import check_num_prompt_tokens, check_offset


def _base_property(obj, owner, name):
    """The property `name` as defined after `owner` in `obj`'s MRO."""
    mro = type(obj).__mro__
    for klass in mro[mro.index(owner) + 1 :]:
        if name in klass.__dict__:
            return klass.__dict__[name]
    raise AttributeError(name)


def _without(variables, excluded):
    excluded = {id(v) for v in excluded}
    return [v for v in variables if id(v) not in excluded]


def _with(variables, added):
    variables = list(variables)
    return variables + _without(added, variables)


def _initializer_config(layer, vocabulary_available, attribute="prompt_initializer"):
    """`layer.<attribute>` (an initialiser) as a config, or a clear error on save.

    The config keeps the initialiser's arguments, so a re-created layer
    builds the same starting prompt (see `tf_softprompt.initializers`).
    """
    try:
        return initializers.serialize(
            getattr(layer, attribute), vocabulary_available=vocabulary_available
        )
    except ValueError as error:
        raise ValueError(
            f"Layer {layer.name!r} cannot save its `{attribute}`. {error}"
        ) from error


class FrozenSublayerMixin:
    """A layer around a frozen sublayer that must stay frozen.

    The sublayer (`PromptEmbedding`'s vocabulary embedding,
    `PrefixAttention`'s attention) is named by `_frozen_sublayer`, the
    attribute holding it. It is frozen with `sublayer.trainable = False`
    (never its variables: tf-keras variables cannot change `trainable` after
    creation) and stays frozen whatever happens to `trainable` later. Both
    Keras flavours set `trainable` recursively, so `model.trainable = True`
    (e.g. unfreezing after a frozen phase) would switch the sublayer back
    on. Keras 3 decides per variable (`variable.trainable`), so the setter
    re-freezes the sublayer; tf-keras sets `_trainable` on every nested layer
    directly, so the weight lists also leave the sublayer's weights out.
    """

    _frozen_sublayer = None

    def _freeze(self, sublayer):
        # Through the setter itself: TF's attribute tracking skips
        # `sublayer.trainable = False` when the flag already is False, but
        # Keras 3 sublayers built since then (a MultiHeadAttention's
        # projections) are trainable.
        type(sublayer).trainable.fset(sublayer, False)
        return sublayer

    @property
    def trainable(self):
        return _base_property(self, FrozenSublayerMixin, "trainable").fget(self)

    @trainable.setter
    def trainable(self, value):
        _base_property(self, FrozenSublayerMixin, "trainable").fset(self, value)
        sublayer = self.__dict__.get(self._frozen_sublayer)
        if sublayer is not None:
            self._freeze(sublayer)

    def _frozen_weights(self):
        sublayer = self.__dict__.get(self._frozen_sublayer)
        return [] if sublayer is None else list(sublayer.weights)

    @property
    def trainable_weights(self):
        return _without(super().trainable_weights, self._frozen_weights())

    @property
    def trainable_variables(self):
        return _without(super().trainable_variables, self._frozen_weights())

    @property
    def non_trainable_weights(self):
        return _with(super().non_trainable_weights, self._frozen_weights())

    @property
    def non_trainable_variables(self):
        return _with(super().non_trainable_variables, self._frozen_weights())


class PromptWeightsMixin:
    """The prompt table and its artifact methods (both layer kinds)."""

    def _add_prompt_weight(self, hidden_dim):
        self.prompt = self.add_weight(
            name="prompt",
            shape=(self.num_prompt_tokens, hidden_dim),
            initializer=self.prompt_initializer,
            dtype="float32",
            trainable=True,
        )

    def _prompt_metadata(self):
        return {"method": self.method, "offset": self.offset}

    def save_prompt(self, path, vocabulary=None, *, task="default", **extra):
        """Write the prompt artifact (`.npz`, see `tf_softprompt.artifact`).

        Args:
            path: destination, ending in `.npz`.
            vocabulary: the frozen `[V, H]` matrix, for V and the fingerprint.
                `PromptEmbedding` knows its own; `PromptPrepend` needs it.
            task: str, the task's name.
            **extra: more metadata. `PromptEmbedding` does not know where
                its virtual ids sit, so pass `offset=` here (default 0);
                `PromptPrepend` records its own.

        Returns:
            The metadata dict.
        """
        vocabulary = self._vocabulary_for_artifact(vocabulary)
        return artifact.save_prompt(
            path,
            self.prompt,
            vocabulary,
            initializer=initializers.describe(self.prompt_initializer),
            task=task,
            **{**self._prompt_metadata(), **extra},
        )

    def load_prompt(self, path, vocabulary=None):
        """Load a prompt artifact into this (built) layer; it stays trainable.

        Raises:
            ValueError: if P, H, V, the vocabulary fingerprint, the method or
                the offset differ, or the file is corrupt or holds NaN/Inf.
        """
        if not self.built:
            raise ValueError(
                f"Layer {self.name} is not built yet. Call it on an input (or "
                "`build()` it) before `load_prompt()`."
            )
        vocabulary = self._vocabulary_for_artifact(vocabulary)
        values, metadata = artifact.load_prompt(path, vocabulary)
        ops.check_prompt_shape(values, self.prompt.shape)
        # A prompt trained at another position or through the other form
        # would load without complaint and then be silently wrong.
        for key, expected in self._prompt_metadata().items():
            if key in metadata and metadata[key] != expected:
                raise ValueError(
                    f"The prompt in {path!r} was trained with {key}="
                    f"{metadata[key]!r}, but layer {self.name} has {key}="
                    f"{expected!r}. Build the layer with {key}="
                    f"{metadata[key]!r} to use this prompt."
                )
        self.prompt.assign(values)
        return metadata

    def _vocabulary_for_artifact(self, vocabulary):
        if vocabulary is None:
            raise ValueError(
                f"Layer {self.name} needs the base model's `vocabulary` "
                "([V, H] embedding matrix) to fingerprint the prompt. Pass "
                "`vocabulary=token_embedding.embeddings`."
            )
        return vocabulary


class PromptEmbeddingMixin(FrozenSublayerMixin, PromptWeightsMixin):
    """Form 1: an embedding with P trainable virtual tokens after V frozen ids.

    Shells set `_embedding_class`, `_serialize` and `_deserialize`.
    """

    method = "embedding"
    offset = 0
    _frozen_sublayer = "embedding"

    def _prompt_metadata(self):
        # Where the virtual ids sit is the caller's choice, not the layer's.
        return {"method": self.method}

    def __init__(
        self,
        num_prompt_tokens,
        embedding=None,
        input_dim=None,
        output_dim=None,
        prompt_initializer="uniform",
        mask_zero=None,
        validate_ids=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_prompt_tokens = check_num_prompt_tokens(num_prompt_tokens)
        if isinstance(embedding, dict):
            embedding = self._deserialize(embedding)
        if embedding is None:
            if input_dim is None or output_dim is None:
                raise ValueError(
                    "Pass either `embedding` (an existing Embedding layer) or "
                    "both `input_dim` (V) and `output_dim` (H). Received: "
                    f"input_dim={input_dim}, output_dim={output_dim}."
                )
            embedding = self._embedding_class(
                input_dim, output_dim, name="vocabulary_embedding"
            )
        self.embedding = self._freeze(embedding)
        self.input_dim = int(embedding.input_dim)
        self.output_dim = int(embedding.output_dim)
        if mask_zero is None:
            mask_zero = bool(getattr(embedding, "mask_zero", False))
        self.mask_zero = mask_zero
        self.validate_ids = validate_ids
        # A config of a vocabulary-based initialiser (from `from_config`)
        # reads this layer's own matrix when the prompt is built.
        self.prompt_initializer = initializers.get(
            prompt_initializer, vocabulary=self._read_vocabulary
        )

    def _read_vocabulary(self):
        return self.embedding.embeddings

    @classmethod
    def from_matrix(cls, matrix, num_prompt_tokens, mask_zero=False, **kwargs):
        """Build around a `[V, H]` array, copied once into a frozen layer.

        Args:
            matrix: `[V, H]` array or tensor, the vocabulary embeddings.
            num_prompt_tokens: int, P.
            mask_zero: bool, as in `Embedding`.
            **kwargs: passed to the constructor.
        """
        matrix = tf.convert_to_tensor(matrix)
        if matrix.shape.rank != 2:
            raise ValueError(
                "`matrix` must be [vocab_size, hidden_dim]. Received: "
                f"shape={matrix.shape.as_list()}."
            )
        embedding = cls._embedding_class(
            int(matrix.shape[0]),
            int(matrix.shape[1]),
            mask_zero=mask_zero,
            name="vocabulary_embedding",
        )
        embedding.build((None, None))
        embedding.embeddings.assign(tf.cast(matrix, embedding.embeddings.dtype))
        return cls(num_prompt_tokens, embedding=embedding, **kwargs)

    @classmethod
    def from_embedding(cls, embedding, num_prompt_tokens, **kwargs):
        """Wrap an existing embedding layer, sharing (not copying) its matrix.

        The layer is frozen (`embedding.trainable = False`).
        """
        return cls(num_prompt_tokens, embedding=embedding, **kwargs)

    @property
    def vocab_size(self):
        """V, the number of real (frozen) ids."""
        return self.input_dim

    @property
    def vocabulary(self):
        """The frozen `[V, H]` embedding matrix."""
        return self.embedding.embeddings

    @property
    def prompt_token_ids(self):
        """The virtual ids `[V, V + P)` as a `[P]` int32 tensor."""
        return ops.virtual_token_ids(self.input_dim, self.num_prompt_tokens)

    def build(self, input_shape=None):
        if not self.embedding.built:
            self.embedding.build(input_shape)
        self._add_prompt_weight(self.output_dim)
        self.built = True

    def call(self, inputs, reverse=False):
        if reverse:
            if hasattr(self.embedding, "tie_weights"):
                return self.embedding(inputs, reverse=True)
            return ops.tied_logits(inputs, self.vocabulary)
        if self.validate_ids:
            inputs = ops.check_token_ids(inputs, self.input_dim, self.num_prompt_tokens)
        outputs = ops.prompt_lookup(inputs, self.vocabulary, self.prompt)
        return tf.cast(outputs, self.compute_dtype)

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero:
            return None
        return tf.not_equal(inputs, 0)

    def _vocabulary_for_artifact(self, vocabulary):
        return self.vocabulary if vocabulary is None else vocabulary

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_prompt_tokens": self.num_prompt_tokens,
                "embedding": self._serialize(self.embedding),
                "prompt_initializer": _initializer_config(self, True),
                "mask_zero": self.mask_zero,
                "validate_ids": self.validate_ids,
            }
        )
        return config


class PromptPrependMixin(PromptWeightsMixin):
    """Form 2: P trainable vectors inserted into an embedded sequence."""

    method = "prepend"
    mask_zero = False

    def __init__(
        self,
        num_prompt_tokens,
        offset=0,
        prompt_initializer="uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_prompt_tokens = check_num_prompt_tokens(num_prompt_tokens)
        self.offset = check_offset(offset)
        self.prompt_initializer = initializers.get(prompt_initializer)
        self.supports_masking = True

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(
                "PromptPrepend expects embedded inputs of shape "
                "(batch_size, sequence_length, hidden_dim) with a known "
                f"hidden_dim. Received: input_shape={tuple(input_shape)}."
            )
        self._add_prompt_weight(int(input_shape[-1]))
        self.built = True

    def call(self, inputs, mask=None):
        if inputs.shape.rank != 3:
            raise ValueError(
                "PromptPrepend expects rank-3 inputs (batch_size, "
                f"sequence_length, hidden_dim). Received: shape={inputs.shape}."
            )
        return ops.prepend_prompt(inputs, self.prompt, self.offset)

    def compute_mask(self, inputs, mask=None):
        return ops.extend_mask(mask, self.num_prompt_tokens, self.offset)

    def compute_output_shape(self, input_shape):
        batch, length, hidden = tuple(input_shape)
        length = None if length is None else length + self.num_prompt_tokens
        return (batch, length, hidden)

    def extend(self, x, fill_value=0):
        """Extend a companion `[B, T, ...]` tensor as the prompt extends the
        sequence (see `tf_softprompt.ops.extend_sequence`)."""
        return ops.extend_sequence(x, self.num_prompt_tokens, self.offset, fill_value)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_prompt_tokens": self.num_prompt_tokens,
                "offset": self.offset,
                # No vocabulary here: a vocabulary-based initialiser raises.
                "prompt_initializer": _initializer_config(self, False),
            }
        )
        return config


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
        prefixed = _prefixed_compute_attention(
            attention._compute_attention, self.prefix
        )
        # Only for this call: the same attention may also run unprefixed
        # elsewhere in the model.
        was_built = attention.built
        with patched(attention, "_compute_attention", prefixed):
            outputs = attention(query, value, key=key, **kwargs)
        if not was_built:  # built by this call: see `build`
            self._freeze(attention)
        return outputs

    # Artifact ---------------------------------------------------------------

    def _check_built_for_artifact(self, action):
        if not self.built or not self.attention.built:
            raise ValueError(
                f"Layer {self.name} is not built yet. Call it on inputs before "
                f"`{action}()`."
            )

    def _dims_metadata(self):
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
            dims_metadata=self._dims_metadata(),
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
            self._dims_metadata(),
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
                "prefix_initializer": _initializer_config(
                    self, False, "prefix_initializer"
                ),
            }
        )
        return config


def _prefixed_compute_attention(original, prefix):
    """`original` (an attention's `_compute_attention`) with `prefix` in front.

    Args:
        original: the bound `_compute_attention(query, key, value,
            attention_mask, ...)` of a Keras `MultiHeadAttention`.
        prefix: `[2, P, num_heads, key_dim]`, keys then values.
    """

    def compute_attention(query, key, value, attention_mask=None, *args, **kwargs):
        key, value, attention_mask = ops.prefix_attention_inputs(
            query,
            key,
            value,
            attention_mask,
            prefix[0],
            prefix[1],
            # Consumed here: passed on, it would build the triangle over
            # P + S keys.
            use_causal_mask=kwargs.pop("use_causal_mask", False),
        )
        return original(query, key, value, attention_mask, *args, **kwargs)

    return compute_attention
