"""The injection-method interface and the model dimensions it works with.

A method is behaviour, not flags: the shape it trains, where its prompt sits
(how many sequence slots and positions it takes) and one hook per point of
a model it can change, each with a default that changes nothing:

- `embed`: the token embedding of ids that may name prompt rows;
- `slot_positions` and `mask_slots`: the position (and segment) sum at the
  prompt's slots;
- `attention_inputs`: the keys, values and mask of each self-attention.

The keras-hub hooks (`tf_softprompt.hub`) and the core layers
(`tf_softprompt.layers`, `tf_softprompt.keras2`) call these hooks, so each
piece of math exists once.
"""

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

    Subclasses set `name` (and `token_axis`, `fingerprint_key` where they
    differ) and implement `prompt_shape` and `shape_metadata`; the hooks
    below default to changing nothing, so a method overrides only the points
    of the model it changes.

    Attributes:
        name: str, recorded in artifacts, run records and model configs.
        token_axis: int, the axis of the trained array that indexes prompt
            tokens; multi-task tables pad tasks along it.
        fingerprint_key: str, the artifact key of the base's fingerprint.
    """

    name = None
    token_axis = 0
    fingerprint_key = "vocab_fingerprint"

    # --- shapes and identity ---------------------------------------------------

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

    # --- where the prompt sits ---------------------------------------------------

    def sequence_slots(self, num_tokens):
        """Slots the prompt takes in the token sequence (its virtual ids
        `V + r` sit there); 0 for a prompt that is not in the sequence."""
        return int(num_tokens)

    def positions_before_text(self, num_tokens):
        """Positions the prompt takes ahead of the text: where the text's
        first token sits, and what counts against a position limit."""
        return int(num_tokens)

    def position_shift(self, num_tokens):
        """Positions ahead of the text that no sequence slot holds: the
        text's positions start this far in (a prefix of past positions)."""
        return 0

    def place(self, offset, default_offset):
        """The offset the prompt goes to: `offset`, or `default_offset`
        (where the model's structure puts it) when `offset` is `None`.

        Raises:
            ValueError: for an offset this method cannot take.
        """
        if offset is None:
            return int(default_offset)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(
                "`offset` must be a non-negative integer: 0 puts the prompt "
                f"first, 1 after [CLS]/BOS. Received: offset={offset!r}"
            )
        return offset

    def missing_structure(self, structure):
        """Why a model cannot take this method, or `None` when it can.

        Args:
            structure: what the model offers (`tf_softprompt.hub.inspection.
                ModelStructure`): its position layers and attention layers.
        """
        return None

    # --- hooks at the points of a model ------------------------------------------

    def embed(self, token_ids, vocabulary, prompt):
        """`[B, T, H]` embeddings of ids that may name prompt rows (ids
        `>= V`), or `None` when the method leaves the embedding alone.

        Args:
            token_ids: int `[B, T]` in `[0, V + P)` (checked by the caller).
            vocabulary: `[V, H]` frozen matrix.
            prompt: the prompt's values (the method's shape).
        """
        return None

    def slot_positions(self, layout, start_index, length):
        """Positions of `length` slots from `start_index` when the method
        changes them, else `None`.

        Returns:
            `None`, or `(positions [B, N] int32, is_prompt [B, N] bool)`.
        """
        return None

    def mask_slots(self, embedded, is_prompt):
        """A position or segment embedding, `[B, N, H]` or `[N, H]`, as it
        enters the embedding sum at prompt slots (`is_prompt [B, N]`)."""
        return embedded

    def attention_inputs(
        self,
        prompt,
        layer_index,
        key,
        value,
        attention_mask,
        rows=None,
        prefix_mask=None,
        query_length=None,
    ):
        """One self-attention's keys, values and mask, as the method wants
        them; unchanged by default.

        Args:
            prompt: the prompt's values.
            layer_index: int, which self-attention layer this is.
            key, value: `[B, S, heads, head_dim]` projected keys and values.
            attention_mask: broadcastable to `[B, T, S]`, or `None`.
            rows: optional int `[B, W]`: each example's prompt rows.
            prefix_mask: optional bool `[B, W]`, False for unused rows.
            query_length: T, when `attention_mask` is `None`.

        Returns:
            `(key, value, attention_mask)`.
        """
        return key, value, attention_mask

    def changes_attention(self):
        """Whether `attention_inputs` changes anything (a prefix)."""
        return type(self).attention_inputs is not InjectionMethod.attention_inputs

    def describe(self):
        return self.name

    def __repr__(self):
        return f"<tf_softprompt method {self.name!r}>"
