"""The prompt layers in both Keras flavours: `tf_softprompt.PromptEmbedding`,
`PromptPrepend` and `PrefixAttention` (Keras 3, `tf_softprompt.layers`) and
their twins in `tf_softprompt.keras2` (tf-keras).

Every test runs once per flavour through the `flavour` fixture, which names
the layer module and the Keras it builds on. A behaviour that exists in one
flavour only is a separate test saying why. Tiny models (V=40, H=8) are
built once per module and flavour. Every check compares numbers: a prompt
equal to hard-token embeddings must reproduce the base model, masks must
reach downstream layers and the loss with the right values, only the
`[P, H]` prompt may ever change, and a saved or re-created layer keeps every
constructor argument, its initialiser included. `PrefixAttention` is checked
against multi-head attention written out here in TensorFlow ops over the
wrapped layer's kernels, and against the plain attention run on extra hard
key/value inputs.
"""

import json

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import tf_softprompt
from tf_softprompt import artifact, initializers, keras2, layers
from tf_softprompt.methods import prefix as prefix_method

V, H, P, MAXLEN, CLASSES = 40, 8, 3, 16, 3
HEADS, KEY_DIM = 2, 4  # PrefixAttention's wrapped attention
RNG = np.random.default_rng(0)
W = RNG.normal(size=(V, H)).astype("float32")
HARD = [11, 4, 27]  # the hard tokens t1..tP the soft prompt imitates
TOKENS = np.array([[1, 5, 9, 2, 7], [1, 3, 8, 6, 2]], "int32")


class Flavour:
    """One Keras flavour: its Keras module (`K`), its prompt layers and the
    few helpers whose API differs between Keras 3 and tf-keras."""

    def __init__(self, name, K, module, position):
        self.name = name
        self.K = K
        self.PromptEmbedding = module.PromptEmbedding
        self.PromptPrepend = module.PromptPrepend
        self.PrefixAttention = module.PrefixAttention
        self._position = position

    def __repr__(self):
        return self.name

    def position(self):
        """A learned position layer: `(B, T, H) -> (B, T, H)` positions."""
        return self._position()

    def embedding(self, mask_zero=False):
        """An `Embedding` holding W."""
        layer = self.K.layers.Embedding(V, H, mask_zero=mask_zero)
        layer.build((None, None))
        layer.embeddings.assign(W)
        return layer

    def attention(self, seed=0, num_heads=HEADS, key_dim=KEY_DIM, dtype=None):
        """A built `MultiHeadAttention` on `[B, T, H]` inputs, every kernel and
        bias drawn from N(0, 0.5²) with `seed` (the same values in both
        flavours, which list the weights in the same order)."""
        layer = self.K.layers.MultiHeadAttention(num_heads, key_dim, dtype=dtype)
        x = np.zeros((1, 2, H), "float32")
        layer(x, x)
        rng = np.random.default_rng(seed)
        for weight in layer.weights:
            weight.assign(rng.normal(scale=0.5, size=weight.shape).astype("float32"))
        return layer

    def model(self, build):
        """A functional model `ids -> build(ids)` over int ids `(B, None)`."""
        ids = self.K.Input((None,), dtype="int32")
        return self.K.Model(ids, build(ids))

    def optimizer_variables(self, optimizer):
        variables = optimizer.variables
        return variables() if callable(variables) else variables

    def summary(self, model):
        lines = []
        # Keras 3 passes `line_break=`; tf-keras passes the line only.
        model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
        return "\n".join(lines)


class _Keras2Position(tf_keras.layers.Layer):
    """Learned positions `[MAXLEN, H]`, sliced to the input's length (keras-hub's
    `PositionEmbedding` is Keras 3 only)."""

    def build(self, input_shape):
        self.table = self.add_weight(
            name="table",
            shape=(MAXLEN, int(input_shape[-1])),
            initializer=tf_keras.initializers.RandomNormal(seed=7),
        )

    def call(self, x):
        return tf.broadcast_to(self.table[None, : tf.shape(x)[1]], tf.shape(x))


KERAS3 = Flavour(
    "keras3", keras, layers, lambda: keras_hub.layers.PositionEmbedding(MAXLEN)
)
KERAS2 = Flavour("keras2", tf_keras, keras2, _Keras2Position)


@pytest.fixture(scope="module", params=[KERAS3, KERAS2], ids=repr)
def flavour(request):
    return request.param


