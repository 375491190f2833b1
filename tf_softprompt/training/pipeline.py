"""The `tf.data` input pipeline for training and evaluation.

Tokenisation runs here, per example and before batching, so the train step
only ever sees fixed-shape integer tensors: `[b, T]` token ids, padding mask
and segment ids, and `[b]` labels, with `drop_remainder=True` on every
training batch. That is what an XLA/TPU step needs.

The order of examples is a pure function of `(seed, epoch)` (a NumPy
permutation, not a `tf.data` shuffle buffer), so a resumed run, a
MirroredStrategy run and a multi-worker run all see the same global batches
in the same order as a single-device run.
"""

import numpy as np
import tensorflow as tf


def epoch_order(num_examples, seed, epoch):
    """The example order of one epoch: a permutation of `range(n)`."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def steps_per_epoch(num_examples, global_batch_size):
    """Full global batches per epoch (the remainder is dropped)."""
    steps = num_examples // global_batch_size
    if steps == 0:
        raise ValueError(
            f"There are {num_examples} training examples, fewer than one global "
            f"batch of {global_batch_size}. Lower the batch size or add data."
        )
    return steps


def epoch_indices(num_examples, global_batch_size, seed, epoch, skip_steps=0):
    """The examples one epoch trains on, in order, after `skip_steps`.

    Full global batches only (the remainder of the permutation is dropped).
    """
    steps = steps_per_epoch(num_examples, global_batch_size)
    order = epoch_order(num_examples, seed, epoch)[: steps * global_batch_size]
    return order[skip_steps * global_batch_size :]


def per_replica_batches(dataset, global_batch_size, input_context=None):
    """Cut a dataset of single examples, in global-batch order, into
    per-replica batches.

    Each global batch of `global_batch_size` examples is cut into
    `num_replicas_in_sync` consecutive per-replica batches; with several
    input pipelines (one per worker) pipeline `i` takes every `i`-th of them.
    Summed over replicas, every step therefore sees exactly the examples a
    single device would.
    """
    replicas = input_context.num_replicas_in_sync if input_context else 1
    if global_batch_size % replicas:
        raise ValueError(
            f"The global batch size {global_batch_size} must be divisible by "
            f"the {replicas} replicas in sync. Use a multiple of {replicas}."
        )
    dataset = dataset.batch(global_batch_size // replicas, drop_remainder=True)
    if input_context and input_context.num_input_pipelines > 1:
        dataset = dataset.shard(
            input_context.num_input_pipelines, input_context.input_pipeline_id
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def training_dataset(
    texts,
    label_ids,
    preprocess,
    *,
    global_batch_size,
    seed,
    epoch,
    skip_steps=0,
    input_context=None,
):
    """One epoch of per-replica training batches of a classifier.

    Args:
        texts: list of str.
        label_ids: list of int.
        preprocess: callable `str tensor -> dict of [T] int/bool tensors`,
            e.g. a keras-hub `TextClassifierPreprocessor`.
        global_batch_size: int, examples per step over all replicas.
        seed: int, the data-order seed.
        epoch: int, the epoch (0-based); selects the permutation.
        skip_steps: int, steps of this epoch already trained (on resume).
        input_context: the `tf.distribute.InputContext` given by
            `strategy.distribute_datasets_from_function`, or `None`.

    Returns:
        A `tf.data.Dataset` of `(features, labels)` with per-replica batch
        size `global_batch_size // num_replicas_in_sync` and static shapes
        (`per_replica_batches`).
    """
    order = epoch_indices(len(texts), global_batch_size, seed, epoch, skip_steps)
    dataset = tf.data.Dataset.from_tensor_slices(
        (
            tf.constant([texts[i] for i in order], tf.string),
            tf.constant([label_ids[i] for i in order], tf.int32),
        )
    )
    dataset = dataset.map(
        lambda text, label: (preprocess(text), label),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return per_replica_batches(dataset, global_batch_size, input_context)


def inference_dataset(texts, preprocess, batch_size, label_ids=None):
    """Batches for evaluation or prediction, in input order.

    The last batch may be short: evaluation runs eagerly-dispatched on one
    device, not in the compiled train step.
    """
    if label_ids is None:
        dataset = tf.data.Dataset.from_tensor_slices(tf.constant(texts, tf.string))
        dataset = dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        dataset = tf.data.Dataset.from_tensor_slices(
            (tf.constant(texts, tf.string), tf.constant(label_ids, tf.int32))
        )
        dataset = dataset.map(
            lambda text, label: (preprocess(text), label),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
