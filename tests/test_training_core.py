"""Training the prompt: under XLA, under MirroredStrategy, and with legacy Keras.

The XLA checks run in this process. Distribution needs two logical CPU
devices, which must be configured before TensorFlow runs any op, and the
legacy check needs `TF_USE_LEGACY_KERAS=1` before TensorFlow is imported, so
both run in ONE fresh subprocess that prints its measurements as JSON; the
assertions are made here. No TPU or GPU is available: what is verified is a
static-shape step compiled by XLA on CPU and a 2-replica MirroredStrategy on
two logical CPU devices.

Both compare gradients or SGD weights, never weights after Adam steps:
Adam's first update is about `lr * sign(g)`, so it hides a gradient that is
off by a constant factor.
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
LABELS = np.array([0, 0, 1, 0], "int32")  # unbalanced: a sizable prompt gradient


def _model_and_step():
    keras.utils.set_random_seed(0)
    layer = tf_softprompt.PromptEmbedding.from_matrix(
        W, P, prompt_initializer=initializers.from_array(PROMPT0)
    )
    ids = keras.Input((P + T,), dtype="int32")
    x = keras.layers.GlobalAveragePooling1D()(layer(ids))
    model = keras.Model(ids, keras.layers.Dense(2)(x))
    # SGD, not Adam: its update is lr * gradient, so a gradient that is off
    # by any factor shows in the weights. Weight decay would shrink a
    # vocabulary that an optimizer sees.
    optimizer = keras.optimizers.SGD(learning_rate=1.0, weight_decay=0.1)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def step(ids, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(ids, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss, [tf.convert_to_tensor(g) for g in grads]

    return layer, model, step


def _numpy_gradients(prompt, kernel, bias, ids, labels):
    """The model's mean cross-entropy gradients `(prompt, kernel, bias)`,
    written out in NumPy: rows of `[W; prompt]`, mean over positions,
    dense, softmax."""
    rows = np.concatenate([W, prompt])[ids]  # virtual id V + j -> prompt[j]
    pooled = rows.mean(axis=1)
    logits = pooled @ kernel + bias
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    d_logits = (probabilities - np.eye(2)[labels]) / len(ids)
    d_rows = np.repeat((d_logits @ kernel.T)[:, None] / ids.shape[1], ids.shape[1], 1)
    d_prompt = np.zeros_like(prompt)
    np.add.at(d_prompt, ids[ids >= V] - V, d_rows[ids >= V])
    return d_prompt, pooled.T @ d_logits, d_logits.sum(0)


def _assert_close_scaled(got, want, rtol):
    """Equal within `rtol` of `want`'s largest magnitude."""
    scale = np.abs(want).max()
    assert scale > 0
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale)