def _probe(flavour):
    """An identity layer that records the mask it receives."""

    class Probe(flavour.K.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.supports_masking = True
            self.seen_mask = None

        def call(self, inputs, mask=None):
            self.seen_mask = mask
            return inputs

    return Probe()


class Body:
    """Position sum → self-attention block → LSTM → per-token dense.

    The same layer objects (and weights) serve every model built on it.
    """

    def __init__(self, flavour):
        K = flavour.K
        K.utils.set_random_seed(1)
        self.position = flavour.position()
        self.attention = K.layers.MultiHeadAttention(2, 4)
        self.norm = K.layers.LayerNormalization()
        self.lstm = K.layers.LSTM(H, return_sequences=True)
        self.dense = K.layers.Dense(CLASSES)
        self.add = K.layers.Add

    def __call__(self, x):
        x = self.add()([x, self.position(x)])
        x = self.norm(self.add()([x, self.attention(x, x)]))
        return self.dense(self.lstm(x))


@pytest.fixture(scope="module")
def body(flavour):
    return Body(flavour)


@pytest.fixture(scope="module")
def base_model(flavour, body):
    return flavour.model(lambda ids: body(flavour.embedding()(ids)))


def _hard_inputs(offset=0):
    hard = np.broadcast_to(np.array(HARD, "int32"), (len(TOKENS), P))
    return np.concatenate([TOKENS[:, :offset], hard, TOKENS[:, offset:]], axis=1)


def _layer_of(model, cls):
    return next(layer for layer in model.layers if isinstance(layer, cls))


# Invariance -----------------------------------------------------------------


def test_form1_prompt_of_hard_token_rows_reproduces_the_base_model(
    flavour, body, base_model
):
    layer = flavour.PromptEmbedding(
        P,
        embedding=flavour.embedding(),
        prompt_initializer=initializers.from_token_ids(W, HARD),
    )
    model = flavour.model(lambda ids: body(layer(ids)))
    virtual = np.broadcast_to(np.arange(V, V + P, dtype="int32"), (len(TOKENS), P))
    soft = np.asarray(model(np.concatenate([virtual, TOKENS], axis=1)))
    assert soft.shape == (2, P + TOKENS.shape[1], CLASSES)
    np.testing.assert_allclose(soft, base_model(_hard_inputs()), atol=1e-5)


@pytest.mark.parametrize("offset", [0, 1])
def test_form2_before_positions_reproduces_the_base_model(
    flavour, body, base_model, offset
):
    prepend = flavour.PromptPrepend(
        P, offset=offset, prompt_initializer=initializers.from_array(W[HARD])
    )
    model = flavour.model(lambda ids: body(prepend(flavour.embedding()(ids))))
    np.testing.assert_allclose(
        model(TOKENS), base_model(_hard_inputs(offset)), atol=1e-5
    )


def test_prepend_wiring_decides_whether_prompts_get_positions(flavour):
    position = flavour.position()
    # The position table, read by running the layer on a MAXLEN-long input.
    table = np.asarray(position(np.zeros((1, MAXLEN, H), "float32")))[0]
    embedded = W[TOKENS]
    prompt = initializers.from_array(W[HARD])

    before = flavour.PromptPrepend(P, prompt_initializer=prompt)
    x = before(embedded)
    out_before = np.asarray(x + position(x))
    after = flavour.PromptPrepend(P, prompt_initializer=prompt)
    out_after = np.asarray(after(embedded + position(embedded)))

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


def _classifier(flavour, layer):
    K = flavour.K
    return flavour.model(
        lambda ids: K.layers.Dense(2)(K.layers.GlobalAveragePooling1D()(layer(ids)))
    )


def test_trainable_variables_are_exactly_the_prompt_and_gradient_is_p_by_h(flavour):
    layer = flavour.PromptEmbedding.from_matrix(W, P)
    model = _classifier(flavour, layer)
    assert [v is layer.prompt for v in layer.trainable_variables] == [True]
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
    # Virtual ids V and V+2 were used; V+1 was not, so its row gets nothing.
    assert np.abs(grad[0]).sum() > 0 and np.abs(grad[2]).sum() > 0
    np.testing.assert_array_equal(grad[1], 0.0)


def test_fifty_adamw_steps_leave_the_vocabulary_bit_identical(flavour):
    K = flavour.K
    layer = flavour.PromptEmbedding.from_matrix(W, P)
    model = _classifier(flavour, layer)
    optimizer = K.optimizers.AdamW(learning_rate=0.05, weight_decay=0.1)
    model.compile(optimizer, K.losses.SparseCategoricalCrossentropy(True))
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
    variables = flavour.optimizer_variables(optimizer)
    assert all(tuple(v.shape) != (V, H) for v in variables)


def test_one_adam_step_moves_each_used_prompt_weight_by_the_learning_rate(flavour):
    """Adam's first step is `lr * g / (|g| + eps')`, about `lr` for any weight
    with a gradient well above `eps'`. A gradient of repeated `IndexedSlices`
    (one per use of a virtual id) breaks this in Keras 3 (a step of 0.141);
    the prompt's dense gradient keeps it."""
    layer = flavour.PromptEmbedding.from_matrix(W, P)
    model = _classifier(flavour, layer)
    ids = np.array([[V, V, 3, V + 2], [V + 2, 5, V, 0]], "int32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(ids) ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    before = layer.prompt.numpy().copy()
    flavour.K.optimizers.Adam(learning_rate=0.1).apply_gradients(
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


def test_unfreezing_the_model_never_makes_the_vocabulary_trainable(flavour):
    """`trainable` is recursive in Keras: freezing then unfreezing a model
    (or the layer) must not switch the wrapped vocabulary back on. Keras 3
    decides per variable, so the layer re-freezes its embedding sublayer;
    tf-keras sets `_trainable` on every nested layer directly (the wrapped
    embedding included), and the prompt layer's weight lists leave the
    vocabulary out. Either way an optimizer step leaves it unchanged."""
    K = flavour.K
    layer = flavour.PromptEmbedding(P, input_dim=V, output_dim=H)
    model = _classifier(flavour, layer)
    for target in (model, layer):
        target.trainable = False
        frozen = sorted(tuple(v.shape) for v in model.trainable_weights)
        assert frozen == ([] if target is model else [(2,), (H, 2)])
        target.trainable = True
        shapes = sorted(tuple(v.shape) for v in model.trainable_weights)
        assert shapes == [(2,), (P, H), (H, 2)]
        assert [tuple(v.shape) for v in layer.non_trainable_weights] == [(V, H)]
        if flavour is KERAS3:
            assert layer.embedding.trainable is False
    vocab_before = layer.vocabulary.numpy().copy()
    prompt_before = layer.prompt.numpy().copy()
    model.compile(K.optimizers.SGD(1.0), K.losses.SparseCategoricalCrossentropy(True))
    ids = np.array([[V, 3, 4, V + 1], [5, 6, V + 2, 7]], "int32")
    model.fit(ids, np.array([0, 1]), epochs=1, verbose=0)
    assert np.array_equal(layer.vocabulary.numpy(), vocab_before)
    assert np.abs(layer.prompt.numpy() - prompt_before).max() > 1e-4


# Masks ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def masked_model(flavour):
    K = flavour.K
    K.utils.set_random_seed(2)
    probe = _probe(flavour)

    def build(ids):
        x = K.layers.Embedding(V, H, mask_zero=True)(ids)
        x = probe(flavour.PromptPrepend(P, offset=1)(x))
        recurrent = K.layers.LSTM(4)(x)
        attended = K.layers.MultiHeadAttention(2, 4)(x, x)
        pooled = K.layers.GlobalAveragePooling1D()(attended)
        return K.layers.Concatenate()([recurrent, pooled])

    return flavour.model(build), probe


def test_mask_reaching_downstream_layers_is_extended(masked_model):
    model, probe = masked_model
    # The last row's first position is masked: only there does the mask
    # show that the P `True`s go in at offset 1, not 0.
    model(np.array([[1, 5, 9, 0, 0], [1, 3, 0, 0, 0], [0, 4, 0, 0, 0]], "int32"))
    assert np.asarray(probe.seen_mask).tolist() == [
        [True, True, True, True, True, True, False, False],
        [True, True, True, True, True, False, False, False],
        [False, True, True, True, True, False, False, False],
    ]


def test_padded_batch_matches_unpadded_examples(masked_model):
    model, _ = masked_model
    padded = np.array([[1, 5, 9, 4, 0, 0], [1, 3, 0, 0, 0, 0]], "int32")
    batch = np.asarray(model(padded))
    for row, length in ((0, 4), (1, 2)):
        alone = np.asarray(model(padded[row : row + 1, :length]))
        np.testing.assert_allclose(batch[row], alone[0], atol=1e-5)


def test_masked_loss_with_extended_labels_and_weights(flavour):
    K = flavour.K
    K.utils.set_random_seed(3)
    model = flavour.model(
        lambda ids: K.layers.Dense(CLASSES)(
            flavour.PromptPrepend(P, offset=1)(
                K.layers.Embedding(V, H, mask_zero=True)(ids)
            )
        )
    )
    model.compile(loss=K.losses.SparseCategoricalCrossentropy(from_logits=True))
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
    # (B, P+T) mask keeps (both flavours multiply the weights by the
    # propagated mask and average over the unmasked positions).
    logits = np.asarray(model(tokens))[:, [0] + list(range(1 + P, P + 4))]
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    kept = (tokens != 0).sum() + len(tokens) * P
    np.testing.assert_allclose(loss, (weights * ce).sum() / kept, rtol=1e-5)


def test_prompt_embedding_mask_zero_never_masks_virtual_tokens(flavour):
    layer = flavour.PromptEmbedding.from_matrix(W, P, mask_zero=True)
    ids = np.array([[V, V + 1, 0, 3, 0]], "int32")
    assert np.asarray(layer.compute_mask(ids)).tolist() == [
        [True, True, False, True, False]
    ]


# Tied logits ---------------------------------------------------------------


def test_reverse_gives_logits_over_the_real_vocabulary_only(flavour):
    layer = flavour.PromptEmbedding.from_matrix(W, P)
    hidden = RNG.normal(size=(2, 3, H)).astype("float32")
    logits = np.asarray(layer(hidden, reverse=True))
    assert logits.shape == (2, 3, V)
    np.testing.assert_allclose(logits, hidden @ W.T, rtol=1e-5, atol=1e-5)


def test_keras3_reverse_through_a_wrapped_reversible_embedding():
    """Keras 3 only: keras-hub's `ReversibleEmbedding` is a Keras 3 layer."""
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


def test_only_p_times_h_parameters_are_trainable(flavour):
    layer = flavour.PromptEmbedding.from_matrix(W, P)
    model = flavour.model(
        lambda ids: flavour.K.layers.GlobalAveragePooling1D()(layer(ids))
    )
    assert sum(np.prod(v.shape) for v in model.trainable_weights) == P * H
    assert model.count_params() == V * H + P * H
    summary = flavour.summary(model)
    assert f"Trainable params: {P * H} " in summary
    assert f"Non-trainable params: {V * H} " in summary


def test_prepend_on_a_frozen_model_trains_only_p_times_h(flavour):
    K = flavour.K
    embedding = flavour.embedding()
    embedding.trainable = False
    dense = K.layers.Dense(2, trainable=False)
    model = flavour.model(
        lambda ids: dense(
            K.layers.GlobalAveragePooling1D()(flavour.PromptPrepend(P)(embedding(ids)))
        )
    )
    assert sum(np.prod(v.shape) for v in model.trainable_weights) == P * H
    assert model.count_params() == V * H + P * H + H * 2 + 2


# Serialisation -------------------------------------------------------------

WORDS = {"great": [5], "terrible": [6, 7]}


def _seeded_initializers(flavour, vocabulary):
    """Seeded initialisers of every kind, keyed by a test id. Vocabulary-based
    ones are included only when `vocabulary` is True."""
    found = {
        "uniform": initializers.uniform(scale=0.2, seed=3),
        "from_array": initializers.from_array(W[HARD] * 0.5),
        "keras": flavour.K.initializers.RandomNormal(stddev=0.3, seed=5),
    }
    if vocabulary:
        found.update(
            {
                "sample": initializers.from_sample_of_embeddings(
                    W, population_size=10, seed=3
                ),
                "token_ids": initializers.from_token_ids(
                    W, [HARD[0], HARD[1:]], fallback=initializers.uniform(seed=8)
                ),
                "label_words": initializers.from_label_words(
                    W,
                    ["great", "terrible"],
                    WORDS.get,
                    fallback=initializers.from_sample_of_embeddings(W, seed=1),
                ),
            }
        )
    return found


def _json_round_trip(config):
    """The config as a saved model file holds it."""
    return json.loads(json.dumps(config))


def _constructor_config(config):
    """A `PrefixAttention` config without the wrapped attention's
    `build_config`: tf-keras records there the shapes of the attention's
    first call (`[None, None, 8]` in a reloaded functional model), which are
    not a constructor argument."""
    config = _json_round_trip(config)
    config["attention"].pop("build_config", None)
    return config


def test_get_config_round_trips_every_constructor_argument(flavour):
    init = initializers.from_token_ids(W, [HARD[0]], fallback=initializers.uniform())
    embedding = flavour.PromptEmbedding.from_matrix(
        W,
        P,
        mask_zero=True,
        validate_ids=False,
        prompt_initializer=init,
        name="pe",
        dtype="float64",
    )
    config = embedding.get_config()
    assert config["prompt_initializer"] == {
        "name": "from_token_ids",
        "args": {
            "token_ids": [[HARD[0]]],
            "fallback": {"name": "uniform", "args": {"scale": 0.5, "seed": None}},
        },
    }
    clone = flavour.PromptEmbedding.from_config(_json_round_trip(config))
    assert (clone.num_prompt_tokens, clone.input_dim, clone.output_dim) == (P, V, H)
    assert clone.mask_zero is True and clone.validate_ids is False
    assert (clone.name, clone.compute_dtype) == ("pe", "float64")
    assert isinstance(clone.embedding, flavour.K.layers.Embedding)
    assert clone.prompt_initializer.description == init.description
    # tf-keras rebuilds the wrapped Embedding unbuilt (Keras 3 builds it), and
    # a built layer's config records its `build_config`.
    clone.build((None, None))
    assert _json_round_trip(clone.get_config()) == _json_round_trip(config)

    prepend = flavour.PromptPrepend(
        P,
        offset=1,
        prompt_initializer=initializers.uniform(scale=0.1, seed=2),
        name="pp",
    )
    config = prepend.get_config()
    assert config["prompt_initializer"] == {
        "name": "uniform",
        "args": {"scale": 0.1, "seed": 2},
    }
    clone = flavour.PromptPrepend.from_config(_json_round_trip(config))
    assert (clone.num_prompt_tokens, clone.offset, clone.name) == (P, 1, "pp")
    assert _json_round_trip(clone.get_config()) == _json_round_trip(config)


@pytest.mark.parametrize(
    "kind", ["uniform", "from_array", "keras", "sample", "token_ids", "label_words"]
)
def test_re_created_prompt_embedding_initialises_the_same_prompt(flavour, kind):
    """A vocabulary-based initialiser is rebuilt without its `[V, H]` matrix
    and reads the re-created layer's own vocabulary."""
    init = _seeded_initializers(flavour, vocabulary=True)[kind]
    layer = flavour.PromptEmbedding.from_matrix(W, P, prompt_initializer=init)
    layer.build((None, None))
    config = _json_round_trip(layer.get_config())
    clone = flavour.PromptEmbedding.from_config(config)
    clone.embedding.build((None, None))
    clone.embedding.embeddings.assign(W)  # the weights a load restores
    clone.build((None, None))
    np.testing.assert_array_equal(clone.prompt.numpy(), layer.prompt.numpy())
    assert _json_round_trip(clone.get_config()) == config


@pytest.mark.parametrize("kind", ["uniform", "from_array", "keras"])
def test_re_created_prompt_prepend_initialises_the_same_prompt(flavour, kind):
    init = _seeded_initializers(flavour, vocabulary=False)[kind]
    layer = flavour.PromptPrepend(P, offset=1, prompt_initializer=init)
    layer.build((None, None, H))
    config = _json_round_trip(layer.get_config())
    clone = flavour.PromptPrepend.from_config(config)
    clone.build((None, None, H))
    np.testing.assert_array_equal(clone.prompt.numpy(), layer.prompt.numpy())
    assert _json_round_trip(clone.get_config()) == config


def test_old_uniform_string_configs_still_load(flavour):
    """Configs saved before initialisers had configs hold `"uniform"`."""
    config = flavour.PromptPrepend(P, offset=1).get_config()
    config["prompt_initializer"] = "uniform"
    clone = flavour.PromptPrepend.from_config(config)
    assert clone.get_config()["prompt_initializer"] == {
        "name": "uniform",
        "args": {"scale": 0.5, "seed": None},
    }


@pytest.mark.parametrize("kind", ["sample", "token_ids", "label_words"])
def test_prompt_prepend_refuses_to_save_a_vocabulary_initializer(flavour, kind):
    """`PromptPrepend` holds no vocabulary to rebuild the initialiser with,
    and loading a model runs the initialiser (at build) before restoring the
    prompt, so it refuses at save time, naming the fix."""
    init = _seeded_initializers(flavour, vocabulary=True)[kind]
    layer = flavour.PromptPrepend(P, prompt_initializer=init, name="pp")
    with pytest.raises(ValueError, match=r"'pp'.*reads the \[V, H\] vocabulary") as e:
        layer.get_config()
    assert init.description in str(e.value)
    assert "from_array(init((num_prompt_tokens, hidden_dim)))" in str(e.value)
    # The fix it names: the same values, stored in the config.
    fixed = flavour.PromptPrepend(
        P, prompt_initializer=initializers.from_array(init((P, H)))
    )
    fixed.build((None, None, H))
    clone = flavour.PromptPrepend.from_config(_json_round_trip(fixed.get_config()))
    clone.build((None, None, H))
    np.testing.assert_array_equal(clone.prompt.numpy(), np.asarray(init((P, H))))


def test_saving_a_model_with_an_unrecorded_initializer_raises(flavour, tmp_path):
    """A plain callable's arguments are unknown: saving refuses it instead
    of writing another initialiser into the config."""

    def halves(shape, dtype=None):
        return tf.fill(shape, tf.constant(0.5, dtype or tf.float32))

    layer = flavour.PromptEmbedding.from_matrix(
        W, P, prompt_initializer=halves, name="pe"
    )
    np.testing.assert_array_equal(layer(np.array([[V]], "int32"))[0, 0], 0.5)
    with pytest.raises(ValueError, match=r"'pe'.*halves.*from_array\(values\)"):
        layer.get_config()
    model = _classifier(flavour, layer)
    path = str(tmp_path / ("model.keras" if flavour is KERAS3 else "model.h5"))
    with pytest.raises(ValueError, match=r"'pe'.*halves"):
        model.save(path)


def test_a_vocabulary_config_without_a_vocabulary_is_refused():
    config = initializers.serialize(initializers.from_token_ids(W, [1]))
    with pytest.raises(ValueError, match=r"'from_token_ids'.*vocabulary=embedding"):
        tf_softprompt.PromptPrepend(P, prompt_initializer=config)


def _round_trip_model(flavour):
    K = flavour.K
    embed = flavour.PromptEmbedding.from_matrix(
        W,
        P,
        mask_zero=True,
        prompt_initializer=initializers.from_token_ids(
            W, HARD[:2], fallback=initializers.uniform(scale=0.2, seed=5)
        ),
    )
    prepend = flavour.PromptPrepend(
        2, offset=1, prompt_initializer=initializers.uniform(scale=0.1, seed=4)
    )
    model = flavour.model(
        lambda ids: K.layers.Dense(2)(
            K.layers.GlobalAveragePooling1D()(prepend(embed(ids)))
        )
    )
    # Trained prompts differ from their initial values.
    for layer in (embed, prepend):
        layer.prompt.assign(layer.prompt + 1.0)
    return model


@pytest.fixture(scope="module")
def round_trip_models():
    return {flavour.name: _round_trip_model(flavour) for flavour in (KERAS3, KERAS2)}


@pytest.mark.parametrize(
    "flavour_name, fmt",
    [("keras3", "keras"), ("keras2", "h5"), ("keras2", "tf"), ("keras2", "keras")],
)
def test_whole_model_round_trip_keeps_prompts_outputs_and_configs(
    round_trip_models, tmp_path, flavour_name, fmt
):
    """Keras 3 saves `.keras` files; tf-keras also h5 and the SavedModel
    ("tf") format."""
    flavour = {"keras3": KERAS3, "keras2": KERAS2}[flavour_name]
    model = round_trip_models[flavour_name]
    inputs = np.array([[1, V, V + 2, 4, 0]], "int32")
    path = str(tmp_path / {"keras": "m.keras", "h5": "m.h5", "tf": "saved_model"}[fmt])
    if flavour is KERAS3:
        model.save(path)
    else:
        model.save(path, save_format=fmt)
    loaded = flavour.K.models.load_model(path)
    for cls in (flavour.PromptEmbedding, flavour.PromptPrepend):
        original, again = _layer_of(model, cls), _layer_of(loaded, cls)
        np.testing.assert_array_equal(again.prompt.numpy(), original.prompt.numpy())
        assert _json_round_trip(again.get_config()) == _json_round_trip(
            original.get_config()
        )
        # The initialiser kept its arguments (the embedding's reads the
        # loaded vocabulary): the same starting prompt as the original's.
        np.testing.assert_array_equal(
            again.prompt_initializer(tuple(original.prompt.shape)),
            original.prompt_initializer(tuple(original.prompt.shape)),
        )
    loaded_embed = _layer_of(loaded, flavour.PromptEmbedding)
    np.testing.assert_array_equal(loaded_embed.vocabulary.numpy(), W)
    assert [v is loaded_embed.prompt for v in loaded_embed.trainable_variables] == [
        True
    ]
    trainable = sum(np.prod(v.shape) for v in loaded.trainable_weights)
    assert trainable == P * H + 2 * H + H * 2 + 2  # both prompts and the head
    np.testing.assert_allclose(loaded(inputs), model(inputs), atol=1e-6)


# Bad input -----------------------------------------------------------------


@pytest.mark.parametrize("bad_id", [-1, V + P])
def test_out_of_range_ids_raise_naming_the_range(flavour, bad_id):
    """`tf.gather` raises for a bad index on CPU but returns zeros on GPU, so
    `check_token_ids` asserts the range explicitly; the assertion runs on any
    device, eagerly and inside `tf.function` (`predict`). It cannot run under
    `jit_compile=True` (XLA drops assertions): there `prompt_lookup` yields
    NaN rows instead, and `validate_token_ids` in the `tf.data` pipeline
    raises (tests/test_ops.py, tests/test_training_core.py). Only the CPU
    path was run here; no GPU is available."""
    layer = flavour.PromptEmbedding.from_matrix(W, P)
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"\[0, {V + P}\)"):
        layer(np.array([[1, bad_id]], "int32"))
    model = _classifier(flavour, layer)
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"\[0, {V + P}\)"):
        model.predict(np.array([[1, bad_id]], "int32"), verbose=0)


@pytest.mark.parametrize("as_tensor", [False, True], ids=["numpy", "tensor"])
def test_float_ids_and_wrong_rank_are_refused(flavour, as_tensor):
    convert = tf.constant if as_tensor else np.asarray
    layer = flavour.PromptEmbedding.from_matrix(W, P)
    with pytest.raises(TypeError, match="integer tensor"):
        layer(convert(np.array([[1.0, 2.0]], "float32")))
    with pytest.raises(ValueError, match="rank 2"):
        layer(convert(np.array([1, 2], "int32")))
    with pytest.raises(ValueError, match="sequence_length, hidden_dim"):
        flavour.PromptPrepend(P)(convert(np.zeros((2, H), "float32")))


@pytest.mark.parametrize("bad_p", [0, -1, 2.0])
def test_non_positive_prompt_length_is_refused(flavour, bad_p):
    with pytest.raises(ValueError, match=rf"num_prompt_tokens={bad_p}"):
        flavour.PromptEmbedding.from_matrix(W, bad_p)
    with pytest.raises(ValueError, match=rf"num_prompt_tokens={bad_p}"):
        flavour.PromptPrepend(bad_p)


def test_negative_offset_is_refused(flavour):
    with pytest.raises(ValueError, match="offset=-1"):
        flavour.PromptPrepend(P, offset=-1)


# Prefix attention (form 3) ---------------------------------------------------

PREFIX = RNG.normal(size=(2, P, HEADS, KEY_DIM)).astype("float32")
PADDED = np.array([[1, 5, 0, 9, 0], [4, 3, 8, 6, 2]], "int32")
SOURCE = np.array([[7, 2, 9, 4, 1, 3], [6, 8, 5, 2, 9, 1]], "int32")
NO_PREFIX = np.zeros((2, 0, HEADS, KEY_DIM), "float32")


def _projections(attention):
    """`{name: (kernel, bias)}` of the attention's four projections."""
    return {
        "query": attention._query_dense,
        "key": attention._key_dense,
        "value": attention._value_dense,
        "attention_output": attention._output_dense,
    }


def _reference_attention(attention, query, value, prefix, visible, key=None):
    """Multi-head attention written out in TensorFlow ops, in float64.

    The queries attend to the P prefix keys/values (always) and to the
    projected real keys/values where `visible` (`[B, T, S]` bool) is True.

    Returns:
        `(outputs [B, T, H], probabilities [B, heads, T, P + S])`.
    """

    def project(x, name):
        dense = _projections(attention)[name]
        kernel, bias = (tf.cast(w, tf.float64) for w in (dense.kernel, dense.bias))
        return tf.einsum("bse,end->bsnd", tf.cast(x, tf.float64), kernel) + bias

    key = value if key is None else key
    q, k, v = project(query, "query"), project(key, "key"), project(value, "value")
    batch, queries = q.shape[0], q.shape[1]
    prefix = tf.cast(prefix, tf.float64)
    k = tf.concat([tf.broadcast_to(prefix[0], (batch, *prefix.shape[1:])), k], 1)
    v = tf.concat([tf.broadcast_to(prefix[1], (batch, *prefix.shape[1:])), v], 1)
    visible = np.concatenate(
        [np.ones((batch, queries, prefix.shape[1]), bool), visible], axis=2
    )
    scores = tf.einsum("btnd,bsnd->bnts", q, k) / np.sqrt(KEY_DIM)
    probabilities = tf.nn.softmax(tf.where(visible[:, None], scores, -np.inf), -1)
    context = tf.einsum("bnts,bsnd->btnd", probabilities, v)
    dense = _projections(attention)["attention_output"]
    outputs = tf.einsum("btnd,nde->bte", context, tf.cast(dense.kernel, tf.float64))
    return outputs + tf.cast(dense.bias, tf.float64), probabilities


def _prefix_layer(flavour, attention=None, prefix=PREFIX, **kwargs):
    return flavour.PrefixAttention(
        P,
        attention or flavour.attention(),
        prefix_initializer=initializers.from_array(prefix),
        **kwargs,
    )


def _causal(queries, keys):
    return np.tril(np.ones((queries, keys), bool))


@pytest.mark.parametrize(
    "case",
    [
        "no_mask",
        "padding",
        "causal",
        "padding_causal",
        "attention_mask",
        "cross_query_padding",
    ],
)
def test_prefix_attention_matches_the_reference_under_every_mask(flavour, case):
    """Keras masks (from `mask_zero` embeddings), `use_causal_mask` (Keras 3
    takes its causal-only fast path when no other mask is present) and an
    explicit `attention_mask` all restrict the real keys only: every query,
    a padded one included, sees the P prefix keys."""
    K = flavour.K
    layer = _prefix_layer(flavour)
    padded, cross = "padding" in case, case.startswith("cross")
    query_ids = K.Input((None,), dtype="int32")
    inputs, feeds = [query_ids], [PADDED]
    query = flavour.embedding(mask_zero=padded)(query_ids)
    value, value_ids = query, PADDED
    if cross:  # a masked query over an unmasked, longer source
        inputs.append(K.Input((None,), dtype="int32"))
        feeds.append(SOURCE)
        value, value_ids = flavour.embedding()(inputs[-1]), SOURCE
    (batch, queries), keys = PADDED.shape, value_ids.shape[1]
    visible = np.ones((batch, queries, keys), bool)
    kwargs = {}
    if padded:
        visible &= (PADDED != 0)[:, :, None]
        if not cross:
            visible &= (PADDED != 0)[:, None, :]
    if "causal" in case:
        kwargs["use_causal_mask"] = True
        visible &= _causal(queries, keys)
    if case == "attention_mask":
        explicit = np.random.default_rng(3).random(visible.shape) > 0.4
        inputs.append(K.Input((None, None), dtype="bool"))
        feeds.append(explicit)
        kwargs["attention_mask"] = inputs[-1]
        visible &= explicit
    model = K.Model(inputs, layer(query, value, **kwargs))
    outputs = np.asarray(model(feeds))
    assert outputs.shape == (batch, queries, H)
    expected, _ = _reference_attention(
        layer.attention, W[PADDED], W[value_ids], PREFIX, visible
    )
    np.testing.assert_allclose(outputs, expected, atol=1e-5)


def test_a_prefix_of_projected_extra_inputs_equals_attending_to_those_inputs(flavour):
    """Independent of the reference above: with the prefix set to the keys
    and values the attention's own projections make of P extra key and
    value vectors, the layer gives what the plain attention gives over the
    extra vectors concatenated in front of `key` and `value` (non-causal;
    the attention has no positions)."""
    attention = flavour.attention()
    rng = np.random.default_rng(5)
    extra_key, extra_value = rng.normal(size=(2, P, H)).astype("float32")
    kernels = {
        name: (dense.kernel.numpy(), dense.bias.numpy())
        for name, dense in _projections(attention).items()
    }
    prefix = np.stack(
        [
            np.einsum("pe,end->pnd", extra, kernels[name][0]) + kernels[name][1]
            for extra, name in ((extra_key, "key"), (extra_value, "value"))
        ]
    ).astype("float32")
    layer = _prefix_layer(flavour, attention, prefix)
    query = rng.normal(size=(2, 4, H)).astype("float32")
    value, key = rng.normal(size=(2, 2, 6, H)).astype("float32")
    mask = rng.random((2, 4, 6)) > 0.3

    def extended(extra, x):
        return np.concatenate([np.broadcast_to(extra, (2, P, H)), x], axis=1)

    plain = attention(
        query,
        extended(extra_value, value),
        key=extended(extra_key, key),
        attention_mask=np.concatenate([np.ones((2, 4, P), bool), mask], axis=2),
    )
    prefixed = layer(query, value, key=key, attention_mask=mask)
    np.testing.assert_allclose(prefixed, plain, atol=1e-5)


def test_attention_scores_cover_the_prefix_then_the_keys(flavour):
    layer = _prefix_layer(flavour)
    x = W[TOKENS]
    T = x.shape[1]
    outputs, scores = layer(x, x, use_causal_mask=True, return_attention_scores=True)
    assert outputs.shape == x.shape
    assert tuple(scores.shape) == (2, HEADS, T, P + T)
    _, probabilities = _reference_attention(
        layer.attention, x, x, PREFIX, np.broadcast_to(_causal(T, T), (2, T, T))
    )
    np.testing.assert_allclose(scores, probabilities, atol=1e-6)
    scores = np.asarray(scores)
    # The first query sees the whole prefix and its own key, no later key.
    assert np.all(scores[:, :, 0, : P + 1] > 0)
    np.testing.assert_array_equal(scores[:, :, 0, P + 1 :], 0.0)


def test_the_wrapped_attention_is_prefixed_only_inside_the_layer(flavour):
    """The attention is shared, not copied: in the same model, called
    directly, it stays the plain attention, also after a call that raised."""
    K = flavour.K
    attention = flavour.attention()
    layer = _prefix_layer(flavour, attention)
    x = W[TOKENS]
    everything = np.ones((2, 5, 5), bool)
    plain, _ = _reference_attention(attention, x, x, NO_PREFIX, everything)
    expected, _ = _reference_attention(attention, x, x, PREFIX, everything)
    inputs = K.Input((None, H))
    model = K.Model(inputs, [layer(inputs, inputs), attention(inputs, inputs)])
    prefixed, direct = model(x)
    np.testing.assert_allclose(prefixed, expected, atol=1e-5)
    np.testing.assert_allclose(direct, plain, atol=1e-5)
    assert "_compute_attention" not in vars(attention)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        layer(x, x, attention_mask=np.ones((2, 5, 4), bool))  # 4 keys, not 5
    assert "_compute_attention" not in vars(attention)
    np.testing.assert_allclose(attention(x, x), plain, atol=1e-5)


def test_prefix_gradient_matches_the_reference_gradient(flavour):
    layer = _prefix_layer(flavour)
    x = W[PADDED]
    visible = (PADDED != 0)[:, None, :] & _causal(5, 5)
    weights = np.random.default_rng(4).normal(size=(2, 5, H))
    with tf.GradientTape() as tape:
        outputs = layer(x, x, attention_mask=visible)
        loss = tf.reduce_sum(tf.cast(outputs, tf.float64) * weights)
    assert [v is layer.prefix for v in layer.trainable_variables] == [True]
    (grad,) = tape.gradient(loss, layer.trainable_variables)
    prefix = tf.Variable(PREFIX.astype("float64"))
    with tf.GradientTape() as tape:
        expected, _ = _reference_attention(layer.attention, x, x, prefix, visible)
        expected_loss = tf.reduce_sum(expected * weights)
    expected_grad = tape.gradient(expected_loss, prefix).numpy()
    assert np.abs(expected_grad).min() > 0  # every prefix number matters
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-5)


