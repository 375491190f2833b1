"""Keras 3 layers: `tf_softprompt.PromptEmbedding` and `PromptPrepend`.

Tiny models (V=40, H=8) are built once per module. Every check compares
numbers: a prompt equal to hard-token embeddings must reproduce the base
model, masks must reach downstream layers and the loss with the right values,
and only the `[P, H]` prompt may ever change.
"""

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

import tf_softprompt
from tf_softprompt import initializers

V, H, P, MAXLEN, CLASSES = 40, 8, 3, 16, 3
RNG = np.random.default_rng(0)
W = RNG.normal(size=(V, H)).astype("float32")
HARD = [11, 4, 27]  # the hard tokens t1..tP the soft prompt imitates
TOKENS = np.array([[1, 5, 9, 2, 7], [1, 3, 8, 6, 2]], "int32")


class Probe(keras.layers.Layer):
    """Identity that records the mask and the values it receives."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.seen_mask = None
        self.seen_inputs = None

    def call(self, inputs, mask=None):
        self.seen_mask = mask
        self.seen_inputs = inputs
        return inputs


def _frozen_embedding(mask_zero=False):
    layer = keras.layers.Embedding(V, H, mask_zero=mask_zero)
    layer.build((None, None))
    layer.embeddings.assign(W)
    return layer


class Body:
    """Position sum → self-attention block → per-token dense, shared weights."""

    def __init__(self):
        keras.utils.set_random_seed(1)
        self.position = keras_hub.layers.PositionEmbedding(MAXLEN)
        self.attention = keras.layers.MultiHeadAttention(2, 4)
        self.norm = keras.layers.LayerNormalization()
        self.dense = keras.layers.Dense(CLASSES)

    def __call__(self, x, add_position=True):
        if add_position:
            x = x + self.position(x)
        x = self.norm(x + self.attention(x, x))
        return self.dense(x)


@pytest.fixture(scope="module")
def body():
    return Body()


@pytest.fixture(scope="module")
def base_model(body):
    ids = keras.Input((None,), dtype="int32")
    return keras.Model(ids, body(_frozen_embedding()(ids)))


def _hard_inputs(offset=0):
    hard = np.broadcast_to(np.array(HARD, "int32"), (len(TOKENS), P))
    return np.concatenate([TOKENS[:, :offset], hard, TOKENS[:, offset:]], axis=1)


# Invariance -----------------------------------------------------------------


def test_form1_prompt_of_hard_token_rows_reproduces_the_base_model(body, base_model):
    layer = tf_softprompt.PromptEmbedding(
        P,
        embedding=_frozen_embedding(),
        prompt_initializer=initializers.from_token_ids(W, HARD),
    )
    ids = keras.Input((None,), dtype="int32")
    model = keras.Model(ids, body(layer(ids)))
    virtual = np.broadcast_to(np.arange(V, V + P, dtype="int32"), (len(TOKENS), P))
    soft = model(np.concatenate([virtual, TOKENS], axis=1))
    hard = base_model(_hard_inputs())
    assert soft.shape == (2, P + TOKENS.shape[1], CLASSES)
    np.testing.assert_allclose(soft, hard, atol=1e-5)


@pytest.mark.parametrize("offset", [0, 1])
def test_form2_before_positions_reproduces_the_base_model(body, base_model, offset):
    prepend = tf_softprompt.PromptPrepend(
        P, offset=offset, prompt_initializer=initializers.from_array(W[HARD])
    )
    ids = keras.Input((None,), dtype="int32")
    model = keras.Model(ids, body(prepend(_frozen_embedding()(ids))))
    np.testing.assert_allclose(
        model(TOKENS), base_model(_hard_inputs(offset)), atol=1e-5
    )


def test_prepend_wiring_decides_whether_prompts_get_positions():
    position = keras_hub.layers.PositionEmbedding(MAXLEN)
    position.build((None, None, H))
    table = position.position_embeddings.numpy()
    embedded = W[TOKENS]
    prompt = initializers.from_array(W[HARD])

    before = tf_softprompt.PromptPrepend(P, prompt_initializer=prompt)
    x = before(embedded)
    out_before = (x + position(x)).numpy()
    after = tf_softprompt.PromptPrepend(P, prompt_initializer=prompt)
    out_after = after(embedded + position(embedded)).numpy()

    T = TOKENS.shape[1]
    # Before the sum: prompts take positions 0..P-1 and the text is shifted.
    for b in range(len(TOKENS)):
        np.testing.assert_allclose(out_before[b, :P], W[HARD] + table[:P], 1e-6)
        np.testing.assert_allclose(
            out_before[b, P:], embedded[b] + table[P : P + T], 1e-6
        )
        # After the sum: prompts carry no position; the text keeps 0..T-1.
        np.testing.assert_array_equal(out_after[b, :P], W[HARD])
        np.testing.assert_allclose(out_after[b, P:], embedded[b] + table[:T], 1e-6)


# Gradients and the frozen vocabulary ---------------------------------------


def _classifier(layer):
    ids = keras.Input((None,), dtype="int32")
    x = keras.layers.GlobalAveragePooling1D()(layer(ids))
    return keras.Model(ids, keras.layers.Dense(2)(x))


def test_trainable_variables_are_exactly_the_prompt_and_gradient_is_p_by_h():
    layer = tf_softprompt.PromptEmbedding.from_matrix(W, P)
    model = _classifier(layer)
    assert len(layer.trainable_variables) == 1
    assert layer.trainable_variables[0] is layer.prompt
    assert [v.shape for v in layer.non_trainable_variables] == [(V, H)]
    ids = np.array([[V, V + 2, 3, 4]], "int32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(ids) ** 2)
    (grad,) = tape.gradient(loss, layer.trainable_variables)
    if isinstance(grad, tf.IndexedSlices):
        assert grad.dense_shape.numpy().tolist() == [P, H]
        grad = tf.convert_to_tensor(grad)
    assert grad.shape == (P, H)
    grad = grad.numpy()
    # Virtual ids V and V+2 were used; V+1 was not, so its row gets nothing.
    assert np.abs(grad[0]).sum() > 0 and np.abs(grad[2]).sum() > 0
    np.testing.assert_array_equal(grad[1], 0.0)


def test_fifty_adamw_steps_leave_the_vocabulary_bit_identical():
    layer = tf_softprompt.PromptEmbedding.from_matrix(W, P)
    model = _classifier(layer)
    optimizer = keras.optimizers.AdamW(learning_rate=0.05, weight_decay=0.1)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(True))
    ids = np.concatenate(
        [np.broadcast_to(np.arange(V, V + P), (8, P)), RNG.integers(0, V, (8, 6))], 1
    ).astype("int32")
    labels = np.arange(8) % 2
    vocab_before = layer.vocabulary.numpy().copy()
    prompt_before = layer.prompt.numpy().copy()
    steps = tf.data.Dataset.from_tensors((ids, labels)).repeat(50)
    model.fit(steps, epochs=1, verbose=0)
    assert int(optimizer.iterations.numpy()) == 50
    assert np.array_equal(layer.vocabulary.numpy(), vocab_before)
    assert np.abs(layer.prompt.numpy() - prompt_before).max() > 1e-2
    # No optimizer slot has the vocabulary's shape: nothing of size V x H.
    assert all(tuple(v.shape) != (V, H) for v in optimizer.variables)


def test_one_adam_step_moves_each_used_prompt_weight_by_the_learning_rate():
    """Adam's first step is `lr * g / (|g| + eps')`, about `lr` for any weight
    with a gradient well above `eps'`. A gradient of repeated `IndexedSlices`
    (one per use of a virtual id) breaks this in Keras 3 (a step of 0.141);
    the prompt's dense gradient keeps it."""
    layer = tf_softprompt.PromptEmbedding.from_matrix(W, P)
    model = _classifier(layer)
    ids = np.array([[V, V, 3, V + 2], [V + 2, 5, V, 0]], "int32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(ids) ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    before = layer.prompt.numpy().copy()
    keras.optimizers.Adam(learning_rate=0.1).apply_gradients(
        zip(grads, model.trainable_variables)
    )
    step = np.abs(layer.prompt.numpy() - before)
    (prompt_grad,) = [
        g for g, v in zip(grads, model.trainable_variables) if v is layer.prompt
    ]
    # Adam's epsilon shrinks the step of a weight whose gradient is tiny
    # (random init can give one); compare where it is below 0.3%.
    clear = np.abs(np.asarray(prompt_grad))[[0, 2]] > 1e-3
    assert clear.sum() >= H
    np.testing.assert_allclose(step[[0, 2]][clear], 0.1, rtol=1e-2)
    np.testing.assert_array_equal(step[1], 0.0)


def test_unfreezing_the_model_never_makes_the_vocabulary_trainable():
    """`trainable` is recursive in Keras: freezing then unfreezing a model
    (or the layer) must not switch the wrapped vocabulary back on."""
    layer = tf_softprompt.PromptEmbedding(P, input_dim=V, output_dim=H)
    model = _classifier(layer)
    for target in (model, layer):
        target.trainable = False
        frozen = sorted(tuple(v.shape) for v in model.trainable_weights)
        assert frozen == ([] if target is model else [(2,), (H, 2)])
        target.trainable = True
        shapes = sorted(tuple(v.shape) for v in model.trainable_weights)
        assert shapes == [(2,), (P, H), (H, 2)]
        assert [tuple(v.shape) for v in layer.non_trainable_weights] == [(V, H)]
        assert layer.embedding.trainable is False


# Masks ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def masked_model():
    keras.utils.set_random_seed(2)
    probe = Probe()
    ids = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(V, H, mask_zero=True)(ids)
    x = probe(tf_softprompt.PromptPrepend(P, offset=1)(x))
    recurrent = keras.layers.LSTM(4)(x)
    attended = keras.layers.MultiHeadAttention(2, 4)(x, x)
    pooled = keras.layers.GlobalAveragePooling1D()(attended)
    outputs = keras.layers.Concatenate()([recurrent, pooled])
    return keras.Model(ids, outputs), probe


def test_mask_reaching_downstream_layers_is_extended(masked_model):
    model, probe = masked_model
    padded = np.array([[1, 5, 9, 0, 0], [1, 3, 0, 0, 0]], "int32")
    model(padded)
    expected = [
        [True, True, True, True, True, True, False, False],
        [True, True, True, True, True, False, False, False],
    ]
    assert probe.seen_mask.numpy().tolist() == expected


def test_padded_batch_matches_unpadded_examples(masked_model):
    model, _ = masked_model
    padded = np.array([[1, 5, 9, 4, 0, 0], [1, 3, 0, 0, 0, 0]], "int32")
    batch = model(padded).numpy()
    for row, length in ((0, 4), (1, 2)):
        alone = model(padded[row : row + 1, :length]).numpy()
        np.testing.assert_allclose(batch[row], alone[0], atol=1e-5)


def test_masked_loss_with_extended_labels_and_weights():
    keras.utils.set_random_seed(3)
    ids = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(V, H, mask_zero=True)(ids)
    x = tf_softprompt.PromptPrepend(P, offset=1)(x)
    model = keras.Model(ids, keras.layers.Dense(CLASSES)(x))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    tokens = np.array([[1, 5, 6, 0], [1, 7, 0, 0]], "int32")
    labels = np.array([[0, 1, 2, 0], [2, 1, 0, 0]])
    weights = np.array([[1.0, 1.0, 0.5, 0.0], [1.0, 1.0, 0.0, 0.0]], "float32")
    loss = model.evaluate(
        tokens,
        tf_softprompt.extend_sequence(labels, P, 1, 0),
        sample_weight=tf_softprompt.extend_sequence(weights, P, 1, 0.0),
        verbose=0,
    )
    # By hand: cross-entropy at the real tokens' positions (the prompt sits
    # at 1..P), weighted, divided by the number of positions the extended
    # (B, P+T) mask keeps (Keras 3 averages over unmasked positions).
    logits = model(tokens).numpy()[:, [0] + list(range(1 + P, P + 4))]
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    kept = (tokens != 0).sum() + len(tokens) * P
    np.testing.assert_allclose(loss, (weights * ce).sum() / kept, rtol=1e-5)


def test_prompt_embedding_mask_zero_never_masks_virtual_tokens():
    layer = tf_softprompt.PromptEmbedding.from_matrix(W, P, mask_zero=True)
    ids = np.array([[V, V + 1, 0, 3, 0]], "int32")
    assert layer.compute_mask(ids).numpy().tolist() == [
        [True, True, False, True, False]
    ]


# Tied logits ---------------------------------------------------------------


def test_reverse_gives_logits_over_the_real_vocabulary_only():
    layer = tf_softprompt.PromptEmbedding.from_matrix(W, P)
    hidden = RNG.normal(size=(2, 3, H)).astype("float32")
    logits = layer(hidden, reverse=True).numpy()
    assert logits.shape == (2, 3, V)
    np.testing.assert_allclose(logits, hidden @ W.T, rtol=1e-5, atol=1e-5)


def test_reverse_through_a_wrapped_reversible_embedding():
    reversible = keras_hub.layers.ReversibleEmbedding(V, H, tie_weights=True)
    reversible.build((None, None))
    reversible.embeddings.assign(W)
    layer = tf_softprompt.PromptEmbedding.from_embedding(reversible, P)
    hidden = RNG.normal(size=(1, 2, H)).astype("float32")
    logits = layer(hidden, reverse=True).numpy()
    assert logits.shape == (1, 2, V)
    np.testing.assert_allclose(logits, hidden @ W.T, rtol=1e-5, atol=1e-5)
    # The matrix is shared, not copied.
    assert layer.vocabulary is reversible.embeddings


# Exact accounting ----------------------------------------------------------


def test_only_p_times_h_parameters_are_trainable():
    layer = tf_softprompt.PromptEmbedding.from_matrix(W, P)
    ids = keras.Input((None,), dtype="int32")
    model = keras.Model(ids, keras.layers.GlobalAveragePooling1D()(layer(ids)))
    assert sum(np.prod(v.shape) for v in model.trainable_weights) == P * H
    assert model.count_params() == V * H + P * H
    lines = []
    model.summary(print_fn=lambda line, line_break=None: lines.append(line))
    summary = "\n".join(lines)
    assert f"Trainable params: {P * H} " in summary
    assert f"Non-trainable params: {V * H} " in summary


def test_prepend_on_a_frozen_model_trains_only_p_times_h():
    embedding = _frozen_embedding()
    embedding.trainable = False
    dense = keras.layers.Dense(2, trainable=False)
    ids = keras.Input((None,), dtype="int32")
    x = tf_softprompt.PromptPrepend(P)(embedding(ids))
    model = keras.Model(ids, dense(keras.layers.GlobalAveragePooling1D()(x)))
    assert sum(np.prod(v.shape) for v in model.trainable_weights) == P * H
    assert model.count_params() == V * H + P * H + H * 2 + 2


# Serialization -------------------------------------------------------------


def test_get_config_round_trips_both_layers():
    embedding = tf_softprompt.PromptEmbedding.from_matrix(W, P, mask_zero=True)
    clone = tf_softprompt.PromptEmbedding.from_config(embedding.get_config())
    assert (clone.num_prompt_tokens, clone.input_dim, clone.output_dim) == (P, V, H)
    assert clone.mask_zero is True and clone.validate_ids is True
    prepend = tf_softprompt.PromptPrepend(P, offset=1, name="pp")
    clone = tf_softprompt.PromptPrepend.from_config(prepend.get_config())
    assert (clone.num_prompt_tokens, clone.offset, clone.name) == (P, 1, "pp")
    assert clone.get_config() == prepend.get_config()


def test_keras_file_round_trip_keeps_prompt_and_outputs(tmp_path):
    ids = keras.Input((None,), dtype="int32")
    embed = tf_softprompt.PromptEmbedding.from_matrix(W, P, mask_zero=True)
    prepend = tf_softprompt.PromptPrepend(2, offset=1)
    x = keras.layers.GlobalAveragePooling1D()(prepend(embed(ids)))
    model = keras.Model(ids, keras.layers.Dense(2)(x))
    inputs = np.array([[1, V, V + 2, 4, 0]], "int32")
    expected = model(inputs).numpy()
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    loaded_embed = next(
        lay for lay in loaded.layers if isinstance(lay, tf_softprompt.PromptEmbedding)
    )
    loaded_prepend = next(
        lay for lay in loaded.layers if isinstance(lay, tf_softprompt.PromptPrepend)
    )
    np.testing.assert_array_equal(loaded_embed.prompt.numpy(), embed.prompt.numpy())
    np.testing.assert_array_equal(loaded_embed.vocabulary.numpy(), W)
    np.testing.assert_array_equal(loaded_prepend.prompt.numpy(), prepend.prompt.numpy())
    assert loaded_embed.trainable_variables == [loaded_embed.prompt]
    np.testing.assert_allclose(loaded(inputs).numpy(), expected, atol=1e-6)


# Bad input -----------------------------------------------------------------


@pytest.mark.parametrize("bad_id", [-1, V + P])
def test_out_of_range_ids_raise_naming_the_range(bad_id):
    """`tf.gather` raises for a bad index on CPU but returns zeros on GPU, so
    `check_token_ids` asserts the range explicitly; the assertion runs on any
    device, eagerly and inside `tf.function` (`predict`). It cannot run under
    `jit_compile=True` (XLA drops assertions): there `prompt_lookup` yields
    NaN rows instead, and `validate_token_ids` in the `tf.data` pipeline
    raises (tests/test_ops.py, tests/test_training_core.py). Only the CPU
    path was run here; no GPU is available."""
    layer = tf_softprompt.PromptEmbedding.from_matrix(W, P)
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"\[0, {V + P}\)"):
        layer(np.array([[1, bad_id]], "int32"))
    model = _classifier(layer)
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"\[0, {V + P}\)"):
        model.predict(np.array([[1, bad_id]], "int32"), verbose=0)


def test_float_ids_and_wrong_rank_are_refused():
    layer = tf_softprompt.PromptEmbedding.from_matrix(W, P)
    with pytest.raises(TypeError, match="integer tensor"):
        layer(np.array([[1.0, 2.0]], "float32"))
    with pytest.raises(ValueError, match="rank 2"):
        layer(np.array([1, 2], "int32"))
    with pytest.raises(ValueError, match="sequence_length, hidden_dim"):
        tf_softprompt.PromptPrepend(P)(np.zeros((2, H), "float32"))


@pytest.mark.parametrize("bad_p", [0, -1, 2.0])
def test_non_positive_prompt_length_is_refused(bad_p):
    with pytest.raises(ValueError, match=rf"num_prompt_tokens={bad_p}"):
        tf_softprompt.PromptEmbedding.from_matrix(W, bad_p)
    with pytest.raises(ValueError, match=rf"num_prompt_tokens={bad_p}"):
        tf_softprompt.PromptPrepend(bad_p)


def test_negative_offset_is_refused():
    with pytest.raises(ValueError, match="offset=-1"):
        tf_softprompt.PromptPrepend(P, offset=-1)
