"""A distributed, resumable training loop for prompt-tuned classifiers.

`Trainer` runs the same code with no strategy, `MirroredStrategy`,
`MultiWorkerMirroredStrategy` or `TPUStrategy`: it builds the model and the
optimizer under `strategy.scope()`, feeds per-replica batches from
`strategy.distribute_datasets_from_function`, and runs one replica step with
`strategy.run`. The optimizer sums the replicas' gradients; each replica's
loss is divided by the global batch size, so the update equals a
single-device step on the whole global batch.

Why a custom step rather than `model.fit`: the step differentiates only the
trainable variables (the prompt and the task head), its graph can be
inspected for TPU readiness (`tf_softprompt.training.tpu`), it can be
compiled with `jit_compile=True`, and a checkpoint records the exact step,
so a killed run resumes mid-epoch on the same batch it would have seen.

Checkpoints (`tf.train.CheckpointManager`) hold the trainable variables, the
optimizer's variables, the dropout seed states, the step counter and the last
epoch's mean loss; never the frozen base weights, which come from the preset
on restart.

Each epoch ends with one progress line (`progress.Progress`): the epoch's
mean loss, the learning rate and what `fit`'s `validate` returns (e.g.
`val_loss`, `val_accuracy`); the same values go to TensorBoard.
"""

import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from tf_softprompt.training import precision as precision_lib
from tf_softprompt.training.progress import Progress
from tf_softprompt.training.recompute import recompute_transformer_layers
from tf_softprompt.training.variables import SEED_STATE_SUFFIX, tf_variable