def test_xla_train_step_compiles_and_matches_eager():
    eager_layer, eager_model, eager_step = _model_and_step()
    xla_layer, _, xla_step = _model_and_step()
    xla_step = tf.function(xla_step, jit_compile=True)
    ids, labels = tf.constant(IDS), tf.constant(LABELS)
    compiled = xla_step.experimental_get_compiler_ir(ids, labels)(stage="hlo")
    assert "gather" in compiled
    kernel, bias = (v.numpy() for v in eager_model.trainable_variables[1:])
    expected = _numpy_gradients(PROMPT0, kernel, bias, IDS, LABELS)
    for step in range(3):
        eager_loss, eager_grads = eager_step(ids, labels)
        xla_loss, xla_grads = xla_step(ids, labels)
        assert abs(float(eager_loss) - float(xla_loss)) <= 1e-5
        if step == 0:
            for grads in (eager_grads, xla_grads):
                for got, want in zip(grads, expected):
                    _assert_close_scaled(got.numpy(), want, 1e-4)
        for got, want in zip(xla_grads, eager_grads):
            _assert_close_scaled(got.numpy(), want.numpy(), 1e-4)
    np.testing.assert_allclose(
        xla_layer.prompt.numpy(), eager_layer.prompt.numpy(), atol=1e-6
    )
    assert np.abs(xla_layer.prompt.numpy() - PROMPT0).max() > 0.05
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
    loss, _ = step(tf.constant(bad), tf.constant(LABELS))
    assert np.isnan(float(loss))


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
    LABELS = (np.arange(B) % 4 == 0).astype("int32")  # unbalanced
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
            # SGD: the update is lr * gradient, so a gradient scaled by the
            # replica count changes the weights (Adam's would not).
            model.compile(
                K.optimizers.SGD(learning_rate=1.0, weight_decay=0.1),
                K.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
        data = tf.data.Dataset.from_tensors((IDS, LABELS)).repeat(STEPS)
        history = model.fit(data, epochs=1, verbose=0)
        return dense, layer, history.history["loss"][-1]

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out["replicas"] = mirrored.num_replicas_in_sync

    # What the replicas see of one global batch, recorded inside
    # `strategy.run` (fit distributes its dataset the same way).
    placements = {}

    def replica_fn(ids, labels):
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        placements[int(tf.get_static_value(replica))] = tf.identity(ids).device
        return replica, ids

    batch = next(iter(mirrored.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors((IDS, LABELS))
    )))
    seen = tf.function(lambda *b: mirrored.run(replica_fn, args=b))(*batch)
    out["ids"] = IDS.tolist()
    out["seen"] = [
        {"replica": int(r), "ids": i.numpy().tolist(), "device": placements[int(r)]}
        for r, i in zip(*(mirrored.experimental_local_results(x) for x in seen))
    ]

    for name, K, flavour in (("keras3", keras, tf_softprompt), ("keras2", tf_keras,
                                                                  keras2)):
        single_dense, single, single_loss = train(
            K, flavour, tf.distribute.get_strategy()
        )
        multi_dense, multi, multi_loss = train(K, flavour, mirrored)
        distributed = getattr(multi.prompt, "_value", multi.prompt)
        out[name] = {
            "prompt_diff": float(np.abs(multi.prompt.numpy()
                                        - single.prompt.numpy()).max()),
            "kernel_diff": float(np.abs(multi_dense.kernel.numpy()
                                        - single_dense.kernel.numpy()).max()),
            "loss_diff": abs(multi_loss - single_loss),
            "prompt_moved": float(np.abs(multi.prompt.numpy() - PROMPT0).max()),
            "vocab_intact": bool(np.array_equal(multi.vocabulary.numpy(), W)),
            "distributed_prompt": type(distributed).__name__,
            "prompt_devices": [v.device for v in distributed.values],
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


def test_mirrored_strategy_splits_each_batch_over_two_replicas(subprocess_report):
    # Counted from what the replicas saw, not from `num_replicas_in_sync`.
    seen = sorted(subprocess_report["seen"], key=lambda r: r["replica"])
    assert [r["replica"] for r in seen] == [0, 1]
    assert len({r["device"] for r in seen}) == 2
    ids = subprocess_report["ids"]  # the global batch of 8
    assert seen[0]["ids"] == ids[:4]
    assert seen[1]["ids"] == ids[4:]
    assert subprocess_report["replicas"] == 2


@pytest.mark.parametrize("flavour", ["keras3", "keras2"])
def test_mirrored_strategy_matches_single_device_training(subprocess_report, flavour):
    report = subprocess_report[flavour]
    assert "Mirrored" in report["distributed_prompt"]
    # The prompt lives on both replicas' devices.
    assert len(set(report["prompt_devices"])) == 2
    # SGD weights: a gradient off by any factor under the strategy fails.
    assert report["prompt_moved"] > 0.05
    assert report["prompt_diff"] <= 1e-5
    assert report["kernel_diff"] <= 1e-5
    assert report["loss_diff"] <= 1e-5
    assert report["vocab_intact"] is True


def test_legacy_tf_keras_trains_keras2_layers(subprocess_report):
    report = subprocess_report["legacy"]
    assert report["tf_keras_is_tf_keras"] is True
    assert report["is_tf_keras_model"] is True
    assert np.isfinite(report["loss"])
    assert report["prompt_moved"] > 0.0
    assert report["trainable"] == [[P, H]]
