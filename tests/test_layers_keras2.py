"""Keras 2 (`tf_keras`) layers: `tf_softprompt.keras2.PromptEmbedding` and
`PromptPrepend`, checked with the same numbers as the Keras 3 twins."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import tf_softprompt
from tf_softprompt import initializers, keras2

V, H, P, MAXLEN, CLASSES = 40, 8, 3, 16, 3
RNG = np.random.default_rng(0)
W = RNG.normal(size=(V, H)).astype("float32")
HARD = [11, 4, 27]
TOKENS = np.array([[1, 5, 9, 2, 7], [1, 3, 8, 6, 2]], "int32")


class Position(tf_keras.layers.Layer):
    """Learned positions `[MAXLEN, H]`, sliced to the input's length."""

    def build(self, input_shape):
        self.table = self.add_weight(
            name="table",
            shape=(MAXLEN, int(input_shape[-1])),
            initializer=tf_keras.initializers.RandomNormal(seed=7),
        )

    def call(self, x):
        return x + self.table[None, : tf.shape(x)[1]]


class Probe(tf_keras.layers.Layer):
    """Identity that records the mask it receives."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.seen_mask = None

    def call(self, inputs, mask=None):
        self.seen_mask = mask
        return inputs


def _frozen_embedding(mask_zero=False):
    layer = tf_keras.layers.Embedding(V, H, mask_zero=mask_zero)
    layer.build((None, None))
    layer.embeddings.assign(W)
    return layer


class Body:
    """Position sum → LSTM and self-attention → per-token dense."""

    def __init__(self):
        tf_keras.utils.set_random_seed(1)
        self.position = Position()
        self.attention = tf_keras.layers.MultiHeadAttention(2, 4)
        self.lstm = tf_keras.layers.LSTM(H, return_sequences=True)
        self.dense = tf_keras.layers.Dense(CLASSES)

    def __call__(self, x):
        x = self.position(x)
        x = self.lstm(x + self.attention(x, x))
        return self.dense(x)


@pytest.fixture(scope="module")
def body():
    return Body()


@pytest.fixture(scope="module")
def base_model(body):
    ids = tf_keras.Input((None,), dtype="int32")
    return tf_keras.Model(ids, body(_frozen_embedding()(ids)))


def _hard_inputs(offset=0):
    hard = np.broadcast_to(np.array(HARD, "int32"), (len(TOKENS), P))
    return np.concatenate([TOKENS[:, :offset], hard, TOKENS[:, offset:]], axis=1)


def _layer_of(model, cls):
    return next(layer for layer in model.layers if isinstance(layer, cls))


# Invariance -----------------------------------------------------------------


def test_form1_prompt_of_hard_token_rows_reproduces_the_base_model(body, base_model):
    layer = keras2.PromptEmbedding(
        P,
        embedding=_frozen_embedding(),
        prompt_initializer=initializers.from_token_ids(W, HARD),
    )
    ids = tf_keras.Input((None,), dtype="int32")
    model = tf_keras.Model(ids, body(layer(ids)))
    virtual = np.broadcast_to(np.arange(V, V + P, dtype="int32"), (len(TOKENS), P))
    soft = model(np.concatenate([virtual, TOKENS], axis=1)).numpy()
    assert soft.shape == (2, P + TOKENS.shape[1], CLASSES)
    np.testing.assert_allclose(soft, base_model(_hard_inputs()), atol=1e-5)


@pytest.mark.parametrize("offset", [0, 1])
def test_form2_before_positions_reproduces_the_base_model(body, base_model, offset):
    prepend = keras2.PromptPrepend(
        P, offset=offset, prompt_initializer=initializers.from_array(W[HARD])
    )
    ids = tf_keras.Input((None,), dtype="int32")
    model = tf_keras.Model(ids, body(prepend(_frozen_embedding()(ids))))
    np.testing.assert_allclose(
        model(TOKENS), base_model(_hard_inputs(offset)), atol=1e-5
    )


# Gradients and the frozen vocabulary ---------------------------------------


def _classifier(layer):
    ids = tf_keras.Input((None,), dtype="int32")
    x = tf_keras.layers.GlobalAveragePooling1D()(layer(ids))
    return tf_keras.Model(ids, tf_keras.layers.Dense(2)(x))


def test_trainable_variables_are_exactly_the_prompt_and_gradient_is_p_by_h():
    layer = keras2.PromptEmbedding.from_matrix(W, P)
    model = _classifier(layer)
    assert layer.trainable_variables == [layer.prompt]
    assert [tuple(v.shape) for v in layer.non_trainable_variables] == [(V, H)]
    ids = np.array([[V, V + 2, 3, 4]], "int32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(ids) ** 2)
    (grad,) = tape.gradient(loss, layer.trainable_variables)
    if isinstance(grad, tf.IndexedSlices):
        assert grad.dense_shape.numpy().tolist() == [P, H]
        grad = tf.convert_to_tensor(grad)
    assert tuple(grad.shape) == (P, H)
    grad = grad.numpy()
    assert np.abs(grad[0]).sum() > 0 and np.abs(grad[2]).sum() > 0
    np.testing.assert_array_equal(grad[1], 0.0)


def test_fifty_adamw_steps_leave_the_vocabulary_bit_identical():
    layer = keras2.PromptEmbedding.from_matrix(W, P)
    model = _classifier(layer)
    optimizer = tf_keras.optimizers.AdamW(learning_rate=0.05, weight_decay=0.1)
    model.compile(optimizer, tf_keras.losses.SparseCategoricalCrossentropy(True))
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
    assert all(tuple(v.shape) != (V, H) for v in optimizer.variables())


def test_one_adam_step_moves_each_used_prompt_weight_by_the_learning_rate():
    """Adam's first step is `lr * g / (|g| + eps')`, about `lr` for any weight
    with a gradient well above `eps'`. A gradient of repeated `IndexedSlices`
    (one per use of a virtual id) breaks this in Keras 3 (a step of 0.141);
    the prompt's dense gradient keeps it."""
    layer = keras2.PromptEmbedding.from_matrix(W, P)
    model = _classifier(layer)
    ids = np.array([[V, V, 3, V + 2], [V + 2, 5, V, 0]], "int32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(ids) ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    before = layer.prompt.numpy().copy()
    tf_keras.optimizers.Adam(learning_rate=0.1).apply_gradients(
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
    """`trainable` is recursive in tf-keras (it sets `_trainable` on every
    nested layer, the wrapped embedding included); the prompt layer's weight
    lists still leave the vocabulary out."""
    layer = keras2.PromptEmbedding(P, input_dim=V, output_dim=H)
    model = _classifier(layer)
    for target in (model, layer):
        target.trainable = False
        frozen = sorted(tuple(v.shape) for v in model.trainable_weights)
        assert frozen == ([] if target is model else [(2,), (H, 2)])
        target.trainable = True
        shapes = sorted(tuple(v.shape) for v in model.trainable_weights)
        assert shapes == [(2,), (P, H), (H, 2)]
        assert [tuple(v.shape) for v in layer.non_trainable_weights] == [(V, H)]


# Masks ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def masked_model():
    tf_keras.utils.set_random_seed(2)
    probe = Probe()
    ids = tf_keras.Input((None,), dtype="int32")
    x = tf_keras.layers.Embedding(V, H, mask_zero=True)(ids)
    x = probe(keras2.PromptPrepend(P, offset=1)(x))
    recurrent = tf_keras.layers.LSTM(4)(x)
    attended = tf_keras.layers.MultiHeadAttention(2, 4)(x, x)
    pooled = tf_keras.layers.GlobalAveragePooling1D()(attended)
    outputs = tf_keras.layers.Concatenate()([recurrent, pooled])
    return tf_keras.Model(ids, outputs), probe


def test_mask_reaching_downstream_layers_is_extended(masked_model):
    model, probe = masked_model
    model(np.array([[1, 5, 9, 0, 0], [1, 3, 0, 0, 0]], "int32"))
    assert probe.seen_mask.numpy().tolist() == [
        [True, True, True, True, True, True, False, False],
        [True, True, True, True, True, False, False, False],
    ]


def test_padded_batch_matches_unpadded_examples(masked_model):
    model, _ = masked_model
    padded = np.array([[1, 5, 9, 4, 0, 0], [1, 3, 0, 0, 0, 0]], "int32")
    batch = model(padded).numpy()
    for row, length in ((0, 4), (1, 2)):
        alone = model(padded[row : row + 1, :length]).numpy()
        np.testing.assert_allclose(batch[row], alone[0], atol=1e-5)


def test_masked_loss_with_extended_labels_and_weights():
    tf_keras.utils.set_random_seed(3)
    ids = tf_keras.Input((None,), dtype="int32")
    x = tf_keras.layers.Embedding(V, H, mask_zero=True)(ids)
    x = keras2.PromptPrepend(P, offset=1)(x)
    model = tf_keras.Model(ids, tf_keras.layers.Dense(CLASSES)(x))
    model.compile(loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    tokens = np.array([[1, 5, 6, 0], [1, 7, 0, 0]], "int32")
    labels = np.array([[0, 1, 2, 0], [2, 1, 0, 0]])
    weights = np.array([[1.0, 1.0, 0.5, 0.0], [1.0, 1.0, 0.0, 0.0]], "float32")
    loss = model.evaluate(
        tokens,
        tf_softprompt.extend_sequence(labels, P, 1, 0),
        sample_weight=tf_softprompt.extend_sequence(weights, P, 1, 0.0),
        verbose=0,
    )
    logits = model(tokens).numpy()[:, [0] + list(range(1 + P, P + 4))]
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    # tf-keras multiplies the weights by the propagated (B, P+T) mask and
    # averages over the positions the mask keeps.
    kept = (tokens != 0).sum() + len(tokens) * P
    np.testing.assert_allclose(loss, (weights * ce).sum() / kept, rtol=1e-5)


# Tied logits ---------------------------------------------------------------


def test_reverse_gives_logits_over_the_real_vocabulary_only():
    layer = keras2.PromptEmbedding.from_matrix(W, P)
    hidden = RNG.normal(size=(2, 3, H)).astype("float32")
    logits = layer(hidden, reverse=True).numpy()
    assert logits.shape == (2, 3, V)
    np.testing.assert_allclose(logits, hidden @ W.T, rtol=1e-5, atol=1e-5)


# Exact accounting ----------------------------------------------------------


def test_only_p_times_h_parameters_are_trainable():
    layer = keras2.PromptEmbedding.from_matrix(W, P)
    ids = tf_keras.Input((None,), dtype="int32")
    pooled = tf_keras.layers.GlobalAveragePooling1D()(layer(ids))
    model = tf_keras.Model(ids, pooled)
    assert sum(np.prod(v.shape) for v in model.trainable_weights) == P * H
    assert model.count_params() == V * H + P * H
    lines = []
    model.summary(print_fn=lines.append)
    summary = "\n".join(lines)
    assert f"Trainable params: {P * H} " in summary
    assert f"Non-trainable params: {V * H} " in summary


def test_prepend_on_a_frozen_model_trains_only_p_times_h():
    embedding = _frozen_embedding()
    embedding.trainable = False
    dense = tf_keras.layers.Dense(2, trainable=False)
    ids = tf_keras.Input((None,), dtype="int32")
    x = keras2.PromptPrepend(P)(embedding(ids))
    pooled = tf_keras.layers.GlobalAveragePooling1D()(x)
    model = tf_keras.Model(ids, dense(pooled))
    assert sum(np.prod(v.shape) for v in model.trainable_weights) == P * H
    assert model.count_params() == V * H + P * H + H * 2 + 2


# Serialization -------------------------------------------------------------


def test_get_config_round_trips_both_layers():
    embedding = keras2.PromptEmbedding.from_matrix(W, P, mask_zero=True)
    clone = keras2.PromptEmbedding.from_config(embedding.get_config())
    assert (clone.num_prompt_tokens, clone.input_dim, clone.output_dim) == (P, V, H)
    assert clone.mask_zero is True
    assert isinstance(clone.embedding, tf_keras.layers.Embedding)
    prepend = keras2.PromptPrepend(P, offset=1, name="pp")
    clone = keras2.PromptPrepend.from_config(prepend.get_config())
    assert clone.get_config() == prepend.get_config()


@pytest.fixture(scope="module")
def saved_model_and_inputs():
    ids = tf_keras.Input((None,), dtype="int32")
    embed = keras2.PromptEmbedding.from_matrix(W, P, mask_zero=True)
    prepend = keras2.PromptPrepend(2, offset=1)
    x = tf_keras.layers.GlobalAveragePooling1D()(prepend(embed(ids)))
    model = tf_keras.Model(ids, tf_keras.layers.Dense(2)(x))
    inputs = np.array([[1, V, V + 2, 4, 0]], "int32")
    return model, inputs


@pytest.mark.parametrize("fmt", ["h5", "tf"])
def test_whole_model_round_trip_keeps_prompt_and_outputs(
    saved_model_and_inputs, tmp_path, fmt
):
    model, inputs = saved_model_and_inputs
    path = str(tmp_path / ("model.h5" if fmt == "h5" else "saved_model"))
    model.save(path, save_format=fmt)
    loaded = tf_keras.models.load_model(path)
    for cls in (keras2.PromptEmbedding, keras2.PromptPrepend):
        np.testing.assert_array_equal(
            _layer_of(loaded, cls).prompt.numpy(), _layer_of(model, cls).prompt.numpy()
        )
    loaded_embed = _layer_of(loaded, keras2.PromptEmbedding)
    np.testing.assert_array_equal(loaded_embed.vocabulary.numpy(), W)
    assert [v is loaded_embed.prompt for v in loaded_embed.trainable_variables] == [
        True
    ]
    trainable = sum(np.prod(v.shape) for v in loaded.trainable_weights)
    assert trainable == P * H + 2 * H + H * 2 + 2  # both prompts and the head
    np.testing.assert_allclose(loaded(inputs), model(inputs), atol=1e-6)


# Bad input -----------------------------------------------------------------


@pytest.mark.parametrize("bad_id", [-1, V + P])
def test_out_of_range_ids_raise_naming_the_range(bad_id):
    layer = keras2.PromptEmbedding.from_matrix(W, P)
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"\[0, {V + P}\)"):
        layer(np.array([[1, bad_id]], "int32"))
    model = _classifier(layer)
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"\[0, {V + P}\)"):
        model.predict(np.array([[1, bad_id]], "int32"), verbose=0)


def test_float_ids_and_wrong_rank_are_refused():
    layer = keras2.PromptEmbedding.from_matrix(W, P)
    with pytest.raises(TypeError, match="integer tensor"):
        layer(tf.constant([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="rank 2"):
        layer(tf.constant([1, 2]))
    with pytest.raises(ValueError, match="sequence_length, hidden_dim"):
        keras2.PromptPrepend(P)(tf.zeros((2, H)))


@pytest.mark.parametrize("bad_p", [0, -1])
def test_non_positive_prompt_length_is_refused(bad_p):
    with pytest.raises(ValueError, match=rf"num_prompt_tokens={bad_p}"):
        keras2.PromptEmbedding.from_matrix(W, bad_p)
    with pytest.raises(ValueError, match=rf"num_prompt_tokens={bad_p}"):
        keras2.PromptPrepend(bad_p)
