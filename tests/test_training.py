"""Training at scale: one code path under no strategy, MirroredStrategy and
MultiWorkerMirroredStrategy; exact resume after a SIGKILL; what a checkpoint
holds; TPU readiness.

Every run trains the same tiny random BERT (2 layers, H=16) with a 4-token
prompt on 64 sentences of the embedded sentiment set (16 steps). The
reference is a single-device run in this process; the distributed and killed
runs happen in fresh subprocesses (logical devices and TF_CONFIG must be set
before TensorFlow starts) and must end with the same prompt, head and
optimizer state.

Adam's first update is about `lr * sign(g)`, so equal weights after Adam
steps cannot show a gradient that is off by a constant factor (a replica-
count loss-scaling bug, say). So besides the weights these tests compare:

- Adam's moments in the final checkpoints (the first moment is linear in the
  gradients the optimizer received, the second quadratic);
- the loss of every step;
- per replica, recorded inside `strategy.run` for each step of epoch 0 at
  the initial weights: which examples it got and its gradients, against
  gradients computed here with a plain `GradientTape`, not with `Trainer`.
"""

import dataclasses
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from tiny_models import save_tiny_bert_preset

from tf_softprompt import data, initializers
from tf_softprompt.training import (
    ClassifierConfig,
    Trainer,
    epoch_order,
    models,
    pipeline,
    recompute,
    tpu,
    train_classifier,
)

TINY = dict(
    method="embedding",
    prompt_length=4,
    sequence_length=16,
    epochs=2,
    batch_size=8,
    learning_rate=0.05,
    init="uniform",
    dropout=0.0,
    baseline=False,
)
TRAIN_EXAMPLES = 64
SUBPROCESS_TIMEOUT = 240

