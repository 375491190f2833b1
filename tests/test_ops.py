"""The math core, `tf_softprompt.ops`, checked with small hand-made numbers."""

import numpy as np
import pytest
import tensorflow as tf

from tf_softprompt import attention_ops, ops, packing

V, H, P = 6, 2, 2
VOCAB = np.arange(V * H, dtype=np.float32).reshape(V, H)
PROMPT = np.array([[100.0, 101.0], [200.0, 201.0]], np.float32)


def test_prompt_lookup_sends_virtual_ids_to_the_prompt_table():
    ids = tf.constant([[6, 1, 7, 0]])
    out = ops.prompt_lookup(ids, VOCAB, PROMPT).numpy()
    np.testing.assert_array_equal(out[0], [PROMPT[0], VOCAB[1], PROMPT[1], VOCAB[0]])


def test_prompt_lookup_accepts_int64_ids():
    out = ops.prompt_lookup(tf.constant([[7, 5]], tf.int64), VOCAB, PROMPT)
    np.testing.assert_array_equal(out.numpy()[0], [PROMPT[1], VOCAB[5]])


def test_prompt_gradient_is_dense_p_by_h_and_vocabulary_gets_none():
    vocab = tf.Variable(VOCAB)
    prompt = tf.Variable(PROMPT)
    ids = tf.constant([[6, 1, 7, 7]])
    with tf.GradientTape() as tape:
        out = ops.prompt_lookup(ids, vocab, prompt)
        loss = tf.reduce_sum(out * tf.constant([1.0, 2.0]))
    grad_vocab, grad_prompt = tape.gradient(loss, [vocab, prompt])
    assert grad_vocab is None
    # Dense and summed over repeated ids: row 0 is used once, row 1 twice.
    assert isinstance(grad_prompt, tf.Tensor)
    np.testing.assert_array_equal(grad_prompt.numpy(), [[1.0, 2.0], [2.0, 4.0]])


def test_out_of_range_ids_give_nan_rows_where_asserts_cannot_run():
    """Under XLA, assertions are dropped and gathers clamp indices, so
    `prompt_lookup` returns NaN for ids outside [0, V + P) rather than a real
    (clamped) row; in-range rows are unaffected."""
    lookup = tf.function(ops.prompt_lookup, jit_compile=True)
    out = lookup(tf.constant([[8, -1, 7, 2]]), VOCAB, PROMPT).numpy()[0]
    assert np.isnan(out[0]).all() and np.isnan(out[1]).all()
    np.testing.assert_array_equal(out[2:], [PROMPT[1], VOCAB[2]])


@pytest.mark.parametrize("bad_id", [-1, V + P])
def test_check_token_ids_raises_naming_the_range(bad_id):
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[0, 8\)"):
        ops.check_token_ids(tf.constant([[1, bad_id]]), V, P)


def test_check_token_ids_raises_inside_tf_function():
    check = tf.function(lambda ids: ops.check_token_ids(ids, V, P))
    np.testing.assert_array_equal(check(tf.constant([[0, 7]])), [[0, 7]])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[0, 8\)"):
        check(tf.constant([[0, 8]]))


def test_check_token_ids_rejects_float_ids_and_wrong_rank():
    with pytest.raises(TypeError, match="dtype=float32"):
        ops.check_token_ids(tf.constant([[1.0]]), V, P)
    with pytest.raises(ValueError, match=r"rank 2.*shape=\(3,\)"):
        ops.check_token_ids(tf.constant([1, 2, 3]), V, P)


def test_validate_token_ids_catches_bad_ids_before_an_xla_step():
    """The range assertion cannot run inside `jit_compile=True`; the
    `tf.data` map is not compiled, so the error surfaces while iterating."""
    ds = tf.data.Dataset.from_tensor_slices(tf.constant([[[1, 7]], [[1, 9]]]))
    ds = ds.map(lambda ids: ops.validate_token_ids(ids, V, P))
    it = iter(ds)
    np.testing.assert_array_equal(next(it), [[1, 7]])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[0, 8\)"):
        next(it)