def test_sgd_trains_only_the_prefix_also_after_unfreezing_the_model(flavour):
    """One SGD step moves the prefix by exactly `-lr * gradient` (gradient
    from the reference) and leaves every attention weight bit-identical,
    after the model was frozen and unfrozen again."""
    K = flavour.K
    attention = flavour.attention()
    layer = _prefix_layer(flavour, attention)
    inputs = K.Input((None, H))
    model = K.Model(inputs, layer(inputs, inputs, use_causal_mask=True))
    model.trainable = False
    assert model.trainable_weights == []
    model.trainable = True
    assert [v is layer.prefix for v in model.trainable_weights] == [True]
    if flavour is KERAS3:
        assert attention.trainable is False
    x = W[TOKENS]
    targets = np.random.default_rng(6).normal(size=(2, 5, H)).astype("float32")
    prefix = tf.Variable(PREFIX.astype("float64"))
    with tf.GradientTape() as tape:
        outputs, _ = _reference_attention(
            attention, x, x, prefix, np.broadcast_to(_causal(5, 5), (2, 5, 5))
        )
        loss = tf.reduce_mean((outputs - targets) ** 2)  # Keras' "mse"
    expected_grad = tape.gradient(loss, prefix).numpy()
    before = [w.numpy().copy() for w in attention.weights]
    model.compile(K.optimizers.SGD(0.5), "mse")
    model.fit(x, targets, batch_size=2, epochs=1, verbose=0)
    for weight, value in zip(attention.weights, before):
        assert np.array_equal(weight.numpy(), value)
    np.testing.assert_allclose(
        layer.prefix.numpy(), PREFIX - 0.5 * expected_grad, atol=1e-6
    )