DRIVER = textwrap.dedent(
    """
    import json, os, sys, time
    mode, config, records_dir = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
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
        strategy = tf.distribute.get_strategy()
    from tf_softprompt.training import (
        ClassifierConfig, Trainer, models, pipeline, train_classifier
    )
    from tf_softprompt.training.splits import load_splits

    config = ClassifierConfig(**config)
    losses = []

    def record(step, loss):
        losses.append(loss)
        if mode == "slow":
            print(f"step {step}", flush=True)
            time.sleep(0.3)

    metrics = train_classifier(
        config, strategy=strategy, callbacks=[record], verbose=0
    )
    metrics["losses"] = losses


    def record_replicas(path):
        # What each replica gets and computes in `strategy.run` on the steps
        # of epoch 0, at the initial weights (a fresh Trainer, same seed).
        splits = load_splits(config)
        preprocessor = models.load_preprocessor(
            config.model, config.sequence_length
        )
        names = splits.labels.names

        def build():
            model = models.load_classifier(
                config.model, len(names), config.dropout
            )
            models.enable_prompt(model, config, preprocessor, names)
            return model

        trainer = Trainer(
            build,
            learning_rate=config.learning_rate,
            global_batch_size=config.batch_size,
            strategy=strategy,
            seed=config.seed,
            verbose=0,
        )
        gradients = tf.function(trainer.replica_gradients)

        placements = {}

        def replica_fn(features, labels):
            loss, grads = gradients(features, labels)
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            # The device the strategy placed this replica's ops on (outputs
            # are all copied to one device, so this is read while tracing).
            placements[int(tf.get_static_value(replica))] = loss.device
            grads = [tf.convert_to_tensor(g) for g in grads]
            return [replica, features["token_ids"], labels, loss] + grads

        step_fn = tf.function(lambda f, y: strategy.run(replica_fn, args=(f, y)))
        dataset = strategy.distribute_datasets_from_function(
            lambda context: pipeline.training_dataset(
                splits.train_texts,
                splits.train_ids,
                preprocessor,
                global_batch_size=config.batch_size,
                seed=config.seed,
                epoch=0,
                input_context=context,
            )
        )
        steps = pipeline.steps_per_epoch(len(splits.train_texts), config.batch_size)
        records = []
        for step, (features, labels) in zip(range(steps), dataset):
            outputs = step_fn(features, labels)
            local = [strategy.experimental_local_results(x) for x in outputs]
            for values in zip(*local):
                replica, token_ids, labels_seen, loss, *grads = values
                records.append({
                    "step": step,
                    "replica": int(replica),
                    "device": placements[int(replica)],
                    "token_ids": token_ids.numpy().tolist(),
                    "labels": labels_seen.numpy().tolist(),
                    "loss": float(loss),
                    "gradients": [g.numpy().tolist() for g in grads],
                    "variables": [v.path for v in trainer.variables],
                })
        with open(path, "w") as f:
            json.dump(records, f)


    if records_dir != "-":
        task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
        record_replicas(
            os.path.join(records_dir, f"replicas-{task.get('index', 0)}.json")
        )
    print("METRICS " + json.dumps(metrics), flush=True)
    """
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """64 training and 16 held-out rows of the embedded set, as TSV files."""
    directory = tmp_path_factory.mktemp("data")
    paths = []
    for path, count in zip(data.default_dataset(), (TRAIN_EXAMPLES, 16)):
        with open(path, encoding="utf-8") as f:
            rows = f.read().splitlines()[: count + 1]
        paths.append(directory / os.path.basename(path))
        paths[-1].write_text("\n".join(rows) + "\n", encoding="utf-8")
    return [str(p) for p in paths]


@pytest.fixture(scope="module")
def preset(tmp_path_factory, files):
    texts = data.read_examples(files[0]).texts + data.read_examples(files[1]).texts
    directory = tmp_path_factory.mktemp("tiny") / "preset"
    return save_tiny_bert_preset(str(directory), texts, sequence_length=16)


@pytest.fixture(scope="module")
def tiny_config(preset, files):
    def make(out, **overrides):
        return ClassifierConfig(
            out=str(out),
            model=preset,
            data=files[0],
            eval_data=files[1],
            **{**TINY, **overrides},
        )

    return make


@dataclasses.dataclass
class Run:
    out: str
    metrics: dict
    losses: list


def train_here(config):
    """`train_classifier` in this process, recording every step's loss."""
    losses = []
    metrics = train_classifier(
        config, callbacks=[lambda step, loss: losses.append(loss)], verbose=0
    )
    return Run(config.out, metrics, losses)


@pytest.fixture(scope="module")
def reference(tiny_config, tmp_path_factory):
    """An uninterrupted single-device run: the prompt every test must reach."""
    return train_here(tiny_config(tmp_path_factory.mktemp("reference")))


@pytest.fixture(scope="module")
def build_prompted(preset, tiny_config):
    """The prompted tiny classifier exactly as `train_classifier` builds it."""
    config = tiny_config("unused")
    preprocessor = models.load_preprocessor(preset, config.sequence_length)

    def build():
        model = models.load_classifier(preset, 2, dropout=0.0)
        models.enable_prompt(model, config, preprocessor, ["negative", "positive"])
        return model

    return build


def reference_gradient_fn(build, seed=0):
    """`(features, labels, divisor) -> (loss, gradients)`: the summed softmax
    cross-entropy over the given examples divided by `divisor`, and its
    gradients, at the initial weights, with a plain `GradientTape` (no
    `Trainer`, no library loss)."""
    keras.utils.set_random_seed(seed)  # what Trainer does before building
    model = build()

    @tf.function
    def gradients(features, labels, divisor):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(features, training=True), tf.float32)
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
            loss = tf.reduce_sum(losses) / divisor
        grads = tape.gradient(loss, model.trainable_variables)
        return loss, [tf.convert_to_tensor(g) for g in grads]

    def run(features, labels, divisor):
        loss, grads = gradients(features, labels, tf.constant(divisor, tf.float32))
        return float(loss), [g.numpy() for g in grads]

    run.variables = [v.path for v in model.trainable_variables]
    return run


