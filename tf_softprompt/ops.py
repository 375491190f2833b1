"""The soft-prompt math, written once in plain TensorFlow ops.

Everything that decides a number lives here: the extended-vocabulary lookup,
the id checks, inserting prompt vectors into a sequence, extending masks and
companion tensors, and packing valid positions to the front of a row. The
Keras 3 layers (`tf_softprompt.layers`), the Keras 2 layers
(`tf_softprompt.keras2`), the keras-hub adapter and the exporter are thin
shells over these functions.

Shapes follow `[B, T]` for token ids, `[V, H]` for the vocabulary matrix and
`[P, H]` for the prompt table.
"""

import tensorflow as tf


def _index_dtype(token_ids):
    # Gathers and shapes take int32/int64 only. Every narrower or unsigned
    # integer fits int64 (a huge uint64 wraps negative, which the range check
    # rejects), so the comparisons never overflow.
    if token_ids.dtype in (tf.int32, tf.int64):
        return token_ids
    return tf.cast(token_ids, tf.int64)


def check_token_ids(token_ids, vocab_size, num_prompt_tokens, name="token_ids"):
    """Check that `token_ids` are integers of rank 2 within `[0, V + P)`.

    `tf.gather` raises on CPU but silently returns zeros on GPU for an
    out-of-range index, so the range is asserted explicitly. The dtype and
    rank checks happen at trace time; the range check is a runtime assertion
    that runs on every device outside XLA (eager and `tf.function`, CPU and
    GPU).

    Under `jit_compile=True`, XLA drops assertions, so inside a compiled step
    this check does nothing. Run `validate_token_ids` in the `tf.data`
    pipeline (never compiled), which raises before the step; as a last line
    of defence `prompt_lookup` turns out-of-range ids into NaN rows.

    Args:
        token_ids: int tensor `[B, T]`.
        vocab_size: int, V.
        num_prompt_tokens: int, P (the number of virtual ids accepted).
        name: str, the name used in error messages.

    Returns:
        `token_ids`, with a control dependency on the range assertion; int32
        and int64 ids keep their dtype, other integer dtypes become int64.
    """
    token_ids = tf.convert_to_tensor(token_ids)
    if not token_ids.dtype.is_integer:
        raise TypeError(
            f"`{name}` must be an integer tensor of token ids. Received: "
            f"dtype={token_ids.dtype.name}. Cast the ids with "
            f"`tf.cast({name}, 'int32')` before calling the layer."
        )
    if token_ids.shape.rank is not None and token_ids.shape.rank != 2:
        raise ValueError(
            f"`{name}` must have rank 2, `(batch_size, sequence_length)`. "
            f"Received: shape={token_ids.shape}. Add a batch axis with "
            f"`{name}[None, :]` for a single sequence."
        )
    token_ids = _index_dtype(token_ids)
    limit = vocab_size + num_prompt_tokens
    message = (
        f"`{name}` must lie in [0, {limit}): {vocab_size} vocabulary ids plus "
        f"{num_prompt_tokens} virtual prompt ids starting at {vocab_size}. "
        "Check the tokenizer's vocabulary size and the prompt length."
    )
    checks = [
        tf.debugging.assert_greater_equal(
            token_ids, tf.cast(0, token_ids.dtype), message=message
        ),
        tf.debugging.assert_less(
            token_ids, tf.cast(limit, token_ids.dtype), message=message
        ),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(token_ids)


def validate_token_ids(token_ids, vocab_size, num_prompt_tokens):
    """`check_token_ids` for a `tf.data` pipeline, outside any XLA step.

    `tf.data` functions are not compiled with XLA, so the range assertion
    raises `InvalidArgumentError` while iterating, even when the training step
    runs with `jit_compile=True` (where assertions are dropped).

    Example:
    ```python
    ds = ds.map(lambda ids, y: (validate_token_ids(ids, V, P), y))
    ```
    """
    return check_token_ids(token_ids, vocab_size, num_prompt_tokens)


def prompt_lookup(token_ids, vocabulary, prompt):
    """Embed ids, sending ids `>= V` to the trainable prompt table.

    Computes `prompt[id - V] if id >= V else stop_gradient(vocabulary[id])`
    with two gathers and a select. Only the gathered rows of the vocabulary
    are read, and no gradient reaches it, so no dense `[V, H]` tensor is built
    in the forward or the backward pass. The prompt's gradient is a dense
    `[P, H]` tensor, summed over repeated ids (see
    `_gather_rows_dense_gradient` for why not an `IndexedSlices`).

    An id outside `[0, V + P)` gives a row of NaN, not a clamped or zero row.
    This only matters where `check_token_ids` cannot raise: under
    `jit_compile=True`, XLA drops assertions and clamps gather indices, and
    the NaN row turns a silently wrong embedding into a visible NaN loss.

    Args:
        token_ids: int tensor `[B, T]` with values in `[0, V + P)`. The range
            is not checked here; see `check_token_ids`.
        vocabulary: `[V, H]` tensor or variable, the frozen embedding matrix.
        prompt: `[P, H]` tensor or variable, the trainable prompt table.

    Returns:
        `[B, T, H]` tensor in the vocabulary's dtype.

    Example:
    >>> vocab = tf.reshape(tf.range(6.0), (3, 2))
    >>> prompt = tf.constant([[10.0, 11.0]])
    >>> prompt_lookup(tf.constant([[3, 1]]), vocab, prompt).numpy().tolist()
    [[[10.0, 11.0], [2.0, 3.0]]]
    """
    token_ids = _index_dtype(tf.convert_to_tensor(token_ids))
    vocab_size = tf.shape(vocabulary, out_type=token_ids.dtype)[0]
    limit = vocab_size + tf.shape(prompt, out_type=token_ids.dtype)[0]
    is_prompt = token_ids >= vocab_size
    in_range = tf.logical_and(token_ids >= 0, token_ids < limit)
    zeros = tf.zeros_like(token_ids)
    vocab_ids = tf.where(tf.logical_and(in_range, ~is_prompt), token_ids, zeros)
    prompt_ids = tf.where(
        tf.logical_and(in_range, is_prompt), token_ids - vocab_size, zeros
    )
    vocab_rows = tf.stop_gradient(tf.gather(vocabulary, vocab_ids))
    prompt_rows = tf.cast(
        _gather_rows_dense_gradient(prompt, prompt_ids), vocab_rows.dtype
    )
    outputs = tf.where(is_prompt[..., None], prompt_rows, vocab_rows)
    # Under XLA, `check_token_ids`' assertions are dropped and gathers clamp
    # out-of-range indices, which would silently return a real row. NaN rows
    # make such ids visible (a NaN loss) on every device and compiler instead.
    nan = tf.constant(float("nan"), outputs.dtype)
    return tf.where(in_range[..., None], outputs, nan)


def _gather_rows_dense_gradient(table, indices):
    """`tf.gather(table, indices)` whose gradient is a dense `[N, H]` tensor.

    `tf.gather`'s gradient is an `IndexedSlices` with one slice per looked-up
    position, so every virtual id used by B examples repeats B times (and,
    in `prompt_lookup`, each non-prompt position adds a zero slice at row 0).
    Keras 3 optimizers apply such slices one by one without summing repeated
    indices first, so Adam's second moment and momentum come out wrong (one
    Adam step moved a weight by 0.141 instead of 0.1 in our test). For a
    small `[P, H]` table a dense, summed gradient is cheap and right for
    every optimizer.
    """
    table = tf.convert_to_tensor(table)
    num_rows = tf.shape(table, out_type=indices.dtype)[0]

    @tf.custom_gradient
    def gather(table):
        def grad(upstream):
            upstream = tf.convert_to_tensor(upstream)
            return tf.math.unsorted_segment_sum(upstream, indices, num_rows)

        return tf.gather(table, indices), grad

    return gather(table)


def tied_logits(hidden, vocabulary):
    """Output logits `hidden · vocabulary[:V]ᵀ`, never over prompt rows.

    Args:
        hidden: `[..., H]` tensor.
        vocabulary: `[V, H]` frozen embedding matrix.

    Returns:
        `[..., V]` logits in `hidden`'s dtype.
    """
    kernel = tf.cast(tf.stop_gradient(vocabulary), hidden.dtype)
    return tf.linalg.matmul(hidden, kernel, transpose_b=True)


def virtual_token_ids(vocab_size, num_prompt_tokens, dtype=tf.int32):
    """The virtual ids `[V, V + P)` of a prompt table, as a `[P]` tensor."""
    return tf.range(vocab_size, vocab_size + num_prompt_tokens, dtype=dtype)


def _check_offset_fits(x, offset):
    """Raise if `offset` is past the end of `x`'s axis 1; returns `x`.

    A static length is checked at trace time. A dynamic one gets a runtime
    assertion (dropped under XLA, where shapes are static anyway).
    """
    message = (
        "`offset` must be at most the sequence length, or the prompt would "
        f"not sit at position {offset}. Received: offset={offset}, "
    )
    static_length = x.shape[1]
    if static_length is not None:
        if offset > static_length:
            raise ValueError(message + f"sequence_length={static_length}.")
        return x
    if offset == 0:
        return x
    check = tf.debugging.assert_less_equal(
        tf.constant(offset), tf.shape(x)[1], message=message + "a shorter sequence."
    )
    with tf.control_dependencies([check]):
        return tf.identity(x)


def insert_along_sequence(x, values, offset):
    """Insert `values` into `x` along axis 1 at `offset`, per example.

    Args:
        x: `[B, T, ...]` tensor.
        values: `[P, ...]` tensor (shared by the batch) or `[B, P, ...]`.
        offset: Python int, the insertion position (0 = before the first
            element, 1 = after the first, e.g. after [CLS]/BOS).

    Returns:
        `[B, P + T, ...]` tensor.
    """
    x = tf.convert_to_tensor(x)
    values = tf.cast(tf.convert_to_tensor(values), x.dtype)
    if values.shape.rank == x.shape.rank - 1:
        batch = tf.shape(x)[:1]
        values = tf.broadcast_to(
            values[None], tf.concat([batch, tf.shape(values)], axis=0)
        )
    x = _check_offset_fits(x, offset)
    return tf.concat([x[:, :offset], values, x[:, offset:]], axis=1)


def extend_sequence(x, num_prompt_tokens, offset=0, fill_value=0):
    """Extend a companion tensor the way the prompt extends the sequence.

    Use it on every `[B, T, ...]` tensor that travels with the token ids:
    padding masks (fill `True`), segment ids (fill the segment of the
    surrounding tokens, usually 0), labels (any fill, with sample weight 0)
    and sample weights (fill 0).

    Args:
        x: `[B, T, ...]` tensor.
        num_prompt_tokens: int, P.
        offset: int, where the prompt sits, as in `insert_along_sequence`.
        fill_value: scalar written at the P prompt positions.

    Returns:
        `[B, P + T, ...]` tensor of `x`'s dtype.

    Example:
    >>> mask = tf.constant([[True, True, False]])
    >>> extend_sequence(mask, 2, offset=1, fill_value=True).numpy().tolist()
    [[True, True, True, True, False]]
    """
    x = tf.convert_to_tensor(x)
    if num_prompt_tokens <= 0:
        raise ValueError(
            "`num_prompt_tokens` must be a positive integer. Received: "
            f"num_prompt_tokens={num_prompt_tokens}."
        )
    x = _check_offset_fits(x, offset)
    fill_shape = tf.concat(
        [tf.shape(x)[:1], [num_prompt_tokens], tf.shape(x)[2:]], axis=0
    )
    fill = tf.fill(fill_shape, tf.cast(fill_value, x.dtype))
    return tf.concat([x[:, :offset], fill, x[:, offset:]], axis=1)


def extend_mask(mask, num_prompt_tokens, offset=0):
    """Insert P `True`s into a `[B, T]` mask; `None` stays `None`."""
    if mask is None:
        return None
    return extend_sequence(
        tf.cast(mask, tf.bool), num_prompt_tokens, offset, fill_value=True
    )


def prepend_prompt(embedded, prompt, offset=0):
    """Insert the `[P, H]` prompt into a `[B, T, H]` embedded sequence.

    Args:
        embedded: `[B, T, H]` tensor.
        prompt: `[P, H]` (shared) or `[B, P, H]` (per example) tensor.
        offset: int, the insertion position.

    Returns:
        `[B, P + T, H]` tensor in `embedded`'s dtype.
    """
    return insert_along_sequence(embedded, prompt, offset)


def pack_destinations(mask):
    """Where each position goes when a row is packed (valid positions first).

    Valid positions keep their order and so do the padding positions, so
    left padding, or padding in the middle of a row, becomes right padding.
    Computed with cumulative sums, not a sort: under XLA a sort here made a
    whole prompt-tuning train step about 15x slower on CPU.

    Args:
        mask: `[B, T]` bool tensor, `True` where the position is valid.

    Returns:
        `[B, T]` int32 tensor `dest`: position `t` of row `b` moves to
        `dest[b, t]`. It is the inverse of `pack_permutation(mask)`.

    Example:
    >>> pack_destinations(tf.constant([[False, True, True]])).numpy().tolist()
    [[2, 0, 1]]
    """
    valid = tf.cast(mask, tf.int32)
    valid_before = tf.cumsum(valid, axis=1, exclusive=True)
    padding_before = tf.cumsum(1 - valid, axis=1, exclusive=True)
    num_valid = tf.reduce_sum(valid, axis=1, keepdims=True)
    return tf.where(valid > 0, valid_before, num_valid + padding_before)


def pack_permutation(mask):
    """The per-row permutation that moves valid positions to the front.

    Stable: valid positions keep their order and so do the padding
    positions (see `pack_destinations`).

    Args:
        mask: `[B, T]` bool tensor, `True` where the position is valid.

    Returns:
        `[B, T]` int32 tensor `perm` such that
        `tf.gather(x, perm, batch_dims=1)` packs a row.

    Example:
    >>> pack_permutation(tf.constant([[False, True, True]])).numpy().tolist()
    [[1, 2, 0]]
    """
    return inverse_permutation(pack_destinations(mask))


def inverse_permutation(perm):
    """Inverse of a `[B, T]` batch of permutations (a scatter, not a sort).

    Args:
        perm: `[B, T]` int tensor; each row a permutation of `0..T-1`.

    Returns:
        `[B, T]` tensor `inv` of `perm`'s dtype with `inv[b, perm[b, t]] = t`.
    """
    perm = tf.convert_to_tensor(perm)
    shape = tf.shape(perm, out_type=perm.dtype)
    rows = tf.broadcast_to(tf.range(shape[0])[:, None], shape)
    positions = tf.broadcast_to(tf.range(shape[1])[None], shape)
    return tf.scatter_nd(tf.stack([rows, perm], axis=-1), positions, shape)


def gather_rows(x, perm):
    """Reorder `x` (`[B, T, ...]`) along axis 1 by a `[B, T]` permutation."""
    return tf.gather(x, perm, batch_dims=1)


def check_prompt_shape(value, expected_shape, what="prompt"):
    """Raise if `value`'s shape differs from `expected_shape`, naming both."""
    shape = tuple(int(d) for d in value.shape)
    expected = tuple(int(d) for d in expected_shape)
    if shape != expected:
        raise ValueError(
            f"The {what} has shape {list(shape)} but the model expects "
            f"{list(expected)}. Both shapes must match."
        )


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


def select_prompt_rows(values, rows):
    """Per-example rows of a prompt: `values[rows[b, w]]`, gradient dense.

    Args:
        values: `[P, ...]` tensor (a prompt table, or one layer's prefix keys).
        rows: int `[B, W]` row indices into axis 0.

    Returns:
        `[B, W, ...]`.
    """
    return _gather_rows_dense_gradient(values, tf.convert_to_tensor(rows))


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


def prefix_attention_inputs(
    query,
    key,
    value,
    attention_mask,
    prefix_key,
    prefix_value,
    use_causal_mask=False,
):
    """Keys, values and mask of a Keras `MultiHeadAttention` with a prefix.

    What `_compute_attention(query, key, value, attention_mask)` of Keras 3's
    and tf-keras' `MultiHeadAttention` receives, with `[P, heads, head_dim]`
    prefix keys and values in front that every query sees
    (`prepend_attention_prefix`). The mask may come in any shape that
    broadcasts to `[B, T, S]`, as the layers build it: `[1, T, S]` for a
    causal mask alone, `[B, T, 1]` for a query mask alone, `[B, 1, S]` for a
    value mask alone; it is broadcast first, so the prefix columns line up.

    Args:
        query: `[B, T, heads, head_dim]` projected queries.
        key, value: `[B, S, heads, head_dim]` projected keys and values.
        attention_mask: broadcastable to `[B, T, S]` (1 = attend), or `None`.
        prefix_key, prefix_value: `[P, heads, head_dim]`.
        use_causal_mask: bool. Keras 3's causal-only fast path passes no
            mask and this flag, for a fused kernel that would align the
            causal triangle with the prefix; the triangle is built here over
            the real keys instead (query `i` sees real keys `j <= i`).

    Returns:
        `(key, value, mask)`: `[B, P + S, heads, head_dim]` twice and
        `[B, T, P + S]`.

    Example:
    >>> q = tf.zeros((2, 3, 2, 4)); pk = tf.ones((5, 2, 4))
    >>> k2, v2, m2 = prefix_attention_inputs(q, q, q, None, pk, pk, True)
    >>> m2.shape.as_list(), m2[0, 0].numpy().tolist()
    ([2, 3, 8], [True, True, True, True, True, True, False, False])
    """
    query = tf.convert_to_tensor(query)
    key = tf.convert_to_tensor(key)
    query_length = tf.shape(query)[1]
    if use_causal_mask:
        attention_mask = and_causal_mask(attention_mask, query_length, tf.shape(key)[1])
    return prepend_attention_prefix(
        key,
        value,
        attention_mask,
        prefix_key,
        prefix_value,
        query_length=query_length,
    )


def offset_positions(offsets, start_index, length):
    """`[B, N]` positions of `N` steps from `start_index`, shifted per example.

    Row `b` holds `offsets[b] + start_index + 0 .. N - 1`: the positions a
    sequence has when something of `offsets[b]` positions precedes it that is
    not in the sequence itself (keys and values already computed for a
    prompt, or a prefix that takes positions).

    Args:
        offsets: int `[B]`, each example's first position.
        start_index: int scalar (e.g. a cache index during decoding).
        length: int scalar N.

    Returns:
        int32 `[B, N]`.

    Example:
    >>> offset_positions(tf.constant([0, 3]), 1, 2).numpy().tolist()
    [[1, 2], [4, 5]]
    """
    offsets = tf.cast(offsets, tf.int32)
    steps = tf.cast(start_index, tf.int32) + tf.range(length, dtype=tf.int32)
    return offsets[:, None] + steps[None, :]