@pytest.mark.parametrize("attention_state", ["built", "unbuilt", "built_by_call"])
def test_only_the_2_p_heads_key_dim_prefix_is_trainable(flavour, attention_state):
    """Also when the wrapped attention is built later, by the wrapper's
    `build` or (after `build(query_shape)` alone) by its first call: Keras 3
    then makes its projections trainable whatever its flag says."""
    assert tf_softprompt.PrefixAttention is layers.PrefixAttention
    K = flavour.K
    if attention_state == "built":
        attention = flavour.attention()
    else:
        attention = K.layers.MultiHeadAttention(HEADS, KEY_DIM)
    layer = _prefix_layer(flavour, attention)
    if attention_state == "built_by_call":
        layer.build((None, None, H))
        assert not attention.built
        layer(W[TOKENS], W[TOKENS])
    inputs = K.Input((None, H))
    model = K.Model(inputs, layer(inputs, inputs))
    assert attention.built
    assert tuple(layer.prefix.shape) == (2, P, HEADS, KEY_DIM)
    assert layer.prefix.dtype == "float32"
    prefix_count = 2 * P * HEADS * KEY_DIM
    attention_count = (
        3 * (H * HEADS * KEY_DIM + HEADS * KEY_DIM) + HEADS * KEY_DIM * H + H
    )
    assert sum(np.prod(v.shape) for v in model.trainable_weights) == prefix_count
    assert model.count_params() == prefix_count + attention_count
    summary = flavour.summary(model)
    assert f"Trainable params: {prefix_count} " in summary
    assert f"Non-trainable params: {attention_count} " in summary


