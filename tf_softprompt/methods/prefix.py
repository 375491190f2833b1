"""Form 3: prefix tuning, per-layer keys and values in every self-attention.

Each self-attention layer `l` gets P trainable keys and values,
`prefix[l, 0]` and `prefix[l, 1]` (`[P, kv_heads, head_dim]`), prepended to
the layer's projected keys and values; the attention mask is extended so
that every query sees them (`tf_softprompt.attention_ops.prepend_attention_prefix`).
Real tokens keep their own positions (GPT-2's 0..T-1 and its position
limit, RoPE untouched), and the feed-forward layers see no extra positions,
so a step costs little more than the frozen model's.

Because a prefix steers the attention of every layer, its meaning depends on
all of the base's weights, not only the vocabulary: its fingerprint
(`artifact.weights_fingerprint`) covers every frozen weight.

Initialisers (`from_token_ids`, `from_words`) use the keys and values that
real tokens produce at each layer of the frozen model, which trains much
better than random values (measured on SST-2: see the README).

Reference:
 - [Li and Liang, 2021](https://arxiv.org/abs/2101.00190)
"""

import dataclasses

import numpy as np
import tensorflow as tf

from tf_softprompt import artifact, attention_ops, ops
from tf_softprompt.methods.base import InjectionMethod


@dataclasses.dataclass(frozen=True)
class Reparameterization:
    """Li and Liang's MLP reparameterisation, used while training.

    The trained variables are a `[P, embedding_dim]` embedding and an MLP
    `tanh(E W1 + b1) W2 + b2` whose output is reshaped to the prefix;
    artifacts store the collapsed prefix (what serving uses) and these
    weights (to resume training).

    Attributes:
        hidden_dim: int, R, the MLP's hidden width.
        embedding_dim: int, E, the width of the trained embedding; `None`:
            the model's hidden size H.
    """

    hidden_dim: int = 512
    embedding_dim: int = None

    def __post_init__(self):
        for name in ("hidden_dim", "embedding_dim"):
            value = getattr(self, name)
            if value is None and name == "embedding_dim":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(
                    f"`{name}` must be a positive integer. Received: {name}={value!r}."
                )


class KeyValueInitializer:
    """Initialise a prefix with the keys/values real tokens produce.

    Resolved by the keras-hub adapter, which runs the frozen model once on
    `token_ids` (one sequence of P tokens, no special tokens) and records
    each self-attention layer's projected keys and values.

    Args:
        token_ids: list of P ints in `[0, V)`.
        description: str recorded in the artifact.
    """

    def __init__(self, token_ids, description=None):
        self.token_ids = [int(t) for t in token_ids]
        if not self.token_ids:
            raise ValueError("`token_ids` needs at least one id. Received: [].")
        self.description = description or f"prefix.from_token_ids({self.token_ids})"

    def __call__(self, shape, dtype=None):
        raise ValueError(
            "A prefix initialised from token keys/values needs the model to "
            "run; pass it to `tf_softprompt.hub.enable_prompt_tuning`, which "
            "resolves it."
        )


def from_token_ids(token_ids):
    """A prefix initialiser from the keys/values of these tokens.

    Args:
        token_ids: list of P token ids (one per prefix position).

    Returns:
        A `KeyValueInitializer`.

    Example:
    ```python
    init = tf_softprompt.methods.prefix.from_token_ids(ids[:20])
    hub.enable_prompt_tuning(classifier, 20, method="prefix", initializer=init)
    ```
    """
    return KeyValueInitializer(token_ids)


def from_words(words, tokenize, num_tokens, vocab_size, seed=0):
    """Token ids of `words` (in order), topped up with sampled vocabulary ids.

    This is the prefix twin of `initializers.from_label_words`: the label
    names' tokens first, then tokens sampled without replacement from the
    vocabulary, P in all.

    Args:
        words: list of str (e.g. the label names).
        tokenize: callable `str -> list[int]`, without special tokens.
        num_tokens: int, P.
        vocab_size: int, V, to sample from.
        seed: int for the sample.

    Returns:
        A `KeyValueInitializer`.
    """
    ids = []
    for word in words:
        pieces = [int(i) for i in np.asarray(tokenize(word)).reshape(-1)]
        if not pieces:
            raise ValueError(
                f"The word {word!r} tokenised to no ids. Use a word the tokenizer "
                "knows."
            )
        ids.extend(pieces)
    ids = ids[:num_tokens]
    rng = np.random.default_rng(seed)
    if len(ids) < num_tokens:
        extra = rng.choice(vocab_size, size=num_tokens - len(ids), replace=False)
        ids.extend(int(i) for i in extra)
    return KeyValueInitializer(
        ids, description=f"prefix.from_words({list(words)}, seed={seed})"
    )


