"""The injection-method interface and the model dimensions it works with."""

import dataclasses

from tf_softprompt import artifact


@dataclasses.dataclass(frozen=True)
class AttentionDims:
    """One self-attention layer's key/value shape.

    Attributes:
        num_key_value_heads: int, kv heads (fewer than query heads under
            grouped-query attention).
        head_dim: int, the size of each key and value head.
    """

    num_key_value_heads: int
    head_dim: int


@dataclasses.dataclass(frozen=True)
class ModelDims:
    """What a method needs to know about the frozen model's shapes.

    Attributes:
        vocab_size: int, V (virtual ids start here).
        hidden_dim: int, H.
        attention: tuple of `AttentionDims`, one per self-attention layer,
            in order (empty when no method needs them).
    """

    vocab_size: int
    hidden_dim: int
    attention: tuple = ()

    @property
    def num_layers(self):
        return len(self.attention)


class FrozenBase:
    """The frozen weights a prompt's meaning depends on, read lazily.

    Args:
        vocabulary: the `[V, H]` embedding matrix (array or variable).
        weights: callable returning `[(path, array)]` of every frozen weight
            of the base, or `None` when unknown.
    """

    def __init__(self, vocabulary, weights=None):
        self.vocabulary = vocabulary
        self._weights = weights

    def frozen_weights(self):
        if self._weights is None:
            raise ValueError(
                "This base does not list its frozen weights, which a prefix's "
                "fingerprint covers. Use a keras-hub model."
            )
        return self._weights()


class InjectionMethod:
    """How a soft prompt enters a frozen model.

    Subclasses set the class attributes and implement the shape and
    fingerprint methods; each computation a method adds to a model is a
    plain TensorFlow function over `tf_softprompt.ops`, called by the
    keras-hub adapter or a core layer.

    Attributes:
        name: str, recorded in artifacts and run records.
        uses_virtual_ids: bool, the prompt occupies sequence slots addressed
            by virtual ids `V + r` (forms 1 and 2); False for the prefix.
        adds_positions: bool, the prompt takes positions in front of the
            text, which count against the model's position limit (form 1,
            and a `past_prefix`; form 2 and `prefix` give it none).
        replaces_position_sum: bool, prompt vectors replace the token +
            position (+ segment) sum at their slots (form 2).
        attends: bool, the prompt enters every self-attention (form 3).
        token_axis: int, the axis of the trained array that indexes prompt
            tokens; multi-task tables pad tasks along it.
        fingerprint_key: str, the artifact key of the base's fingerprint.
    """

    name = None
    uses_virtual_ids = True
    adds_positions = True
    replaces_position_sum = False
    attends = False
    token_axis = 0
    fingerprint_key = "vocab_fingerprint"

    def prompt_shape(self, dims, num_tokens):
        """The trained array's shape for `num_tokens` prompt tokens."""
        raise NotImplementedError

    def shape_metadata(self, dims):
        """The dims an artifact records, and a loader checks, as a dict."""
        raise NotImplementedError

    def fingerprint(self, base):
        """`sha256:<hex>` identifying the frozen weights a prompt needs."""
        return artifact.vocab_fingerprint(base.vocabulary)

    def num_tokens(self, shape):
        """P, read from an array shape."""
        return int(shape[self.token_axis])

    def describe(self):
        return self.name

    def __repr__(self):
        return f"<tf_softprompt method {self.name!r}>"