def test_the_prefix_stays_float32_in_a_mixed_precision_attention(flavour):
    """A bfloat16-computing attention gets the float32 prefix cast to its
    compute dtype; the trained weight stays float32."""
    attention = flavour.attention(dtype="mixed_bfloat16")
    layer = _prefix_layer(flavour, attention)
    x = W[TOKENS]
    outputs = layer(x, x, use_causal_mask=True)
    assert outputs.dtype == "bfloat16" and layer.prefix.dtype == "float32"
    expected, _ = _reference_attention(
        attention, x, x, PREFIX, np.broadcast_to(_causal(5, 5), (2, 5, 5))
    )
    np.testing.assert_allclose(
        tf.cast(outputs, tf.float32), expected, rtol=0.05, atol=0.05
    )


def _seeded_prefix_initializers(flavour):
    return {
        "uniform": initializers.uniform(scale=0.2, seed=3),
        "from_array": initializers.from_array(PREFIX),
        "keras": flavour.K.initializers.RandomNormal(stddev=0.3, seed=5),
    }


@pytest.mark.parametrize("kind", ["uniform", "from_array", "keras"])
def test_prefix_attention_config_round_trips_and_rebuilds_the_same_prefix(
    flavour, kind
):
    init = _seeded_prefix_initializers(flavour)[kind]
    layer = flavour.PrefixAttention(
        P, flavour.attention(), prefix_initializer=init, name="pa"
    )
    x = W[TOKENS]
    layer(x, x)
    config = _json_round_trip(layer.get_config())
    assert config["prefix_initializer"] == _json_round_trip(
        initializers.serialize(init)
    )
    clone = flavour.PrefixAttention.from_config(config)
    assert (clone.num_prompt_tokens, clone.name) == (P, "pa")
    assert (clone.num_heads, clone.key_dim) == (HEADS, KEY_DIM)
    assert isinstance(clone.attention, flavour.K.layers.MultiHeadAttention)
    assert clone.attention is not layer.attention
    assert clone.attention.trainable is False
    clone(x, x)
    np.testing.assert_array_equal(clone.prefix.numpy(), layer.prefix.numpy())
    assert _constructor_config(clone.get_config()) == _constructor_config(config)