def is_chief(strategy):
    """Whether this process writes checkpoints, logs and artifacts.

    True without a cluster; in a cluster, the `chief` task, or worker 0 when
    there is no chief (the `TF_CONFIG` convention).
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return True
    jobs = resolver.cluster_spec().as_dict()
    if not jobs or resolver.task_type is None:
        return True
    if resolver.task_type == "chief":
        return True
    return (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and ("chief" not in jobs)
    )


def sparse_classification_loss(labels, logits):
    """Per-example softmax cross-entropy from logits, `[b]` float32."""
    return keras.losses.sparse_categorical_crossentropy(
        labels, tf.cast(logits, tf.float32), from_logits=True
    )


class Trainer:
    """Train a Keras classifier's trainable variables under any strategy.

    Assumes the model maps a features dict (or tensor) of fixed shape to
    `[b, num_classes]` logits, and that everything meant to stay fixed is
    already frozen (e.g. by `tf_softprompt.hub.enable_prompt_tuning`), so
    `model.trainable_variables` is just the prompt and the head.

    Args:
        build_model: zero-argument callable returning the model. It is
            called under `strategy.scope()` right after
            `keras.utils.set_random_seed(seed)`, so every process and every
            restart builds identical initial weights.
        learning_rate: float, Adam's learning rate.
        global_batch_size: int, examples per step summed over replicas.
        strategy: a `tf.distribute.Strategy`; default: the current one.
        seed: int for weight initialisation and dropout.
        jit_compile: bool, compile the replica step with XLA.
        checkpoint_dir: directory for `tf.train.CheckpointManager`, or None.
        max_to_keep: int, checkpoints kept.
        log_dir: TensorBoard log directory, or None.
        verbose: 0 (silent) or 1 (progress: a bar on a terminal, plain
            lines otherwise; `progress.Progress`).
        loss_fn: `(labels, logits) -> [b]` per-example loss.
        recompute: bool, recompute each transformer layer's activations in
            the backward pass (`recompute_transformer_layers`): less memory,
            one more forward pass per step, the same gradients.
        precision: `"float32"`, or `"mixed_bfloat16"`: the model is built
            under Keras' `mixed_bfloat16` policy (`training.precision`), so
            the frozen base computes in bfloat16 while every variable, and
            so every trained weight and the optimizer state, stays float32;
            the loss is computed in float32.

    Example:
    ```python
    trainer = Trainer(build, learning_rate=1e-2, global_batch_size=16,
                      strategy=tf.distribute.MirroredStrategy(),
                      checkpoint_dir="out/checkpoints")
    trainer.fit(dataset_fn, epochs=3, steps_per_epoch=14)
    ```
    """

    def __init__(
        self,
        build_model,
        *,
        learning_rate,
        global_batch_size,
        strategy=None,
        seed=0,
        jit_compile=False,
        checkpoint_dir=None,
        max_to_keep=2,
        log_dir=None,
        verbose=1,
        loss_fn=sparse_classification_loss,
        recompute=False,
        precision="float32",
    ):
        self.strategy = strategy or tf.distribute.get_strategy()
        self.global_batch_size = int(global_batch_size)
        self.seed = int(seed)
        self.jit_compile = bool(jit_compile)
        self.verbose = verbose
        self.precision = precision_lib.check(precision)
        self.loss_fn = loss_fn
        self.chief = is_chief(self.strategy)
        keras.utils.set_random_seed(self.seed)
        with self.strategy.scope():
            with precision_lib.policy(precision):
                self.model = build_model()
            if recompute:
                recompute_transformer_layers(self.model)
            self.variables = list(self.model.trainable_variables)
            if not self.variables:
                raise ValueError(
                    "The model has no trainable variables. Enable prompt "
                    "tuning (tf_softprompt.hub.enable_prompt_tuning) or leave "
                    "the task head trainable."
                )
            self.optimizer = keras.optimizers.Adam(learning_rate)
            self.optimizer.build(self.variables)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        # The last finished epoch's mean loss, so that a run resumed with
        # nothing left to train still reports it.
        self.epoch_loss = tf.Variable(
            np.nan, dtype=tf.float32, trainable=False, name="epoch_loss"
        )
        seed_states = [
            v
            for v in self.model.non_trainable_variables
            if v.path.endswith(SEED_STATE_SUFFIX)
        ]
        self.checkpoint = tf.train.Checkpoint(
            step=self.step,
            epoch_loss=self.epoch_loss,
            trainable=[tf_variable(v) for v in self.variables],
            optimizer=[tf_variable(v) for v in self.optimizer.variables],
            seed_states=[tf_variable(v) for v in seed_states],
        )
        self.manager = None
        self._scratch_dir = None
        if checkpoint_dir:
            directory = os.fspath(checkpoint_dir)
            if not self.chief:
                # Every worker must save (saving may run collectives), but
                # only the chief's files are kept.
                self._scratch_dir = tempfile.mkdtemp(prefix="tfsp-worker-ckpt-")
                directory = self._scratch_dir
            self.manager = tf.train.CheckpointManager(
                self.checkpoint, directory, max_to_keep=max_to_keep
            )
            self._restore_dir = os.fspath(checkpoint_dir)
        self._log_dir = os.fspath(log_dir) if log_dir and self.chief else None
        self._writer = None
        self._step_fn = None

    # --- checkpoints -------------------------------------------------------

    def restore(self):
        """Restore the latest checkpoint, if any; returns the step reached."""
        if self.manager is None:
            return 0
        latest = tf.train.latest_checkpoint(self._restore_dir)
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        return int(self.step.numpy())

    def save(self):
        """Write a checkpoint at the current step (all workers call this)."""
        if self.manager is None:
            return None
        return self.manager.save(checkpoint_number=int(self.step.numpy()))

    def close(self):
        if self._scratch_dir:
            shutil.rmtree(self._scratch_dir, ignore_errors=True)
        if self._writer is not None:
            self._writer.flush()

    @property
    def writer(self):
        """The TensorBoard writer, created at the first scalar written (a
        run refused or with nothing to train writes no log)."""
        if self._writer is None and self._log_dir is not None:
            self._writer = tf.summary.create_file_writer(self._log_dir)
        return self._writer

    def log_scalars(self, values, step):
        if self._log_dir is None:
            return
        with self.writer.as_default(step=step):
            for name, value in values.items():
                write_scalar(name, value, step)

    @property
    def learning_rate(self):
        return float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))

    # --- the step ----------------------------------------------------------

    def replica_gradients(self, features, labels):
        """One replica's loss and gradients for its batch, without applying them.

        The loss is the sum of the per-example losses over this replica's
        examples divided by the *global* batch size, so the gradients summed
        over all replicas (what the optimizer applies) are the gradients of
        the mean loss over the global batch. Only `self.variables` are
        differentiated, so no gradient is computed for the frozen weights.

        Args:
            features: this replica's batch of model inputs.
            labels: `[b]` int labels.

        Returns:
            `(loss, gradients)`: a scalar and a list with one gradient per
            variable of `self.variables`, in that order.

        Example:
        ```python
        per_replica = trainer.strategy.run(
            tf.function(trainer.replica_gradients), args=(features, labels)
        )
        ```
        """
        with tf.GradientTape() as tape:
            logits = self.model(features, training=True)
            per_example = self.loss_fn(labels, logits)
            loss = tf.reduce_sum(per_example) / self.global_batch_size
        return loss, tape.gradient(loss, self.variables)

    def replica_step(self, features, labels):
        """One replica's forward, backward and update; returns its loss.

        The gradients are `replica_gradients`; the optimizer all-reduces
        (sums) them over the replicas before applying them.
        """
        loss, gradients = self.replica_gradients(features, labels)
        self.optimizer.apply_gradients(zip(gradients, self.variables))
        return loss

    def compiled_replica_step(self):
        """`replica_step` as a `tf.function` (with XLA if `jit_compile`)."""
        return tf.function(self.replica_step, jit_compile=self.jit_compile)

    def _make_step_fn(self):
        replica_fn = self.compiled_replica_step()

        @tf.function
        def distributed_step(features, labels):
            losses = self.strategy.run(replica_fn, args=(features, labels))
            return self.strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

        return distributed_step

    # --- the loop ----------------------------------------------------------

    def fit(
        self,
        dataset_fn,
        *,
        epochs,
        steps_per_epoch,
        checkpoint_every=0,
        callbacks=(),
        validate=None,
    ):
        """Train to `epochs * steps_per_epoch` steps, resuming if possible.

        Args:
            dataset_fn: `(epoch, skip_steps, input_context) -> tf.data.Dataset`
                of per-replica batches (see `pipeline.training_dataset`).
            epochs: int.
            steps_per_epoch: int, global steps per epoch.
            checkpoint_every: int, also checkpoint every N steps (0: only at
                the end of each epoch).
            callbacks: callables `fn(step, loss)` run after every step.
            validate: optional `model -> {name: float}` run after each
                epoch (e.g. `val_loss`, `val_accuracy`); printed with the
                epoch's loss and learning rate, and written to TensorBoard.

        Returns:
            dict with `loss` (mean loss of the last epoch trained, restored
            from the checkpoint if nothing was left to train; `None` before
            any epoch ended), `steps`, `resumed_from` and `history` (one
            dict per epoch trained now, with the seconds `validate` took).
        """
        resumed_from = self.restore()
        total = epochs * steps_per_epoch
        if resumed_from > total:
            raise ValueError(
                f"The checkpoint is at step {resumed_from}, past the "
                f"{total} steps of {epochs} epochs: it trained for more epochs. "
                "Pass at least that many --epochs, or a new --out directory."
            )
        if self._step_fn is None:
            self._step_fn = self._make_step_fn()
        progress = Progress(
            epochs, steps_per_epoch, enabled=self.verbose and self.chief
        )
        history = []
        step = resumed_from
        while step < total:
            epoch = step // steps_per_epoch
            skip = step - epoch * steps_per_epoch
            dataset = self.strategy.distribute_datasets_from_function(
                lambda context, e=epoch, s=skip: dataset_fn(e, s, context)
            )
            progress.start_epoch(epoch, skip)
            losses = []
            started = time.perf_counter()
            for features, labels in dataset:
                loss = float(self._step_fn(features, labels))
                if not np.isfinite(loss):
                    raise FloatingPointError(
                        f"The training loss became {loss} at step {step + 1}. "
                        "Lower the learning rate or restore a checkpoint."
                    )
                step += 1
                self.step.assign(step)
                losses.append(loss)
                self.log_scalars({"loss": loss}, step)
                progress.update(step - epoch * steps_per_epoch, loss)
                for callback in callbacks:
                    callback(step, loss)
                if checkpoint_every and step % checkpoint_every == 0:
                    self.save()
                if step % steps_per_epoch == 0:
                    break
            if step % steps_per_epoch:
                raise RuntimeError(
                    f"The dataset of epoch {epoch + 1} ended after step {step}, "
                    f"before its {steps_per_epoch} steps. Check steps_per_epoch."
                )
            seconds = time.perf_counter() - started
            values = {"loss": float(np.mean(losses))} if losses else {}
            self.epoch_loss.assign(values.get("loss", np.nan))
            self.save()
            values["learning_rate"] = self.learning_rate
            validate_seconds = 0.0
            if validate is not None and self.chief:
                validate_started = time.perf_counter()
                values.update(validate(self.model))
                validate_seconds = time.perf_counter() - validate_started
            values["steps_per_second"] = len(losses) / seconds if losses else 0.0
            self.log_scalars(
                {("epoch_loss" if k == "loss" else k): v for k, v in values.items()},
                step,
            )
            progress.end_epoch(epoch, values, seconds)
            history.append(
                {"epoch": epoch + 1, **values, "validate_seconds": validate_seconds}
            )
        last = float(self.epoch_loss.numpy())
        return {
            "loss": None if np.isnan(last) else last,
            "steps": step,
            "resumed_from": resumed_from,
            "history": history,
        }


def _scalar_metadata():
    from tensorflow.core.framework import summary_pb2

    plugin = summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
    return summary_pb2.SummaryMetadata(plugin_data=plugin).SerializeToString()


def write_scalar(name, value, step):
    """A TensorBoard scalar, written with core TF ops.

    `tf.summary.scalar` needs the `tensorboard` package at write time; this
    writes the same record (the "scalars" plugin's metadata) without it.
    """
    tf.summary.write(
        name,
        tf.constant(value, tf.float32),
        step=step,
        metadata=_scalar_metadata(),
    )
