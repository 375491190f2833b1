"""Every injection method and precision through the `Trainer`.

`tests/test_training.py` proves the distribution, resume and TPU-readiness
machinery with the default method; here the same checks run for prefix
tuning and for mixed bfloat16, on a tiny random BERT classifier:

- the bf16 model computes in bfloat16 with float32 variables, a float32
  loss, and gradients close to float32's;
- the traced steps are TPU-ready (static int/bool inputs, no string or
  dynamic-shape ops, XLA compiles them), and the XLA gradient equals the
  plain one;
- under MirroredStrategy on two logical CPUs (one fresh subprocess), the
  replicas' gradients sum to the single-device gradient computed with a
  plain `GradientTape` in the same process;
- a checkpoint restores the prefix, the head and the optimizer exactly.

Gradients are compared directly, never weights after Adam steps (Adam's
first update is about `lr * sign(g)` and hides a wrong scale).
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from tiny_models import V, build_backbone, inputs_for

from tf_softprompt import hub, initializers
from tf_softprompt.methods import prefix as prefix_lib
from tf_softprompt.training import Trainer, precision, tpu

P, B, T = 3, 8, 6
RNG = np.random.default_rng(3)
IDS = RNG.integers(1, V, size=(B, T)).astype("int32")
IDS[:, 0] = 2
LABELS = np.array([0, 1, 1, 0, 1, 1, 1, 0], "int32")
MASK = np.ones_like(IDS, bool)
MASK[1, 4:] = False
MASK[5, 3:] = False


def builder(method):
    def build():
        # No dropout anywhere, so the Trainer's training-mode gradient and
        # the reference tape's agree exactly.
        backbone = build_backbone("bert", seed=1, dropout=0.0)
        task = keras_hub.models.BertTextClassifier(
            backbone=backbone, num_classes=2, preprocessor=None, dropout=0.0
        )
        # Both methods start from hard tokens' rows (or keys/values), at the
        # scale of the model's own activations: a U(±0.5) prompt is ~25 times
        # BERT's embedding scale, and its gradient (~5e-6) falls below what
        # bf16 resolves (cosine 0.82-0.95 against float32, measured).
        if method == "prefix":
            initializer = prefix_lib.from_token_ids([11, 22, 33])
        else:
            initializer = initializers.from_token_ids(
                lambda: backbone.token_embedding.embeddings, [[11], [22], [33]]
            )
        kwargs = {"initializer": initializer}
        hub.enable_prompt_tuning(task, P, method=method, **kwargs)
        return task

    return build


def features():
    return {k: tf.constant(v) for k, v in inputs_for("bert", IDS, MASK).items()}


def tape_gradients(model, variables, x, labels):
    """The mean-loss gradient by a plain GradientTape, not the Trainer."""
    with tf.GradientTape() as tape:
        logits = tf.cast(model(x, training=False), tf.float32)
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        )
    return [g.numpy() for g in tape.gradient(loss, variables)]


def relative_error(got, want):
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


@pytest.mark.parametrize("method", ["embedding", "prefix"])
def test_mixed_bfloat16_computes_in_bf16_with_float32_weights_and_loss(method):
    trainer = Trainer(
        builder(method),
        learning_rate=0.01,
        global_batch_size=B,
        verbose=0,
        precision="mixed_bfloat16",
    )
    model = trainer.model
    assert keras.config.dtype_policy().name == "float32"  # restored
    assert {v.dtype for v in model.weights} == {"float32"}
    assert {v.dtype for v in trainer.optimizer.variables} <= {"float32", "int64"}
    backbone_layers = model.backbone._flatten_layers(include_self=False)
    assert {layer.compute_dtype for layer in backbone_layers} == {"bfloat16"}
    x = features()
    assert model(x).dtype == tf.bfloat16
    loss, gradients = tf.function(trainer.replica_gradients)(x, tf.constant(LABELS))
    assert loss.dtype == tf.float32
    assert [g.dtype for g in gradients] == [tf.float32] * len(gradients)
    # Close to the float32 model's gradient: bf16 keeps ~3 significant
    # digits, and the prompt's and head's gradients come out at cosine
    # 0.99996-0.99998 and norm 0.99-1.0 of float32's (measured over prompt
    # draws); a wrong path or a scaling bug is far outside.
    reference = Trainer(builder(method), learning_rate=0.01, global_batch_size=B)
    want = tape_gradients(reference.model, reference.variables, x, LABELS)
    for got, expected, variable in zip(gradients, want, trainer.variables):
        got, expected = got.numpy().ravel(), expected.ravel()
        norm = np.linalg.norm(got) / np.linalg.norm(expected)
        cosine = got @ expected / np.linalg.norm(got) / np.linalg.norm(expected)
        assert cosine > 0.999 and 0.97 < norm < 1.03, (variable.path, cosine, norm)
    np.testing.assert_allclose(
        loss.numpy(),
        tf.reduce_sum(
            tf.nn.sparse_softmax_cross_entropy_with_logits(
                LABELS, tf.cast(reference.model(x), tf.float32)
            )
        ).numpy()
        / B,
        rtol=0.01,
    )


@pytest.mark.parametrize(
    "method,precision_name",
    [
        ("prefix", "float32"),
        ("embedding", "mixed_bfloat16"),
        ("prefix", "mixed_bfloat16"),
    ],
)
def test_steps_are_tpu_ready_and_xla_gradients_equal_plain(method, precision_name):
    trainer = Trainer(
        builder(method),
        learning_rate=0.01,
        global_batch_size=B,
        verbose=0,
        precision=precision_name,
    )
    x, y = features(), tf.constant(LABELS)
    spec = (
        {k: tf.TensorSpec(v.shape, v.dtype) for k, v in x.items()},
        tf.TensorSpec(y.shape, y.dtype),
    )
    report = tpu.check_step(trainer, spec)
    assert report.ready, report.problems()
    _, plain = tf.function(trainer.replica_gradients)(x, y)
    _, xla = tf.function(trainer.replica_gradients, jit_compile=True)(x, y)
    tolerance = 1e-4 if precision_name == "float32" else 0.05
    for a, b, v in zip(xla, plain, trainer.variables):
        assert relative_error(a.numpy(), b.numpy()) < tolerance, v.path
    if precision_name == "float32":
        want = tape_gradients(trainer.model, trainer.variables, x, LABELS)
        for got, expected in zip(plain, want):
            assert relative_error(got.numpy(), expected) < 1e-4


def test_prefix_checkpoint_restores_prefix_head_and_optimizer(tmp_path):
    def make():
        return Trainer(
            builder("prefix"),
            learning_rate=0.05,
            global_batch_size=B,
            verbose=0,
            checkpoint_dir=str(tmp_path / "ckpt"),
        )

    first = make()
    step = first.compiled_replica_step()
    x, y = features(), tf.constant(LABELS)
    for _ in range(3):
        step(x, y)
    first.step.assign(3)
    first.save()
    resumed = make()
    assert resumed.restore() == 3
    for a, b in zip(first.variables, resumed.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(first.optimizer.variables, resumed.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # One more step from the restored state equals one more step of the first.
    first.compiled_replica_step()(x, y)
    resumed.compiled_replica_step()(x, y)
    for a, b in zip(first.variables, resumed.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-7)


def test_precision_is_checked_and_the_policy_restored_on_error():
    with pytest.raises(ValueError, match="float16"):
        precision.check("float16")
    with pytest.raises(RuntimeError):
        with precision.policy("mixed_bfloat16"):
            assert keras.config.dtype_policy().name == "mixed_bfloat16"
            raise RuntimeError
    assert keras.config.dtype_policy().name == "float32"


MIRRORED = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    sys.path.insert(0, sys.argv[1])
    import test_training_methods as t
    from tf_softprompt.training import Trainer
    report = {}
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    for method, precision in (("prefix", "float32"), ("prefix", "mixed_bfloat16"),
                              ("embedding", "mixed_bfloat16")):
        trainer = Trainer(t.builder(method), learning_rate=0.01,
                          global_batch_size=t.B, strategy=strategy, verbose=0,
                          precision=precision)
        x, y = t.features(), tf.constant(t.LABELS)
        halves = [
            ({k: v[i * 4:(i + 1) * 4] for k, v in x.items()}, y[i * 4:(i + 1) * 4])
            for i in range(2)
        ]
        per_replica = strategy.experimental_distribute_values_from_function(
            lambda ctx: halves[ctx.replica_id_in_sync_group]
        )
        def replica(inputs):
            f, l = inputs
            ctx = tf.distribute.get_replica_context()
            loss, grads = trainer.replica_gradients(f, l)
            return ctx.replica_id_in_sync_group, tf.shape(l)[0], grads
        ids, sizes, grads = strategy.run(tf.function(replica), args=(per_replica,))
        summed = [
            sum(g.numpy() for g in strategy.experimental_local_results(v))
            for v in grads
        ]
        want = t.tape_gradients(trainer.model, trainer.variables, x, t.LABELS)
        report[f"{method}/{precision}"] = {
            "replicas": sorted(
                int(i) for i in strategy.experimental_local_results(ids)
            ),
            "sizes": [int(s) for s in strategy.experimental_local_results(sizes)],
            "devices": sorted({v.device for v in
                               strategy.experimental_local_results(trainer.variables[0].value)}),
            "errors": [t.relative_error(g, w) for g, w in zip(summed, want)],
        }
    print("REPORT " + json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def mirrored_report(tmp_path_factory):
    script = tmp_path_factory.mktemp("mirrored") / "driver.py"
    script.write_text(MIRRORED)
    here = os.path.dirname(os.path.abspath(__file__))
    result = subprocess.run(
        [sys.executable, str(script), here],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(script.parent),
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("REPORT ")][-1]
    return json.loads(line[len("REPORT ") :])


@pytest.mark.parametrize(
    "case", ["prefix/float32", "prefix/mixed_bfloat16", "embedding/mixed_bfloat16"]
)
def test_mirrored_replica_gradients_sum_to_the_single_device_gradient(
    mirrored_report, case
):
    record = mirrored_report[case]
    assert record["replicas"] == [0, 1] and record["sizes"] == [4, 4]
    assert len(record["devices"]) == 2
    tolerance = 1e-4 if case.endswith("float32") else 0.06
    assert max(record["errors"]) < tolerance, record["errors"]