@pytest.mark.parametrize(
    "flavour_name, fmt",
    [("keras3", "keras"), ("keras2", "h5"), ("keras2", "tf"), ("keras2", "keras")],
)
def test_prefix_model_round_trip_keeps_prefix_attention_and_outputs(
    tmp_path, flavour_name, fmt
):
    flavour = {"keras3": KERAS3, "keras2": KERAS2}[flavour_name]
    K = flavour.K
    # Built inside the wrapper, as in most models: its weights' names then
    # differ from those of the attention the loader rebuilds on its own.
    attention = K.layers.MultiHeadAttention(HEADS, KEY_DIM)
    layer = flavour.PrefixAttention(
        P, attention, prefix_initializer=initializers.uniform(0.3, seed=1)
    )
    ids = K.Input((None,), dtype="int32")
    embedding = flavour.embedding(mask_zero=True)
    embedding.trainable = False
    x = embedding(ids)
    model = K.Model(ids, K.layers.Dense(2)(layer(x, x, use_causal_mask=True)))
    layer.prefix.assign(layer.prefix + 1.0)  # trained: not the initial values
    path = str(tmp_path / {"keras": "m.keras", "h5": "m.h5", "tf": "saved_model"}[fmt])
    if flavour is KERAS3:
        model.save(path)
    else:
        model.save(path, save_format=fmt)
    loaded = K.models.load_model(path)
    again = _layer_of(loaded, flavour.PrefixAttention)
    np.testing.assert_array_equal(again.prefix.numpy(), layer.prefix.numpy())
    for weight, original in zip(again.attention.weights, layer.attention.weights):
        np.testing.assert_array_equal(weight.numpy(), original.numpy())
    assert _constructor_config(again.get_config()) == _constructor_config(
        layer.get_config()
    )
    # The weights' names change with where they were built; the fingerprint
    # must not, or the reloaded model would refuse its own prefix.
    assert again.base_fingerprint == layer.base_fingerprint
    trainable = sum(np.prod(v.shape) for v in loaded.trainable_weights)
    assert trainable == 2 * P * HEADS * KEY_DIM + H * 2 + 2
    np.testing.assert_allclose(loaded(PADDED), model(PADDED), atol=1e-6)


