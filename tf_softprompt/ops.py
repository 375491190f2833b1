"""The soft-prompt math, written once in plain TensorFlow ops.

The sequence math lives here: the extended-vocabulary lookup, the id
checks, inserting prompt vectors into a sequence, extending masks and
companion tensors, per-example positions. The attention math (keys and
values in front, causal masks, the prefix MLP) is in
`tf_softprompt.attention_ops`, and packing valid positions to the front of
a row in `tf_softprompt.packing`. The Keras 3 layers
(`tf_softprompt.layers`), the Keras 2 layers (`tf_softprompt.keras2`), the
keras-hub hooks and the exporter are thin shells over these functions.

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


def check_prompt_shape(value, expected_shape, what="prompt"):
    """Raise if `value`'s shape differs from `expected_shape`, naming both."""
    shape = tuple(int(d) for d in value.shape)
    expected = tuple(int(d) for d in expected_shape)
    if shape != expected:
        raise ValueError(
            f"The {what} has shape {list(shape)} but the model expects "
            f"{list(expected)}. Both shapes must match."
        )


def select_prompt_rows(values, rows):
    """Per-example rows of a prompt: `values[rows[b, w]]`, gradient dense.

    Args:
        values: `[P, ...]` tensor (a prompt table, or one layer's prefix keys).
        rows: int `[B, W]` row indices into axis 0.

    Returns:
        `[B, W, ...]`.
    """
    return _gather_rows_dense_gradient(values, tf.convert_to_tensor(rows))


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
