"""Packing and extending a batch of token ids for a prompt, in plain TensorFlow.

A prompt-tuned model must give every example the result it would have
unpadded, whatever the padding. Rows are therefore *packed* (valid positions
first, keeping their order), the prompt's virtual ids are inserted after the
first `offset` valid tokens of each row, and the extended rows are packed
again, so that masked prompt slots (a shorter task's prompt in a multi-task
table) behave exactly like absent ones. `Extension` remembers both packings
and undoes them on outputs.

Nothing here knows keras-hub: the inputs are the `token_ids`,
`padding_mask` and `segment_ids` tensors any transformer takes, so this
module is tested on its own (`tests/test_packing.py`).

Example:
```python
inputs = {"token_ids": tf.constant([[0, 5, 6]]),
          "padding_mask": tf.constant([[False, True, True]])}
extended, extension = extend_inputs(inputs, prompt_ids=tf.constant([[100, 101]]),
                                    offset=1)
extended["token_ids"]  # [[5, 100, 101, 6, 0]]: packed, prompt after 1 token
extension.restore(tf.constant([[[1.], [2.], [3.], [4.], [5.]]]))
# [[[5.], [1.], [4.]]]: prompt slots dropped, the caller's left padding back
```
"""

import tensorflow as tf

from tf_softprompt import ops


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


class Layout:
    """Where each row's prompt slots sit in the packed, extended sequence.

    Row b's valid prompt slots are the positions `[start[b], start[b] +
    count[b])`. Hooks that work position by position (e.g. position
    embeddings for `method="prepend"`) derive what they need from this alone.

    Args:
        start: int32 `[B]`, the first prompt slot of each row.
        count: int32 `[B]`, the number of valid prompt slots of each row.
    """

    def __init__(self, start, count):
        self.start = start
        self.count = count

    def is_prompt(self, index):
        """`[B, N]` bool: which of the positions `index` (`[N]`) are slots."""
        index = tf.cast(index, tf.int32)[None]
        return tf.logical_and(
            index >= self.start[:, None], index < (self.start + self.count)[:, None]
        )

    def unprompted_positions(self, index):
        """`[B, N]` int32: the position each of `index` has without a prompt.

        Real tokens after the prompt move back by the row's prompt length,
        so they keep the positions they had before prompting; prompt slots
        get the position of the token after them (their vectors replace the
        position sum, so the value does not matter).
        """
        index = tf.cast(index, tf.int32)[None]
        before = tf.clip_by_value(index - self.start[:, None], 0, self.count[:, None])
        return index - before

    @classmethod
    def from_token_ids(cls, token_ids, padding_mask, vocab_size):
        """The layout of already-extended inputs (virtual ids are `>= V`)."""
        is_prompt = tf.logical_and(
            tf.convert_to_tensor(token_ids) >= vocab_size,
            tf.cast(padding_mask, tf.bool),
        )
        count = tf.reduce_sum(tf.cast(is_prompt, tf.int32), axis=1)
        start = tf.cast(tf.argmax(tf.cast(is_prompt, tf.int32), axis=1), tf.int32)
        return cls(start, count)


class Extension:
    """How a batch was packed and extended, to undo it on outputs.

    Made by `extend_inputs`.

    Attributes:
        perm, unpack: the packing of the caller's rows and its inverse.
        extended_perm, extended_unpack: the packing of the extended rows.
        offset: int, where the prompt went.
        width: int, W, the prompt slots inserted per row (0: packing only).
        length: the caller's sequence length T (int, or a scalar tensor).
        is_prompt: bool `[B, W + T]`, the valid prompt slots of the packed,
            extended rows.
        layout: the `Layout` of the extended rows.
    """

    def __init__(self, packing, extended_packing, offset, width, length, is_prompt):
        self.perm, self.unpack = packing
        self.extended_perm, self.extended_unpack = extended_packing
        self.offset = offset
        self.width = width
        self.length = length
        self.is_prompt = is_prompt
        self.layout = None

    def restore(self, x):
        """`[B, W + T, ...]` outputs of an extended run -> `[B, T, ...]`.

        Undoes the packing, removes the W prompt slots and returns the rows
        in the caller's layout (left padding stays left).
        """
        x = gather_rows(x, self.extended_unpack)
        if self.width:
            x = tf.concat([x[:, : self.offset], x[:, self.offset + self.width :]], 1)
        return gather_rows(x, self.unpack)

    def merge(self, extended, x):
        """Put `x` (`[B, T, ...]`, the caller's layout) back into the text
        positions of `extended` (`[B, W + T, ...]`), keeping its prompt
        slots: the inverse of `restore` at the text positions.

        Used where a caller may change the text's activations of an
        extended run (`CausalLM.score`'s `layer_intercept_fn`).
        """
        x = gather_rows(tf.convert_to_tensor(x), self.perm)
        if self.width:
            x = ops.extend_sequence(x, self.width, self.offset)
        x = gather_rows(x, self.extended_perm)
        is_prompt = tf.reshape(
            self.is_prompt,
            tf.concat(
                [tf.shape(self.is_prompt), tf.ones([x.shape.rank - 2], tf.int32)], 0
            ),
        )
        return tf.where(is_prompt, tf.cast(extended, x.dtype), x)

    def strip_generated(self, x):
        """`[B, W + T]` generated rows -> `[B, T]`, prompt slots removed.

        Generated rows stay packed (left-aligned, like a keras-hub
        preprocessor's right-padded output): the generated tokens fill what
        was padding.
        """
        keep = pack_permutation(tf.logical_not(self.is_prompt))
        return gather_rows(x, keep)[:, : self.length]

    def extend_companion(self, x, fill_value=0):
        """Pack and extend another `[B, T]` tensor (e.g. `target_ids`)."""
        x = gather_rows(tf.convert_to_tensor(x), self.perm)
        if self.width:
            x = ops.extend_sequence(x, self.width, self.offset, fill_value=fill_value)
        return gather_rows(x, self.extended_perm)