def test_prefix_artifact_round_trip_and_metadata(flavour, tmp_path):
    layer = _prefix_layer(flavour)
    x = W[TOKENS]
    layer(x, x)
    path = str(tmp_path / "task.prompt.npz")
    meta = layer.save_prompt(path, task="sst2")
    assert meta["method"] == "prefix" and meta["task"] == "sst2"
    assert meta["shape"] == [1, 2, P, HEADS, KEY_DIM]
    assert (meta["num_layers"], meta["num_key_value_heads"], meta["head_dim"]) == (
        1,
        HEADS,
        KEY_DIM,
    )
    assert (meta["hidden_dim"], meta["num_prompt_tokens"]) == (H, P)
    assert "vocab_size" not in meta  # a MultiHeadAttention has no vocabulary
    # The fingerprint covers the attention's weights, named relative to it.
    named = [
        (f"{name}/{kind}", getattr(dense, kind).numpy())
        for name, dense in _projections(layer.attention).items()
        for kind in ("kernel", "bias")
    ]
    assert meta["base_fingerprint"] == artifact.weights_fingerprint(named)
    with np.load(path) as data:
        np.testing.assert_array_equal(data["prompt"], PREFIX[None])
    layer.prefix.assign(np.zeros_like(PREFIX))
    layer.load_prompt(path)
    np.testing.assert_array_equal(layer.prefix.numpy(), PREFIX)


