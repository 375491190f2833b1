"""Training the prompt: under XLA, under MirroredStrategy, and with legacy Keras.

The XLA checks run in this process. Distribution needs two logical CPU
devices, which must be configured before TensorFlow runs any op, and the
legacy check needs `TF_USE_LEGACY_KERAS=1` before TensorFlow is imported, so
both run in ONE fresh subprocess that prints its measurements as JSON; the
assertions are made here. No TPU or GPU is available: what is verified is a
static-shape step compiled by XLA on CPU and a 2-replica MirroredStrategy on
two logical CPU devices.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_softprompt
from tf_softprompt import initializers, ops

V, H, P, T, B = 50, 8, 4, 6, 4
RNG = np.random.default_rng(0)
W = RNG.normal(size=(V, H)).astype("float32")
PROMPT0 = RNG.uniform(-0.5, 0.5, size=(P, H)).astype("float32")
IDS = np.concatenate(
    [np.broadcast_to(np.arange(V, V + P), (B, P)), RNG.integers(1, V, (B, T))], 1
).astype("int32")
LABELS = np.array([0, 1, 1, 0], "int32")


def _model_and_step():
    keras.utils.set_random_seed(0)
    layer = tf_softprompt.PromptEmbedding.from_matrix(
        W, P, prompt_initializer=initializers.from_array(PROMPT0)
    )
    ids = keras.Input((P + T,), dtype="int32")
    x = keras.layers.GlobalAveragePooling1D()(layer(ids))
    model = keras.Model(ids, keras.layers.Dense(2)(x))
    optimizer = keras.optimizers.AdamW(learning_rate=0.1, weight_decay=0.1)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def step(ids, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(ids, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return layer, model, step


def test_xla_train_step_compiles_and_matches_eager():
    eager_layer, _, eager_step = _model_and_step()
    xla_layer, _, xla_step = _model_and_step()
    xla_step = tf.function(xla_step, jit_compile=True)
    ids, labels = tf.constant(IDS), tf.constant(LABELS)
    compiled = xla_step.experimental_get_compiler_ir(ids, labels)(stage="hlo")
    assert "gather" in compiled
    for _ in range(3):
        eager_loss = float(eager_step(ids, labels))
        xla_loss = float(xla_step(ids, labels))
        assert abs(eager_loss - xla_loss) <= 1e-5
    np.testing.assert_allclose(
        xla_layer.prompt.numpy(), eager_layer.prompt.numpy(), atol=1e-5
    )
    assert np.abs(xla_layer.prompt.numpy() - PROMPT0).max() > 0.1
    np.testing.assert_array_equal(xla_layer.vocabulary.numpy(), W)


def test_out_of_range_ids_under_xla_give_nan_loss_not_a_silent_row():
    """`check_token_ids` asserts the range, but XLA drops assertions (and its
    gather clamps indices), so inside `jit_compile=True` the assertion cannot
    fire. `prompt_lookup` then returns NaN rows, so the loss is NaN instead of
    silently wrong; `validate_token_ids` in the input pipeline raises first
    (see tests/test_ops.py)."""
    _, _, step = _model_and_step()
    step = tf.function(step, jit_compile=True)
    bad = IDS.copy()
    bad[0, -1] = V + P  # one past the last virtual id
    assert np.isnan(float(step(tf.constant(bad), tf.constant(LABELS))))


def test_prompt_lookup_gradient_under_xla_is_p_by_h():
    prompt = tf.Variable(PROMPT0)

    @tf.function(jit_compile=True)
    def grad(ids):
        with tf.GradientTape() as tape:
            out = ops.prompt_lookup(ids, W, prompt)
            loss = tf.reduce_sum(out**2)
        return tf.convert_to_tensor(tape.gradient(loss, prompt))

    g = grad(tf.constant(IDS)).numpy()
    assert g.shape == (P, H)
    # Each virtual id appears once per example: d/dp sum(p^2) = 2p, B times.
    np.testing.assert_allclose(g, 2 * B * PROMPT0, rtol=1e-5)


SUBPROCESS = textwrap.dedent(
    """
    import json
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )

    import keras
    import tf_keras

    import tf_softprompt
    from tf_softprompt import initializers, keras2

    V, H, P, T, B = 50, 8, 4, 6, 8
    rng = np.random.default_rng(0)
    W = rng.normal(size=(V, H)).astype("float32")
    PROMPT0 = rng.uniform(-0.5, 0.5, size=(P, H)).astype("float32")
    KERNEL0 = rng.normal(size=(H, 2)).astype("float32")
    IDS = np.concatenate(
        [np.broadcast_to(np.arange(V, V + P), (B, P)), rng.integers(1, V, (B, T))],
        1,
    ).astype("int32")
    LABELS = (np.arange(B) % 2).astype("int32")
    STEPS = 5
    out = {}

    def train(K, flavour, strategy):
        with strategy.scope():
            layer = flavour.PromptEmbedding.from_matrix(
                W, P, prompt_initializer=initializers.from_array(PROMPT0)
            )
            ids = K.Input((P + T,), dtype="int32")
            x = K.layers.GlobalAveragePooling1D()(layer(ids))
            dense = K.layers.Dense(
                2, kernel_initializer=K.initializers.Constant(KERNEL0)
            )
            model = K.Model(ids, dense(x))
            model.compile(
                K.optimizers.AdamW(learning_rate=0.05, weight_decay=0.1),
                K.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
        data = tf.data.Dataset.from_tensors((IDS, LABELS)).repeat(STEPS)
        history = model.fit(data, epochs=1, verbose=0)
        return model, layer, history.history["loss"][-1]

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out["replicas"] = mirrored.num_replicas_in_sync
    for name, K, flavour in (("keras3", keras, tf_softprompt), ("keras2", tf_keras,
                                                                  keras2)):
        _, single, single_loss = train(K, flavour, tf.distribute.get_strategy())
        _, multi, multi_loss = train(K, flavour, mirrored)
        out[name] = {
            "prompt_diff": float(np.abs(multi.prompt.numpy()
                                        - single.prompt.numpy()).max()),
            "loss_diff": abs(multi_loss - single_loss),
            "prompt_moved": float(np.abs(multi.prompt.numpy() - PROMPT0).max()),
            "vocab_intact": bool(np.array_equal(multi.vocabulary.numpy(), W)),
            "distributed_prompt": type(
                getattr(multi.prompt, "_value", multi.prompt)
            ).__name__,
        }

    # Legacy: with TF_USE_LEGACY_KERAS=1, `tf.keras` is tf-keras.
    layer = keras2.PromptPrepend(P, offset=1)
    ids = tf.keras.Input((T,), dtype="int32")
    x = tf.keras.layers.Embedding(V, H, mask_zero=True)(ids)
    x = tf.keras.layers.LSTM(4)(layer(x))
    model = tf.keras.Model(ids, tf.keras.layers.Dense(2)(x))
    model.compile(
        tf.keras.optimizers.AdamW(learning_rate=0.05, weight_decay=0.1),
        tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = layer.prompt.numpy().copy()
    loss = model.train_on_batch(IDS[:, P:], LABELS)
    out["legacy"] = {
        "is_tf_keras_model": isinstance(model, tf_keras.Model),
        "tf_keras_is_tf_keras": tf.keras.Model is tf_keras.Model,
        "loss": float(loss),
        "prompt_moved": float(np.abs(layer.prompt.numpy() - before).max()),
        "trainable": [list(v.shape) for v in layer.trainable_weights],
    }
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def subprocess_report(tmp_path_factory):
    env = {
        **os.environ,
        "TF_USE_LEGACY_KERAS": "1",
        "KERAS_BACKEND": "tensorflow",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    result = subprocess.run(
        [sys.executable, "-c", SUBPROCESS],
        cwd=tmp_path_factory.mktemp("subprocess"),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    print(result.stdout.strip().splitlines()[-1])
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("flavour", ["keras3", "keras2"])
def test_mirrored_strategy_matches_single_device_training(subprocess_report, flavour):
    assert subprocess_report["replicas"] == 2
    report = subprocess_report[flavour]
    assert "Mirrored" in report["distributed_prompt"]
    assert report["prompt_diff"] <= 1e-5
    assert report["loss_diff"] <= 1e-5
    assert report["prompt_moved"] > 0.05
    assert report["vocab_intact"] is True


def test_legacy_tf_keras_trains_keras2_layers(subprocess_report):
    report = subprocess_report["legacy"]
    assert report["tf_keras_is_tf_keras"] is True
    assert report["is_tf_keras_model"] is True
    assert np.isfinite(report["loss"])
    assert report["prompt_moved"] > 0.0
    assert report["trainable"] == [[P, H]]