def sampled_vocabulary(num_tokens, vocab_size, seed=0):
    """A `KeyValueInitializer` over P vocabulary ids sampled with `seed`."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(vocab_size, size=num_tokens, replace=num_tokens > vocab_size)
    return KeyValueInitializer(
        ids, description=f"prefix.sampled_vocabulary(seed={seed})"
    )


class PrefixMethod(InjectionMethod):
    """`method="prefix"`: learned keys and values in every self-attention.

    The trained array is `[L, 2, P, kv_heads, head_dim]` (index 0 keys,
    1 values), `L` the number of self-attention layers. Multi-task tables
    pad tasks along axis 2. The prefix takes no sequence slot and no
    position: only the attention hook changes.

    Example:
    ```python
    handle = hub.enable_prompt_tuning(classifier, 20, method="prefix")
    handle.prompt.shape  # (6, 2, 20, 12, 32) for all-MiniLM-L6-v2
    ```
    """

    name = "prefix"
    token_axis = 2
    fingerprint_key = "base_fingerprint"

    def prompt_shape(self, dims, num_tokens):
        if not dims.attention:
            raise ValueError(
                f"method={self.name!r} needs the model's self-attention layers; "
                "none were found."
            )
        first = dims.attention[0]
        if any(a != first for a in dims.attention):
            raise ValueError(
                f"method={self.name!r} needs the same key/value shape in every "
                f"self-attention layer. Received per layer: {list(dims.attention)}."
            )
        return (
            dims.num_layers,
            2,
            int(num_tokens),
            int(first.num_key_value_heads),
            int(first.head_dim),
        )

    def shape_metadata(self, dims):
        shape = self.prompt_shape(dims, 1)
        return {
            "num_layers": shape[0],
            "num_key_value_heads": shape[3],
            "head_dim": shape[4],
            "hidden_dim": int(dims.hidden_dim),
            "vocab_size": int(dims.vocab_size),
        }

    def fingerprint(self, base):
        return artifact.weights_fingerprint(base.frozen_weights())

    def sequence_slots(self, num_tokens):
        return 0

    def positions_before_text(self, num_tokens):
        return 0

    def place(self, offset, default_offset):
        if offset not in (None, 0):
            raise ValueError(
                f"method={self.name!r} has no place in the sequence, so it takes "
                f"no offset. Received: offset={offset!r}. Leave `offset` unset."
            )
        return 0

    def missing_structure(self, structure):
        return structure.attention_problem

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
        """One layer's keys, values and mask with the prefix in front.

        Args:
            prompt: `[L, 2, P, kv_heads, head_dim]` prefix values.
            layer_index: int, which self-attention layer this is.
            key, value: `[B, S, heads, head_dim]` projected keys and values.
            attention_mask: broadcastable to `[B, T, S]`, or `None`.
            rows: optional int `[B, W]`: each example's prefix rows (several
                tasks' prefixes in one table); default all P for every row.
            prefix_mask: optional bool `[B, W]`, False for unused rows.
            query_length: T, when `attention_mask` is `None`.

        Returns:
            `(key, value, mask)` as `attention_ops.prepend_attention_prefix` returns.
        """
        prefix_key = prompt[layer_index, 0]
        prefix_value = prompt[layer_index, 1]
        if rows is not None:
            prefix_key = ops.select_prompt_rows(prefix_key, rows)
            prefix_value = ops.select_prompt_rows(prefix_value, rows)
        return attention_ops.prepend_attention_prefix(
            key,
            value,
            attention_mask,
            prefix_key,
            prefix_value,
            prefix_mask=prefix_mask,
            query_length=query_length,
        )


def compute_attention_with(
    compute_attention, change, query, key, value, attention_mask=None, *args, **kwargs
):
    """Call an attention's `_compute_attention` with changed keys/values.

    Both the keras-hub hooks and the core `PrefixAttention` layers run their
    attention through here, so the prefix enters every attention the same
    way.

    Args:
        compute_attention: the attention's own `_compute_attention(query,
            key, value, attention_mask, ...)`.
        change: `(key, value, attention_mask, query_length) -> (key, value,
            attention_mask)`, e.g. a method's `attention_inputs`.
        query, key, value: `[B, T|S, heads, head_dim]` projected tensors.
        attention_mask: broadcastable to `[B, T, S]`, or `None`.
        *args, **kwargs: passed on. Keras `MultiHeadAttention`'s causal-only
            fast path passes no mask and `use_causal_mask=True`, for a kernel
            that would align the causal triangle with the keys in front; the
            triangle is spelled out over the real keys here instead.

    Returns:
        What `compute_attention` returns.
    """
    query_length = tf.shape(query)[1]
    if kwargs.pop("use_causal_mask", False):
        attention_mask = attention_ops.and_causal_mask(
            attention_mask, query_length, tf.shape(key)[1]
        )
    key, value, attention_mask = change(key, value, attention_mask, query_length)
    return compute_attention(query, key, value, attention_mask, *args, **kwargs)