def extend_inputs(inputs, prompt_ids=None, prompt_mask=None, offset=0):
    """Pack a batch and insert per-example prompt ids after `offset` tokens.

    Args:
        inputs: dict with `token_ids` `[B, T]` and optionally `padding_mask`
            `[B, T]` and `segment_ids` `[B, T]` (prompt slots get segment 0).
        prompt_ids: int `[B, W]` ids to insert (with a static W), or `None`
            to insert nothing (W = 0: the rows are only packed).
        prompt_mask: bool `[B, W]`, False for unused slots; default all True.
        offset: int, the prompt goes after the first `offset` valid tokens
            (or after all of them in a shorter row).

    Returns:
        `(extended, extension)`: the dict of `[B, W + T]` tensors (same keys
        and dtypes as `inputs`; `padding_mask` is added if missing), and the
        `Extension` that undoes it.
    """
    token_ids = tf.convert_to_tensor(inputs["token_ids"])
    if not token_ids.dtype.is_integer:
        token_ids = tf.cast(token_ids, "int32")
    length = token_ids.shape[1]
    if length is None:
        length = tf.shape(token_ids)[1]
    padding_mask = inputs.get("padding_mask")
    if padding_mask is None:
        mask = tf.ones_like(token_ids, dtype=tf.bool)
        mask_dtype = tf.int32
    else:
        padding_mask = tf.convert_to_tensor(padding_mask)
        mask_dtype = padding_mask.dtype
        mask = tf.cast(padding_mask, tf.bool)
    if prompt_ids is None:
        # `token_ids[:, :0]` has an unknown width when T is unknown.
        prompt_ids = tf.zeros(tf.stack([tf.shape(token_ids)[0], 0]), token_ids.dtype)
        prompt_ids.set_shape([token_ids.shape[0], 0])
    prompt_ids = tf.cast(tf.convert_to_tensor(prompt_ids), token_ids.dtype)
    width = prompt_ids.shape[1]
    if width is None:
        raise ValueError(
            "`prompt_ids` must have a static second dimension (the longest "
            f"prompt). Received: shape={prompt_ids.shape}."
        )
    if prompt_mask is None:
        prompt_mask = tf.ones_like(prompt_ids, dtype=tf.bool)
    prompt_mask = tf.cast(prompt_mask, tf.bool)

    unpack = pack_destinations(mask)
    perm = inverse_permutation(unpack)
    packed_mask = gather_rows(mask, perm)
    extended_mask = ops.insert_along_sequence(packed_mask, prompt_mask, offset)
    is_prompt = ops.insert_along_sequence(
        tf.zeros_like(packed_mask), prompt_mask, offset
    )
    extended_unpack = pack_destinations(extended_mask)
    extended_perm = inverse_permutation(extended_unpack)
    extended = {
        "token_ids": ops.insert_along_sequence(
            gather_rows(token_ids, perm), prompt_ids, offset
        ),
        "padding_mask": tf.cast(extended_mask, mask_dtype),
    }
    if inputs.get("segment_ids") is not None:
        segment_ids = gather_rows(tf.convert_to_tensor(inputs["segment_ids"]), perm)
        extended["segment_ids"] = ops.insert_along_sequence(
            segment_ids, tf.zeros_like(prompt_ids, segment_ids.dtype), offset
        )
    extended = {k: gather_rows(v, extended_perm) for k, v in extended.items()}
    extension = Extension(
        (perm, unpack),
        (extended_perm, extended_unpack),
        offset,
        width,
        length,
        gather_rows(is_prompt, extended_perm),
    )
    valid = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
    extension.layout = Layout(
        tf.minimum(offset, valid),
        tf.reduce_sum(tf.cast(prompt_mask, tf.int32), axis=1),
    )
    return extended, extension
