"""Attention math for prompts, in plain TensorFlow: keys and values in front
of an attention's own, with its mask extended (prefix tuning, and baked
prompts), the causal masks it needs, and Li and Liang's prefix MLP.

Shapes follow `[B, S, heads, head_dim]` for projected keys and values, as
every attention implementation has them just before the scores.

Example:
```python
key, value, mask = prepend_attention_prefix(key, value, mask, pk, pv)
```
"""

import tensorflow as tf


def causal_mask(query_length, key_length):
    """`[T, S]` bool: query `i` sees keys `j <= i` (Keras' causal mask)."""
    ones = tf.ones(tf.stack([query_length, key_length]), tf.int32)
    rows = tf.cumsum(ones, axis=-2)
    cols = tf.cumsum(ones, axis=-1)
    return rows >= cols


def and_causal_mask(attention_mask, query_length, key_length):
    """`attention_mask` (or nothing) restricted to Keras' causal triangle.

    Keras `MultiHeadAttention`'s causal-only fast path passes no mask and
    `use_causal_mask=True`; with keys in front of the real ones the
    triangle must be spelled out over the real keys first.

    Args:
        attention_mask: broadcastable to `[B, T, S]` (1 = attend), or `None`.
        query_length, key_length: T and S.

    Returns:
        bool `[1, T, S]` when `attention_mask` is `None`, else its `and`
        with the triangle.
    """
    causal = causal_mask(query_length, key_length)[None]
    if attention_mask is None:
        return causal
    return tf.logical_and(tf.cast(attention_mask, tf.bool), causal)


def repeat_heads(x, num_heads, axis=-2):
    """Repeat each of `x`'s heads so there are `num_heads` (grouped queries).

    Matches `ops.repeat(x, groups, axis)`: kv head `j` becomes heads
    `j * groups .. (j + 1) * groups - 1`, as Llama expands its keys.
    """
    have = x.shape[axis]
    if have == num_heads:
        return x
    if have is None or num_heads % have:
        raise ValueError(
            f"The prefix has {have} key/value heads, which cannot be spread over "
            f"the layer's {num_heads} heads. The prefix must have "
            "num_key_value_heads heads, a divisor of the attention's heads."
        )
    return tf.repeat(x, num_heads // have, axis=axis)


def prepend_attention_prefix(
    key,
    value,
    attention_mask,
    prefix_key,
    prefix_value,
    prefix_mask=None,
    query_length=None,
):
    """Prepend learned keys/values to an attention's projected keys/values.

    Every query sees every (unmasked) prefix position; the real keys keep
    the mask they had. This is prefix tuning (Li and Liang, 2021) at the
    point where all attention implementations agree: projected
    `[B, S, heads, head_dim]` tensors, before the scores.

    Args:
        key, value: `[B, S, Hk, D]` projected keys and values (after RoPE).
        attention_mask: `[B, T, S]` (bool, int or float; 1 = attend) or
            `None` (everything attends; then `query_length` is needed).
        prefix_key, prefix_value: `[W, Hp, D]` (shared by the batch) or
            `[B, W, Hp, D]` (per example), with `Hk` a multiple of `Hp`
            (grouped-query attention repeats the prefix's kv heads).
        prefix_mask: optional bool `[B, W]`, False for unused slots.
        query_length: T, when `attention_mask` is `None`.

    Returns:
        `(key, value, mask)`: `[B, W + S, Hk, D]` twice and `[B, T, W + S]`
        in the incoming mask's dtype (bool when it was `None`).

    Example:
    >>> k = tf.zeros((1, 3, 2, 4)); pk = tf.ones((5, 1, 4))
    >>> k2, v2, m2 = prepend_attention_prefix(k, k, None, pk, pk, query_length=3)
    >>> k2.shape.as_list(), m2.shape.as_list()
    ([1, 8, 2, 4], [1, 3, 8])
    """
    key = tf.convert_to_tensor(key)
    value = tf.convert_to_tensor(value)
    batch = tf.shape(key)[0]
    prefix_key = repeat_heads(tf.cast(prefix_key, key.dtype), key.shape[2])
    prefix_value = repeat_heads(tf.cast(prefix_value, value.dtype), value.shape[2])
    if prefix_key.shape.rank == 3:
        prefix_key = tf.broadcast_to(
            prefix_key[None], tf.concat([[batch], tf.shape(prefix_key)], 0)
        )
        prefix_value = tf.broadcast_to(
            prefix_value[None], tf.concat([[batch], tf.shape(prefix_value)], 0)
        )
    width = tf.shape(prefix_key)[1]
    if attention_mask is None:
        if query_length is None:
            raise ValueError("`query_length` is needed when `attention_mask` is None.")
        attention_mask = tf.ones(
            tf.stack([batch, query_length, tf.shape(key)[1]]), tf.bool
        )
    attention_mask = tf.convert_to_tensor(attention_mask)
    if attention_mask.shape.rank == 2:  # [T, S], shared by the batch
        attention_mask = attention_mask[None]
    # Masks arrive in any shape that broadcasts to [B, T, S] ([1, T, S] for a
    # causal mask alone, [B, 1, S] for a key mask): broadcast first, so the
    # prefix columns line up.
    queries = tf.shape(attention_mask)[1] if query_length is None else query_length
    attention_mask = tf.broadcast_to(
        attention_mask, tf.stack([batch, queries, tf.shape(key)[1]])
    )
    if prefix_mask is None:
        prefix_block = tf.ones(tf.stack([batch, queries, width]), attention_mask.dtype)
    else:
        prefix_block = tf.cast(
            tf.broadcast_to(
                tf.cast(prefix_mask, tf.bool)[:, None, :],
                tf.stack([batch, queries, width]),
            ),
            attention_mask.dtype,
        )
    return (
        tf.concat([prefix_key, key], axis=1),
        tf.concat([prefix_value, value], axis=1),
        tf.concat([prefix_block, attention_mask], axis=2),
    )


def mlp_reparameterization(embedding, w1, b1, w2, b2):
    """Li and Liang's prefix MLP: `tanh(E W1 + b1) W2 + b2`, row by row.

    Args:
        embedding: `[P, E]`; w1 `[E, R]`; b1 `[R]`; w2 `[R, O]`; b2 `[O]`.

    Returns:
        `[P, O]`.
    """
    hidden = tf.tanh(tf.linalg.matmul(embedding, w1) + b1)
    return tf.linalg.matmul(hidden, w2) + b2