def assert_close_scaled(got, want, rtol, what):
    """Equal up to `rtol` of `want`'s largest magnitude (so a gradient that
    is 2x too large or too small fails, however small its entries are)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, what
    scale = np.abs(want).max()
    assert scale > 0, f"{what} is all zeros"
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale, err_msg=what)


@pytest.fixture(scope="module")
def single_device(files, preset, build_prompted):
    """What a single device computes on each global batch of epoch 0: the
    examples (by `epoch_order`, the documented data order) and the gradient
    of any set of them, with a plain `GradientTape`."""
    examples = data.read_examples(files[0])
    label_ids = data.LabelVocabulary.from_labels(examples.labels).encode(
        examples.labels
    )
    preprocessor = models.load_preprocessor(preset, TINY["sequence_length"])
    features = preprocessor(tf.constant(examples.texts))
    rows = {tuple(row): i for i, row in enumerate(features["token_ids"].numpy())}
    # Token rows identify the examples.
    assert len(rows) == TRAIN_EXAMPLES

    gradient_fn = reference_gradient_fn(build_prompted)
    batch = TINY["batch_size"]
    order = epoch_order(TRAIN_EXAMPLES, 0, 0)

    def gradients(ids):
        subset = {k: tf.gather(v, ids) for k, v in features.items()}
        labels = tf.constant([label_ids[i] for i in ids], tf.int32)
        # The sum over the examples over the *global* batch size.
        return gradient_fn(subset, labels, batch)

    return dict(
        example_ids=lambda token_ids: [rows[tuple(r)] for r in token_ids],
        global_batch=lambda step: list(order[step * batch : (step + 1) * batch]),
        labels=label_ids,
        gradients=gradients,
        variables=gradient_fn.variables,
        steps=TRAIN_EXAMPLES // batch,
    )


def read_replica_records(directory, workers):
    records = []
    for index in range(workers):
        with open(os.path.join(directory, f"replicas-{index}.json")) as f:
            records.append(json.load(f))
    return records


def assert_replicas_split_the_global_batch(records_per_worker, single):
    """Two replicas, each fed its own half of every single-device global
    batch (the first half to replica 0), whose gradients sum to the single-
    device gradient of that batch.

    The replica count comes from what the replicas recorded, not from the
    strategy's `num_replicas_in_sync`.
    """
    records = [r for worker in records_per_worker for r in worker]
    devices = {r["device"] for r in records}
    assert sorted({r["replica"] for r in records}) == [0, 1], devices
    assert len(devices) == 2, devices
    if len(records_per_worker) > 1:
        # One replica per worker, each worker always the same one.
        for index, worker in enumerate(records_per_worker):
            assert {r["replica"] for r in worker} == {index}
    half = TINY["batch_size"] // 2
    for step in range(single["steps"]):
        rows = sorted(
            (r for r in records if r["step"] == step), key=lambda r: r["replica"]
        )
        assert [r["replica"] for r in rows] == [0, 1], f"step {step}"
        seen = [single["example_ids"](r["token_ids"]) for r in rows]
        assert [len(ids) for ids in seen] == [half, half], f"step {step}"
        assert not set(seen[0]) & set(seen[1]), f"step {step}: shards overlap"
        global_batch = single["global_batch"](step)
        assert seen[0] + seen[1] == global_batch, f"step {step}"
        total = None
        for record, ids in zip(rows, seen):
            what = f"step {step}, replica {record['replica']}"
            assert record["labels"] == [single["labels"][i] for i in ids], what
            assert record["variables"] == single["variables"]
            loss, expected = single["gradients"](ids)
            assert record["loss"] == pytest.approx(loss, abs=1e-6), what
            for got, want, name in zip(
                record["gradients"], expected, single["variables"]
            ):
                assert_close_scaled(got, want, 1e-4, f"{what}: {name}")
            grads = [np.asarray(g) for g in record["gradients"]]
            total = grads if total is None else [a + b for a, b in zip(total, grads)]
        # The sum over replicas (what the optimizer applies) is the gradient
        # of the mean loss over the global batch.
        _, expected = single["gradients"](global_batch)
        for got, want, name in zip(total, expected, single["variables"]):
            assert_close_scaled(got, want, 1e-4, f"step {step} sum: {name}")


def trained_arrays(out):
    with np.load(os.path.join(out, "prompt.npz")) as f:
        prompt = np.array(f["prompt"])
    with np.load(os.path.join(out, "head.weights.npz")) as f:
        head = {k: np.array(f[k]) for k in f.files}
    return prompt, head


def assert_same_training(out, expected_out, atol):
    prompt, head = trained_arrays(out)
    expected_prompt, expected_head = trained_arrays(expected_out)
    initial = initializers.uniform(seed=0)(prompt.shape).numpy()
    # The prompt really moved, so equality is not just "both untouched".
    assert np.abs(expected_prompt - initial).max() > 1e-2
    np.testing.assert_allclose(prompt, expected_prompt, atol=atol, rtol=0)
    assert sorted(head) == sorted(expected_head)
    for key in head:
        np.testing.assert_allclose(head[key], expected_head[key], atol=atol, rtol=0)


def checkpoint_tensors(directory):
    """`{name: array}` of the latest checkpoint in `directory`."""
    latest = tf.train.latest_checkpoint(os.fspath(directory))
    assert latest, f"no checkpoint in {directory}"
    reader = tf.train.load_checkpoint(latest)
    return {
        name: reader.get_tensor(name)
        for name, _ in tf.train.list_variables(latest)
        if name != "_CHECKPOINTABLE_OBJECT_GRAPH"
    }


def assert_same_checkpoint(directory, expected_directory, rtol):
    """The same step, weights and optimizer state (Adam's iteration count and
    both moments), each tensor within `rtol` of its own largest value."""
    got = checkpoint_tensors(directory)
    expected = checkpoint_tensors(expected_directory)
    assert sorted(got) == sorted(expected)
    moments = [k for k in expected if k.startswith("optimizer/") and expected[k].ndim]
    trainable = [k for k in expected if k.startswith("trainable/")]
    assert len(trainable) == 3 and len(moments) == 2 * len(trainable)
    for key in expected:
        if key.startswith("save_counter"):
            continue  # how often it was saved, not the state
        assert_close_scaled(got[key], expected[key], rtol, key)


def driver(tmp_path):
    path = tmp_path / "driver.py"
    path.write_text(DRIVER)
    return str(path)


def run_driver(script, mode, config, records_dir="-", env=None, **popen):
    payload = json.dumps(dataclasses.asdict(config))
    return subprocess.Popen(
        [sys.executable, script, mode, payload, str(records_dir)],
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
    tiny_config, reference, single_device, tmp_path
):
    out = tmp_path / "mirrored"
    metrics = finish(
        run_driver(driver(tmp_path), "mirrored", tiny_config(out), tmp_path)
    )
    assert_replicas_split_the_global_batch(
        read_replica_records(tmp_path, 1), single_device
    )
    assert metrics["num_replicas"] == 2
    assert metrics["steps"] == reference.metrics["steps"] == 2 * (64 // 8)
    np.testing.assert_allclose(metrics["losses"], reference.losses, rtol=0, atol=1e-5)
    assert_same_checkpoint(
        out / "checkpoints", os.path.join(reference.out, "checkpoints"), rtol=1e-4
    )
    assert_same_training(out, reference.out, atol=2e-5)
    assert metrics["accuracy"] == pytest.approx(reference.metrics["accuracy"], abs=0.03)


def test_multi_worker_strategy_with_two_processes_equals_single_device(
    tiny_config, reference, single_device, tmp_path
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
            tmp_path,
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
    assert_replicas_split_the_global_batch(
        read_replica_records(tmp_path, 2), single_device
    )
    assert [r["num_replicas"] for r in results] == [2, 2]
    for result in results:
        np.testing.assert_allclose(
            result["losses"], reference.losses, rtol=0, atol=1e-5
        )
    # Only the chief (worker 0) keeps checkpoints, in the shared directory.
    assert tf.train.latest_checkpoint(str(out / "checkpoints")).endswith("ckpt-16")
    assert_same_checkpoint(
        out / "checkpoints", os.path.join(reference.out, "checkpoints"), rtol=1e-4
    )
    assert_same_training(out, reference.out, atol=2e-5)


# --- checkpoints and resume ---------------------------------------------------


def test_checkpoints_hold_prompt_head_optimizer_and_step_never_the_frozen_base(
    reference, preset
):
    import keras_hub

    directory = os.path.join(reference.out, "checkpoints")
    tensors = checkpoint_tensors(directory)
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    assert {k.split("/")[0] for k in tensors} <= {
        "trainable",
        "optimizer",
        "step",
        "save_counter",
        "seed_states",
        "epoch_loss",
    }
    # The prompt [P, H] and the head's kernel [H, C] and bias [C], nothing else.
    base = keras_hub.models.Backbone.from_preset(preset)
    hidden = base.hidden_dim
    trainable = sorted(s for k, s in shapes.items() if k.startswith("trainable/"))
    assert trainable == sorted([(TINY["prompt_length"], hidden), (hidden, 2), (2,)])
    # Adam's iteration count and learning rate, then two moments per variable.
    optimizer = sorted(s for k, s in shapes.items() if k.startswith("optimizer/"))
    assert optimizer == sorted([(), ()] + 2 * trainable)
    iterations = [
        int(v)
        for k, v in tensors.items()
        if k.startswith("optimizer/") and v.dtype.kind == "i"
    ]
    assert iterations == [16]
    assert int(tensors["step/.ATTRIBUTES/VARIABLE_VALUE"]) == 16
    # No tensor has the shape of any base weight (the [V, H] vocabulary, the
    # positions, the transformer kernels...), and together they are a small
    # fraction of the base, in numbers and on disk.
    base_shapes = {tuple(w.shape) for w in base.weights}
    assert len(base.weights) > 30
    assert tuple(base.token_embedding.embeddings.shape) in base_shapes
    assert not set(shapes.values()) & base_shapes
    stored = sum(v.size for v in tensors.values())
    base_size = sum(int(np.prod(w.shape)) for w in base.weights)
    assert stored < 0.05 * base_size, (stored, base_size)
    latest = tf.train.latest_checkpoint(directory)
    stored_bytes = sum(os.path.getsize(p) for p in glob.glob(latest + ".*"))
    base_bytes = os.path.getsize(os.path.join(preset, "model.weights.h5"))
    assert stored_bytes < 0.1 * base_bytes, (stored_bytes, base_bytes)


def kill_after(process, line):
    """SIGKILL `process` once it prints `line`; check that it died of it."""
    try:
        for printed in process.stdout:
            if printed.strip() == line:
                process.send_signal(signal.SIGKILL)
                break
        process.wait(timeout=SUBPROCESS_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL


def test_killed_run_resumes_from_its_checkpoint_to_the_uninterrupted_prompt(
    tiny_config, tmp_path
):
    # Head dropout on: resuming must also restore the dropout seed states.
    config = dict(dropout=0.3, checkpoint_every=2)
    out = tmp_path / "killed"
    process = run_driver(driver(tmp_path), "slow", tiny_config(out, **config))
    kill_after(process, "step 7")
    latest = tf.train.latest_checkpoint(str(out / "checkpoints"))
    assert latest.endswith("ckpt-6")
    assert not (out / "prompt.npz").exists()
    killed_at = checkpoint_tensors(out / "checkpoints")
    assert int(killed_at["step/.ATTRIBUTES/VARIABLE_VALUE"]) == 6
    assert int(killed_at["optimizer/0/.ATTRIBUTES/VARIABLE_VALUE"]) == 6  # Adam's

    # Restart (here, in this process) and compare with an uninterrupted run.
    resumed = train_here(tiny_config(out, **config))
    assert resumed.metrics["resumed_from_step"] == 6
    assert resumed.metrics["steps"] == 16
    expected = train_here(tiny_config(tmp_path / "uninterrupted", **config))
    # Steps 7..16 see the same batches, dropout masks and optimizer state.
    assert len(resumed.losses) == 10
    np.testing.assert_allclose(resumed.losses, expected.losses[6:], rtol=0, atol=1e-6)
    assert_same_training(out, expected.out, atol=1e-6)
    assert_same_checkpoint(
        out / "checkpoints", tmp_path / "uninterrupted" / "checkpoints", rtol=1e-5
    )


def test_killed_default_run_resumes_to_the_uninterrupted_prefix(tmp_path):
    """The embedded default (a prefix on the packaged MiniLM, whose own
    dropout stays on), killed mid-epoch: the dropout generators' states are
    part of the checkpoint, so the resumed run ends on the same prefix."""
    config = dict(epochs=1, baseline=False, checkpoint_every=3)
    out = tmp_path / "killed"
    process = run_driver(driver(tmp_path), "slow", ClassifierConfig(str(out), **config))
    kill_after(process, "step 5")
    assert tf.train.latest_checkpoint(str(out / "checkpoints")).endswith("ckpt-3")
    resumed = train_here(ClassifierConfig(str(out), **config))
    assert resumed.metrics["resumed_from_step"] == 3
    expected = train_here(ClassifierConfig(str(tmp_path / "straight"), **config))
    assert resumed.metrics["method"] == "prefix"
    np.testing.assert_allclose(resumed.losses, expected.losses[3:], rtol=0, atol=1e-6)
    with (
        np.load(out / "prompt.npz") as a,
        np.load(tmp_path / "straight" / "prompt.npz") as b,
    ):
        assert a["prompt"].shape == (6, 2, 20, 12, 32)
        np.testing.assert_allclose(a["prompt"], b["prompt"], rtol=0, atol=1e-6)


def test_resume_refuses_checkpoints_of_different_settings(tiny_config, reference):
    with pytest.raises(ValueError, match="different settings \\(prompt_length\\)"):
        train_classifier(tiny_config(reference.out, prompt_length=5), verbose=0)


# --- TPU readiness ------------------------------------------------------------


def adam_first_moments(trainer):
    """Adam's first moment of each of `trainer.variables`, by variable path."""
    slots = {v.path: v for v in trainer.optimizer.variables}
    prefix = trainer.optimizer.name
    return [
        slots[f"{prefix}/{v.path.replace('/', '_')}_momentum"].numpy()
        for v in trainer.variables
    ]