@pytest.mark.parametrize("dtype", [tf.uint8, tf.int16, tf.uint32])
def test_narrow_integer_ids_are_checked_and_looked_up(dtype):
    ids = ops.check_token_ids(tf.constant([[7, 2]], dtype), V, P)
    assert ids.dtype == tf.int64
    out = ops.prompt_lookup(tf.constant([[7, 2]], dtype), VOCAB, PROMPT)
    np.testing.assert_array_equal(out.numpy()[0], [PROMPT[1], VOCAB[2]])
    # uint8 cannot hold a limit such as 300; the check must not wrap around.
    ops.check_token_ids(tf.constant([[255]], tf.uint8), 300, P)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[0, 2\)"):
        ops.check_token_ids(tf.constant([[255]], tf.uint8), 1, 1)


def test_tied_logits_use_only_the_real_rows():
    hidden = np.array([[[1.0, 0.5]]], np.float32)
    logits = ops.tied_logits(tf.constant(hidden), VOCAB).numpy()
    assert logits.shape == (1, 1, V)
    np.testing.assert_allclose(logits, hidden @ VOCAB.T)


@pytest.mark.parametrize(
    "offset, expected",
    [
        (0, [True, True, True, False]),
        (1, [True, True, True, False]),
        (2, [True, False, True, True]),
    ],
)
def test_extend_mask_inserts_ones_at_the_offset(offset, expected):
    mask = tf.constant([[True, False]])
    assert ops.extend_mask(mask, 2, offset).numpy().tolist() == [expected]


def test_extend_mask_keeps_none():
    assert ops.extend_mask(None, 3) is None


def test_extend_sequence_fills_labels_and_weights_at_the_prompt_positions():
    labels = tf.constant([[5, 6, 7]])
    assert ops.extend_sequence(labels, 2, 1, -1).numpy().tolist() == [[5, -1, -1, 6, 7]]
    weights = tf.constant([[[1.0], [0.5]]])
    out = ops.extend_sequence(weights, 1, 0, 0.0).numpy()
    assert out.shape == (1, 3, 1)
    np.testing.assert_array_equal(out[0, :, 0], [0.0, 1.0, 0.5])


@pytest.mark.parametrize("bad_p", [0, -2])
def test_extend_sequence_rejects_non_positive_prompt_length(bad_p):
    with pytest.raises(ValueError, match=f"num_prompt_tokens={bad_p}"):
        ops.extend_sequence(tf.zeros((1, 2)), bad_p)


def test_prepend_prompt_places_rows_at_the_offset_for_each_example():
    embedded = tf.constant(np.arange(8, dtype=np.float32).reshape(2, 2, 2))
    out = ops.prepend_prompt(embedded, PROMPT, offset=1).numpy()
    assert out.shape == (2, 4, 2)
    for b in range(2):
        np.testing.assert_array_equal(out[b, 0], embedded[b, 0])
        np.testing.assert_array_equal(out[b, 1:3], PROMPT)
        np.testing.assert_array_equal(out[b, 3], embedded[b, 1])


def test_prepend_prompt_accepts_per_example_prompts():
    per_example = np.stack([PROMPT, -PROMPT])
    out = ops.prepend_prompt(tf.zeros((2, 1, 2)), per_example).numpy()
    np.testing.assert_array_equal(out[:, :2], per_example)


def test_offset_past_the_end_is_refused_statically_and_at_run_time():
    with pytest.raises(ValueError, match="offset=3, sequence_length=2"):
        ops.insert_along_sequence(tf.zeros((1, 2, 2)), PROMPT, 3)
    with pytest.raises(ValueError, match="offset=3, sequence_length=2"):
        ops.extend_sequence(tf.zeros((1, 2)), P, offset=3)
    dynamic = tf.function(
        lambda x: ops.extend_mask(x, P, offset=2),
        input_signature=[tf.TensorSpec((None, None), tf.bool)],
    )
    assert dynamic(tf.constant([[True, True]])).numpy().tolist() == [[True] * 4]
    with pytest.raises(tf.errors.InvalidArgumentError, match="offset=2"):
        dynamic(tf.constant([[True]]))


