"""Training at scale: one code path under no strategy, MirroredStrategy and
MultiWorkerMirroredStrategy; exact resume after a SIGKILL; TPU readiness.

Every run trains the same tiny random BERT (2 layers, H=16) with a 4-token
prompt on 64 sentences of the embedded sentiment set (16 steps). The
reference is a single-device run in this process; the distributed and killed
runs happen in fresh subprocesses (logical devices and TF_CONFIG must be set
before TensorFlow starts) and must end with the same prompt and head.
"""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tf_softprompt import data
from tf_softprompt.training import (
    Trainer,
    classifier,
    epoch_order,
    pipeline,
    recompute,
    tpu,
)

TINY = dict(
    prompt_length=4,
    sequence_length=16,
    epochs=2,
    batch_size=8,
    learning_rate=0.05,
    init="uniform",
    dropout=0.0,
    baseline=False,
)
SUBPROCESS_TIMEOUT = 240

DRIVER = textwrap.dedent(
    """
    import json, os, sys, time
    mode, config = sys.argv[1], json.loads(sys.argv[2])
    import tensorflow as tf
    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    elif mode == "multi-worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = None
    from tf_softprompt.training import classifier

    def slow(step, loss):
        print(f"step {step}", flush=True)
        time.sleep(0.3)

    callbacks = [slow] if mode == "slow" else []
    metrics = classifier.train_classifier(
        classifier.ClassifierConfig(**config),
        strategy=strategy,
        callbacks=callbacks,
        verbose=0,
    )
    print("METRICS " + json.dumps(metrics), flush=True)
    """
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """64 training and 16 held-out rows of the embedded set, as TSV files."""
    directory = tmp_path_factory.mktemp("data")
    paths = []
    for path, count in zip(data.default_dataset(), (64, 16)):
        with open(path, encoding="utf-8") as f:
            rows = f.read().splitlines()[: count + 1]
        paths.append(directory / os.path.basename(path))
        paths[-1].write_text("\n".join(rows) + "\n", encoding="utf-8")
    return [str(p) for p in paths]


@pytest.fixture(scope="module")
def preset(tmp_path_factory, files):
    texts = data.read_examples(files[0]).texts + data.read_examples(files[1]).texts
    directory = tmp_path_factory.mktemp("tiny") / "preset"
    return classifier.save_tiny_bert_preset(str(directory), texts, sequence_length=16)


@pytest.fixture(scope="module")
def tiny_config(preset, files):
    def make(out, **overrides):
        return classifier.ClassifierConfig(
            out=str(out),
            model=preset,
            data=files[0],
            eval_data=files[1],
            **{**TINY, **overrides},
        )

    return make


@pytest.fixture(scope="module")
def reference(tiny_config, tmp_path_factory):
    """An uninterrupted single-device run: the prompt every test must reach."""
    out = tmp_path_factory.mktemp("reference")
    metrics = classifier.train_classifier(tiny_config(out), verbose=0)
    return out, metrics


def trained_arrays(out):
    with np.load(os.path.join(out, "prompt.npz")) as f:
        prompt = np.array(f["prompt"])
    with np.load(os.path.join(out, "head.weights.npz")) as f:
        head = {k: np.array(f[k]) for k in f.files}
    return prompt, head


def assert_same_training(out, expected_out, atol):
    prompt, head = trained_arrays(out)
    expected_prompt, expected_head = trained_arrays(expected_out)
    initial = classifier.initializers.uniform(seed=0)(prompt.shape).numpy()
    # The prompt really moved, so equality is not just "both untouched".
    assert np.abs(expected_prompt - initial).max() > 1e-2
    np.testing.assert_allclose(prompt, expected_prompt, atol=atol, rtol=0)
    assert sorted(head) == sorted(expected_head)
    for key in head:
        np.testing.assert_allclose(head[key], expected_head[key], atol=atol, rtol=0)


def driver(tmp_path):
    path = tmp_path / "driver.py"
    path.write_text(DRIVER)
    return str(path)


def run_driver(script, mode, config, env=None, **popen):
    payload = json.dumps(dataclasses.asdict(config))
    return subprocess.Popen(
        [sys.executable, script, mode, payload],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        **popen,
    )


def finish(process):
    out, err = process.communicate(timeout=SUBPROCESS_TIMEOUT)
    assert process.returncode == 0, err[-3000:]
    line = [x for x in out.splitlines() if x.startswith("METRICS ")][-1]
    return json.loads(line[len("METRICS ") :])


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


# --- input pipeline ---------------------------------------------------------


def _batches(dataset):
    return [(f["token_ids"].numpy(), y.numpy()) for f, y in dataset]


def test_pipeline_shards_each_global_batch_across_pipelines_and_resumes():
    texts = [f"text {i}" for i in range(20)]
    ids = list(range(20))

    def preprocess(text):
        return {"token_ids": tf.strings.to_hash_bucket_fast(text[None], 1000)}

    single = _batches(
        pipeline.training_dataset(
            texts, ids, preprocess, global_batch_size=8, seed=3, epoch=1
        )
    )
    assert [list(y) for _, y in single] == [
        list(epoch_order(20, 3, 1)[:8]),
        list(epoch_order(20, 3, 1)[8:16]),
    ]
    shards = [
        _batches(
            pipeline.training_dataset(
                texts,
                ids,
                preprocess,
                global_batch_size=8,
                seed=3,
                epoch=1,
                input_context=tf.distribute.InputContext(2, i, 2),
            )
        )
        for i in range(2)
    ]
    for step, (_, labels) in enumerate(single):
        # Worker 0 gets the first half of each global batch, worker 1 the rest.
        np.testing.assert_array_equal(shards[0][step][1], labels[:4])
        np.testing.assert_array_equal(shards[1][step][1], labels[4:])
    assert all(f.shape == (4, 1) for shard in shards for f, _ in shard)
    resumed = _batches(
        pipeline.training_dataset(
            texts, ids, preprocess, global_batch_size=8, seed=3, epoch=1, skip_steps=1
        )
    )
    np.testing.assert_array_equal(resumed[0][1], single[1][1])
    assert len(resumed) == 1
    assert list(epoch_order(20, 3, 2)) != list(epoch_order(20, 3, 1))


# --- distribution -----------------------------------------------------------


def test_mirrored_strategy_on_two_devices_equals_single_device(
    tiny_config, reference, tmp_path
):
    out = tmp_path / "mirrored"
    metrics = finish(run_driver(driver(tmp_path), "mirrored", tiny_config(out)))
    assert metrics["num_replicas"] == 2
    assert metrics["steps"] == reference[1]["steps"] == 2 * (64 // 8)
    assert_same_training(out, reference[0], atol=2e-5)
    assert metrics["accuracy"] == pytest.approx(reference[1]["accuracy"], abs=0.03)


def test_multi_worker_strategy_with_two_processes_equals_single_device(
    tiny_config, reference, tmp_path
):
    out = tmp_path / "multi-worker"
    script = driver(tmp_path)
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = [
        run_driver(
            script,
            "multi-worker",
            tiny_config(out),
            env={
                "TF_CONFIG": json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": i}}
                )
            },
        )
        for i in range(2)
    ]
    try:
        results = [finish(w) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    assert [r["num_replicas"] for r in results] == [2, 2]
    assert_same_training(out, reference[0], atol=2e-5)
    # Only the chief (worker 0) keeps checkpoints, in the shared directory.
    assert tf.train.latest_checkpoint(str(out / "checkpoints")).endswith("ckpt-16")


def test_killed_run_resumes_from_its_checkpoint_to_the_uninterrupted_prompt(
    tiny_config, tmp_path
):
    # Head dropout on: resuming must also restore the dropout seed states.
    config = dict(dropout=0.3, checkpoint_every=2)
    out = tmp_path / "killed"
    process = run_driver(driver(tmp_path), "slow", tiny_config(out, **config))
    try:
        for line in process.stdout:
            if line.strip() == "step 7":
                process.send_signal(signal.SIGKILL)
                break
        process.wait(timeout=SUBPROCESS_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    latest = tf.train.latest_checkpoint(str(out / "checkpoints"))
    assert latest.endswith("ckpt-6")
    assert not (out / "prompt.npz").exists()

    # Restart (here, in this process) and compare with an uninterrupted run.
    metrics = classifier.train_classifier(tiny_config(out, **config), verbose=0)
    assert metrics["resumed_from_step"] == 6
    assert metrics["steps"] == 16
    expected = tmp_path / "uninterrupted"
    classifier.train_classifier(tiny_config(expected, **config), verbose=0)
    assert_same_training(out, expected, atol=1e-6)


def test_resume_refuses_checkpoints_of_different_settings(tiny_config, reference):
    with pytest.raises(ValueError, match="different settings \\(prompt_length\\)"):
        classifier.train_classifier(
            tiny_config(reference[0], prompt_length=5), verbose=0
        )


# --- TPU readiness ------------------------------------------------------------


def test_train_step_is_tpu_ready_and_xla_step_matches_the_plain_step(
    preset, files, tiny_config
):
    config = tiny_config("unused")
    preprocessor = classifier.load_preprocessor(preset, config.sequence_length)
    examples = data.read_examples(files[0])
    labels = data.LabelVocabulary.from_labels(examples.labels)

    def build():
        model = classifier.load_classifier(preset, 2, dropout=0.0)
        classifier.enable_prompt(model, config, preprocessor, labels.names)
        return model

    dataset = pipeline.training_dataset(
        examples.texts,
        labels.encode(examples.labels),
        preprocessor,
        global_batch_size=8,
        seed=0,
        epoch=0,
    )
    spec = dataset.element_spec
    # Tokenisation happened in tf.data: the step gets fixed int/bool tensors.
    assert {s.dtype for s in tf.nest.flatten(spec)} <= {tf.int32, tf.bool}
    assert all(s.shape.is_fully_defined() for s in tf.nest.flatten(spec))

    plain = Trainer(build, learning_rate=0.05, global_batch_size=8, verbose=0)
    report = tpu.check_step(plain, spec)
    assert report.ready, report.problems()
    assert report.hlo_bytes > 10_000
    assert not [t for t in report.op_types if "String" in t or "Ragged" in t]
    assert {"GatherV2", "SelectV2", "BatchMatMulV2"} <= set(report.op_types)

    # The XLA-compiled step computes the same update as the plain one.
    compiled = Trainer(
        build, learning_rate=0.05, global_batch_size=8, jit_compile=True, verbose=0
    )
    features, targets = next(iter(dataset))
    for trainer in (plain, compiled):
        trainer.compiled_replica_step()(features, targets)
    for a, b in zip(plain.variables, compiled.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    prompt = [v for v in plain.variables if tuple(v.shape) == (4, 16)]
    assert len(prompt) == 1
    assert np.abs(prompt[0].numpy() - build_prompt_init(config)).max() > 1e-4

    # Negative control: a variable batch size (no drop_remainder) is caught.
    loose = tf.nest.map_structure(
        lambda s: tf.TensorSpec([None, *s.shape[1:]], s.dtype), spec
    )
    bad = tpu.check_step(plain, loose, compile=False)
    assert not bad.ready
    assert bad.input_problems and bad.dynamic_shape_ops


def build_prompt_init(config):
    return classifier.initializers.uniform(seed=config.seed)((4, 16)).numpy()


def _dropout_bert_classifier(prompt):
    """A 2-layer random BERT classifier with backbone dropout 0.3."""
    import keras_hub

    from tf_softprompt import hub, initializers

    def build():
        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=50,
            num_layers=2,
            num_heads=2,
            hidden_dim=16,
            intermediate_dim=32,
            max_sequence_length=32,
            dropout=0.3,
        )
        model = keras_hub.models.BertTextClassifier(
            backbone=backbone, num_classes=2, preprocessor=None
        )
        if prompt:
            hub.enable_prompt_tuning(model, 3, initializer=initializers.uniform(seed=1))
        return model

    return build


def test_recompute_gives_the_same_losses_gradients_and_dropout_states():
    rng = np.random.default_rng(0)
    lengths = np.array([10, 7, 10, 4])
    features = {
        "token_ids": tf.constant(rng.integers(5, 50, (4, 10)), tf.int32),
        "padding_mask": tf.constant(np.arange(10)[None] < lengths[:, None]),
        "segment_ids": tf.zeros((4, 10), tf.int32),
    }
    labels = tf.constant([0, 1, 1, 0])

    def two_steps(trainer):
        @tf.function
        def gradients():
            with tf.GradientTape() as tape:
                logits = trainer.model(features, training=True)
                loss = tf.reduce_sum(trainer.loss_fn(labels, logits))
            return loss, tape.gradient(loss, trainer.variables)

        results = []
        for _ in range(2):
            loss, grads = gradients()
            dense = [tf.convert_to_tensor(g).numpy() for g in grads]
            results.append((float(loss), dense))
        seeds = [
            v.numpy()
            for v in trainer.model.non_trainable_variables
            if v.path.endswith("seed_generator_state")
        ]
        return results, seeds

    for prompt in (True, False):  # prompt tuning, then full fine-tuning
        build = _dropout_bert_classifier(prompt)
        plain = Trainer(build, learning_rate=1e-3, global_batch_size=4, verbose=0)
        recomputed = Trainer(
            build, learning_rate=1e-3, global_batch_size=4, verbose=0, recompute=True
        )
        (expected, expected_seeds), (got, got_seeds) = (
            two_steps(plain),
            two_steps(recomputed),
        )
        # Dropout is active: the two steps draw different masks.
        assert expected[0][0] != expected[1][0]
        assert len(expected_seeds) >= 4
        for seed, other in zip(expected_seeds, got_seeds):
            np.testing.assert_array_equal(seed, other)
        for (loss, grads), (loss_r, grads_r) in zip(expected, got):
            assert abs(loss - loss_r) <= 1e-5
            assert len(grads) == len(grads_r) == len(plain.variables)
            for g, g_r in zip(grads, grads_r):
                assert np.abs(g).max() > 0
                np.testing.assert_allclose(g_r, g, rtol=0, atol=1e-5)
    # Inference is untouched.
    np.testing.assert_allclose(
        recomputed.model(features, training=False).numpy(),
        plain.model(features, training=False).numpy(),
        rtol=0,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="no `transformer_layers`"):
        recompute.recompute_transformer_layers(tf.keras.layers.Dense(2))
