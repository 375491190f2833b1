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

import tensorflow as tf

from tf_softprompt import artifact, initializers, methods, ops
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


def initializer_config(layer, vocabulary_available, attribute="prompt_initializer"):
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
        outputs = methods.get(self.method).embed(inputs, self.vocabulary, self.prompt)
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
                "prompt_initializer": initializer_config(self, True),
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
                "prompt_initializer": initializer_config(self, False),
            }
        )
        return config