def test_pack_permutation_moves_valid_positions_first_stably():
    mask = tf.constant([[False, True, False, True], [True, True, False, False]])
    perm = packing.pack_permutation(mask)
    assert perm.numpy().tolist() == [[1, 3, 0, 2], [0, 1, 2, 3]]
    x = tf.constant([[10, 11, 12, 13], [20, 21, 22, 23]])
    packed = packing.gather_rows(x, perm)
    assert packed.numpy().tolist() == [[11, 13, 10, 12], [20, 21, 22, 23]]
    restored = packing.gather_rows(packed, packing.inverse_permutation(perm))
    assert restored.numpy().tolist() == x.numpy().tolist()


def test_pack_destinations_and_inverse_match_a_stable_sort():
    rng = np.random.default_rng(0)
    for length in (1, 2, 7, 33):
        mask = rng.random((5, length)) < 0.6
        keys = (~mask).astype(int)
        expected = np.argsort(keys, axis=1, kind="stable")
        perm = packing.pack_permutation(tf.constant(mask))
        assert perm.dtype == tf.int32
        np.testing.assert_array_equal(perm.numpy(), expected)
        np.testing.assert_array_equal(
            packing.pack_destinations(tf.constant(mask)).numpy(),
            np.argsort(expected, axis=1),
        )
        shuffled = np.stack([rng.permutation(length) for _ in range(3)])
        inverse = packing.inverse_permutation(tf.constant(shuffled, tf.int64))
        assert inverse.dtype == tf.int64
        np.testing.assert_array_equal(inverse.numpy(), np.argsort(shuffled, axis=1))
    dynamic = tf.function(
        packing.pack_permutation, input_signature=[tf.TensorSpec((None, None), tf.bool)]
    )
    mask = tf.constant([[False, True, False, True]])
    assert dynamic(mask).numpy().tolist() == [[1, 3, 0, 2]]
    compiled = tf.function(packing.pack_permutation, jit_compile=True)
    assert compiled(mask).numpy().tolist() == [[1, 3, 0, 2]]
    assert " sort(" not in compiled.experimental_get_compiler_ir(mask)(stage="hlo")


def test_check_prompt_shape_names_both_shapes():
    with pytest.raises(ValueError, match=r"\[3, 2\].*\[2, 2\]"):
        ops.check_prompt_shape(np.zeros((3, 2)), (2, 2))


def test_attention_prefix_broadcasts_shared_masks_before_adding_its_columns():
    # A causal mask alone comes as [1, T, S]; a key mask as [B, 1, S].
    key = tf.zeros((2, 3, 1, 4))
    prefix = tf.ones((2, 1, 4))
    causal = attention_ops.causal_mask(3, 3)[None]
    _, _, mask = attention_ops.prepend_attention_prefix(
        key, key, causal, prefix, prefix, prefix_mask=[[True, False], [True, True]]
    )
    assert mask.shape == (2, 3, 5)
    expected = np.concatenate(
        [np.broadcast_to([[1, 0]], (3, 2)), np.tril(np.ones((3, 3)))], axis=1
    )
    np.testing.assert_array_equal(mask.numpy()[0], expected.astype(bool))
    keys_only = tf.constant([[[True, True, False]], [[True, False, False]]])
    _, _, mask = attention_ops.prepend_attention_prefix(
        key, key, keys_only, prefix, prefix, query_length=3
    )
    assert mask.shape == (2, 3, 5)
    np.testing.assert_array_equal(mask.numpy()[1, 2], [1, 1, 1, 0, 0])