def test_a_prefix_artifact_is_refused_where_it_does_not_belong(flavour, tmp_path):
    x = W[TOKENS]
    layer = _prefix_layer(flavour)
    layer(x, x)
    path = str(tmp_path / "task.prompt.npz")
    layer.save_prompt(path)

    other = _prefix_layer(flavour, flavour.attention(seed=1))
    other(x, x)
    with pytest.raises(ValueError, match="base_fingerprint") as error:
        other.load_prompt(path)
    assert layer.base_fingerprint in str(error.value)
    assert other.base_fingerprint in str(error.value)

    longer = flavour.PrefixAttention(P + 1, flavour.attention())
    longer(x, x)
    with pytest.raises(ValueError, match=r"\[1, 2, 3, 2, 4\].*\[1, 2, 4, 2, 4\]"):
        longer.load_prompt(path)

    wider = flavour.PrefixAttention(P, flavour.attention(num_heads=4))
    wider(x, x)
    with pytest.raises(
        ValueError, match="num_key_value_heads=2.*num_key_value_heads=4"
    ):
        wider.load_prompt(path)

    embedding_path = str(tmp_path / "embedding.prompt.npz")
    artifact.save_prompt(embedding_path, W[:P], W)
    with pytest.raises(ValueError, match="method='embedding'.*method='prefix'"):
        layer.load_prompt(embedding_path)

    unbuilt = flavour.PrefixAttention(P, flavour.K.layers.MultiHeadAttention(2, 4))
    with pytest.raises(ValueError, match="not built yet"):
        unbuilt.load_prompt(path)
    np.testing.assert_array_equal(other.prefix.numpy(), PREFIX)  # unchanged


def test_a_prefix_artifact_moves_between_flavours_over_the_same_weights(tmp_path):
    """Both flavours name an attention's weights alike (`query/kernel`, ...),
    so a prefix saved from tf-keras loads into a Keras 3 attention holding
    the same weights, and gives the same outputs."""
    x = W[TOKENS]
    keras2_layer = _prefix_layer(KERAS2)
    expected = keras2_layer(x, x)
    path = str(tmp_path / "task.prompt.npz")
    keras2_layer.save_prompt(path)
    keras3_layer = KERAS3.PrefixAttention(P, KERAS3.attention())
    keras3_layer(x, x)
    keras3_layer.load_prompt(path)
    np.testing.assert_array_equal(keras3_layer.prefix.numpy(), PREFIX)
    np.testing.assert_allclose(keras3_layer(x, x), expected, atol=1e-6)


def test_prefix_attention_refuses_what_it_cannot_prefix(flavour):
    K = flavour.K
    with pytest.raises(ValueError, match=r"key_dim=4, value_dim=8.*value_dim=None"):
        flavour.PrefixAttention(P, K.layers.MultiHeadAttention(2, 4, value_dim=8))
    with pytest.raises(ValueError, match=r"attention_axes=\(1, 2\).*=None"):
        flavour.PrefixAttention(
            P, K.layers.MultiHeadAttention(2, 4, attention_axes=(1, 2))
        )
    with pytest.raises(ValueError, match=r"MultiHeadAttention.*Received: Dense"):
        flavour.PrefixAttention(P, K.layers.Dense(2))
    other = (KERAS2 if flavour is KERAS3 else KERAS3).K
    with pytest.raises(ValueError, match="this flavour's MultiHeadAttention"):
        flavour.PrefixAttention(P, other.layers.MultiHeadAttention(2, 4))
    with pytest.raises(ValueError, match="num_prompt_tokens=0"):
        flavour.PrefixAttention(0, K.layers.MultiHeadAttention(2, 4))
    with pytest.raises(ValueError, match=r"reads a \[V, H\] vocabulary.*from_array"):
        flavour.PrefixAttention(
            P,
            K.layers.MultiHeadAttention(2, 4),
            prefix_initializer=initializers.from_token_ids(W, [1]),
        )
    with pytest.raises(ValueError, match=r"keras-hub.*from_array"):
        flavour.PrefixAttention(
            P,
            K.layers.MultiHeadAttention(2, 4),
            prefix_initializer=prefix_method.from_token_ids([1, 2, 3]),
        )
    layer = flavour.PrefixAttention(P, K.layers.MultiHeadAttention(2, 4))
    with pytest.raises(ValueError, match="rank-3 `query`"):
        layer(np.zeros((2, H), "float32"), np.zeros((2, 5, H), "float32"))