def test_train_step_is_tpu_ready_and_xla_step_matches_the_plain_step(
    preset, files, tiny_config, build_prompted
):
    config = tiny_config("unused")
    preprocessor = models.load_preprocessor(preset, config.sequence_length)
    examples = data.read_examples(files[0])
    labels = data.LabelVocabulary.from_labels(examples.labels)
    build = build_prompted

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

    # The XLA-compiled step applies the same gradient as the plain one: the
    # mean-loss gradient computed here with a plain GradientTape. After one
    # Adam step the first moment is exactly (1 - beta_1) * gradient (the
    # update itself, about lr * sign(g), would hide a wrong scale).
    compiled = Trainer(
        build, learning_rate=0.05, global_batch_size=8, jit_compile=True, verbose=0
    )
    features, targets = next(iter(dataset))
    _, expected = reference_gradient_fn(build)(features, targets, 8)
    applied = {}
    for name, trainer in (("plain", plain), ("xla", compiled)):
        trainer.compiled_replica_step()(features, targets)
        assert int(trainer.optimizer.iterations.numpy()) == 1
        beta_1 = float(trainer.optimizer.beta_1)
        applied[name] = [m / (1 - beta_1) for m in adam_first_moments(trainer)]
        for got, want, variable in zip(applied[name], expected, trainer.variables):
            assert_close_scaled(got, want, 1e-4, f"{name}: {variable.path}")
    for got, want in zip(applied["xla"], applied["plain"]):
        assert_close_scaled(got, want, 1e-5, "xla vs plain")
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
    return initializers.uniform(seed=config.seed)((4, 16)).numpy()


def _dropout_bert_classifier(prompt):
    """A 2-layer random BERT classifier with backbone dropout 0.3, prompt-
    tuned with method `prompt` (`None`: fully trainable)."""
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
            hub.enable_prompt_tuning(
                model, 3, method=prompt, initializer=initializers.uniform(seed=1)
            )
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

    # Form 1 (the prompt enters at the embedding), a prefix (inside every
    # recomputed layer), then full fine-tuning.
    for prompt in ("embedding", "prefix", None):
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
