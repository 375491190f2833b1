"""One archive writer for every export kind.

Each model family's exporter (classifiers in `classifier`, causal LMs in
`causal_lm`) builds a `Servable`: what it runs (a *stages* object), which
tasks it names, what the archive tracks and its part of the export info.
`write(servable, ...)` owns the rest: the version check, the endpoints, the
warmup requests, the info file and the atomic write.

A stages object has three named stages:

- `encode(text [B]) -> (token_ids [B, T] int32, padding_mask [B, T] bool)`:
  the string ops, on CPU;
- `run(token_ids, padding_mask, task_index) -> {name: numeric tensor}`:
  the model stage, int/float only with a static T: what `predict_tokens`
  returns and what the Cloud TPU converter takes (alias `tpu_func`);
- `present(outputs, task_index) -> {name: tensor}`: `serving_default`'s
  outputs, which may add strings (label names, decoded text).

`endpoints` turns them into the two batch-major signatures, with a `task`
(`task_id`) input when several tasks are served, and `write` saves them
with the Keras `ExportArchive` (whose SavedModels load in TF Serving's C++
session loader; a plain `tf.saved_model.save` of a Keras 3 model does not),
the warmup requests and `assets.extra/tf_softprompt.json`, into a new
version directory published atomically (`layout`).

Example:
```python
servable = Servable(stages, text_length=28, table=table, tracked=[model], info={})
write(servable, "models/demo", 1)
```
"""

import contextlib
import dataclasses
import inspect
import io
import json
import os

import numpy as np
import tensorflow as tf

from tf_softprompt.export import layout

TPU_ALIAS = "tpu_func"
INFO_FILE = os.path.join("assets.extra", "tf_softprompt.json")
SIGNATURES = ("serving_default", "predict_tokens")


@dataclasses.dataclass
class Servable:
    """What one export serves.

    Attributes:
        stages: an object with `encode`, `run` and `present` (see above).
        text_length: int T, the static token positions of `predict_tokens`.
        table: what names the served tasks (`tasks`, `task_index`,
            `check_task_id`), or `None` for one unnamed task.
        tracked: objects the archive tracks (models, tokenizers: what owns
            lookup tables); the weights saved are the ones the endpoints
            read.
        info: the family's part of `assets.extra/tf_softprompt.json`.
        extra: `{signature: stages}` of more token signatures built like
            `predict_tokens` (e.g. a causal LM's `score_tokens`).
        keras2: bool, the models are tf-keras models.
        warmup_texts: texts for the warmup requests.
        around_write: optional context-manager factory entered while the
            archive traces and writes (e.g. a causal LM's sampler).
    """

    stages: object
    text_length: int
    table: object
    tracked: list
    info: dict
    extra: dict = dataclasses.field(default_factory=dict)
    keras2: bool = False
    warmup_texts: tuple = ("a warmup request", "")
    around_write: object = None


def is_multi_task(table):
    return table is not None and len(table.tasks) > 1


def endpoints(stages, text_length, table):
    """`{name: (fn, input_signature)}` for `serving_default` and
    `predict_tokens`.

    Args:
        stages: an object with `encode`, `run` and `present` (see above).
        text_length: int T, the static token positions of `predict_tokens`.
        table: what names the served tasks (`tasks`, `task_index`,
            `check_task_id`): the `MultiTaskPromptTable`, or the
            classifier's `ensembles.Routes`; `None` for none. Several tasks
            add the `task`/`task_id` inputs, checked in-graph.

    `predict_tokens` checks its inputs' shapes in-graph (TF Serving passes
    any shape through to the session), so a wrong length is an
    INVALID_ARGUMENT naming the expected shape, not a silent answer.
    """
    ids_spec = tf.TensorSpec([None, text_length], tf.int32, name="token_ids")
    mask_spec = tf.TensorSpec([None, text_length], tf.int32, name="padding_mask")
    text_spec = tf.TensorSpec([None], tf.string, name="text")
    run = shared_model_stage(stages.run, text_length)

    def from_text(text, task_index):
        token_ids, padding_mask = stages.encode(text)
        outputs = run(token_ids, padding_mask, task_index)
        return stages.present(outputs, task_index)

    def from_tokens(token_ids, padding_mask, task_index):
        token_ids, padding_mask, task_index = _checked_tokens(
            token_ids, padding_mask, task_index, text_length
        )
        return run(token_ids, padding_mask, task_index)

    if is_multi_task(table):

        def serving_default(text, task):
            return from_text(text, table.task_index(task))

        def predict_tokens(token_ids, padding_mask, task_id):
            return from_tokens(token_ids, padding_mask, table.check_task_id(task_id))

        return {
            "serving_default": (
                serving_default,
                [text_spec, tf.TensorSpec([None], tf.string, name="task")],
            ),
            "predict_tokens": (
                predict_tokens,
                [ids_spec, mask_spec, tf.TensorSpec([None], tf.int32, name="task_id")],
            ),
        }

    def zeros(x):
        return tf.zeros(tf.shape(x)[:1], tf.int32)

    def serving_default(text):  # noqa: F811 - one pair per mode
        return from_text(text, zeros(text))

    def predict_tokens(token_ids, padding_mask):  # noqa: F811
        return from_tokens(token_ids, padding_mask, zeros(token_ids))

    return {
        "serving_default": (serving_default, [text_spec]),
        "predict_tokens": (predict_tokens, [ids_spec, mask_spec]),
    }


def shared_model_stage(run, text_length):
    """`run` as one traced function that every signature calls.

    Traced inside each signature, the model stage (the whole network; for a
    causal LM the prefill and the generation loop) would be copied into
    each signature's function, and the SavedModel's function library would
    hold it once per signature. TF Serving keeps that library in memory
    several times over (the MetaGraphDef, the session's GraphDef, its
    function library and graph), so a copy costs megabytes per loaded
    model. One `tf.function` with a fixed signature is traced once and
    called from `serving_default` and `predict_tokens` alike (a
    `StatefulPartitionedCall`), so the library holds it once; the ops it
    runs, and so the outputs, are the same.

    Args:
        run: `(token_ids [B, T] int32, padding_mask [B, T] bool,
            task_index [B] int32) -> {name: tensor}`.
        text_length: int T.

    Returns:
        A callable with `run`'s arguments (cast to those dtypes).
    """
    traced = tf.function(
        run,
        input_signature=[
            tf.TensorSpec([None, text_length], tf.int32),
            tf.TensorSpec([None, text_length], tf.bool),
            tf.TensorSpec([None], tf.int32),
        ],
        autograph=False,  # as the archive traces the endpoints
    )

    def call(token_ids, padding_mask, task_index):
        return traced(
            tf.cast(token_ids, tf.int32),
            tf.cast(padding_mask, tf.bool),
            tf.cast(task_index, tf.int32),
        )

    return call


def _checked_tokens(token_ids, padding_mask, task_index, text_length):
    """Assert `[B, T]` ids and mask (and `[B]` task ids); returns them."""
    ids_shape = tf.shape(token_ids)
    ok = tf.logical_and(
        tf.equal(ids_shape[1], text_length),
        tf.reduce_all(tf.equal(tf.shape(padding_mask), ids_shape)),
    )
    ok = tf.logical_and(ok, tf.equal(tf.shape(task_index)[0], ids_shape[0]))
    check = tf.debugging.Assert(
        ok,
        [
            f"predict_tokens takes token_ids and padding_mask of shape [batch, "
            f"{text_length}] (and task_id [batch]). Received shapes token_ids, "
            "padding_mask, task ids:",
            ids_shape,
            tf.shape(padding_mask),
            tf.shape(task_index),
        ],
        name="check_token_shapes",
    )
    with tf.control_dependencies([check]):
        return tf.identity(token_ids), tf.identity(padding_mask), task_index


def warmup_inputs(encode, texts, table):
    """Warmup requests for both signatures.

    One row per text; with several tasks in `table`, rows cycle through
    the tasks (repeating the texts if there are more tasks than texts), so
    every task's rows are exercised.
    """
    texts = list(texts)
    if is_multi_task(table) and len(table.tasks) > len(texts):
        texts = [texts[i % len(texts)] for i in range(len(table.tasks))]
    text = tf.constant(texts)
    # In graph mode, as when serving (eager keras-hub tokenizers return lists).
    token_ids, padding_mask = tf.function(encode)(text)
    tokens = {
        "token_ids": token_ids.numpy(),
        "padding_mask": tf.cast(padding_mask, tf.int32).numpy(),
    }
    default = {"text": text.numpy()}
    if is_multi_task(table):
        tasks = [table.tasks[i % len(table.tasks)] for i in range(len(texts))]
        default["task"] = np.array(tasks, dtype=object)
        tokens["task_id"] = np.array(
            [i % len(table.tasks) for i in range(len(texts))], np.int32
        )
    return {"serving_default": default, "predict_tokens": tokens}


def _archive_class(keras2):
    if keras2:
        from tf_keras.export import ExportArchive
    else:
        from keras.export import ExportArchive
    return ExportArchive


def _endpoint_function(archive, name):
    # Keras 3 keeps endpoints on an inner trackable; tf-keras on itself.
    holder = getattr(archive, "_tf_trackable", archive)
    return getattr(holder, name)


def _one_object_per_variable(archive):
    """Leave the weights to the variables the endpoints read.

    `ExportArchive.track(model)` lists the model's variables (`variables`,
    `trainable_variables`, `non_trainable_variables`), and the writer lists
    the `tf.Variable`s the endpoints read (`_all_variables`). A Keras 3
    variable is a trackable of its own that saves its value, so every
    weight was written twice (`variables/N` and `_all_variables/N`) and
    restored twice by TF Serving, and weights no endpoint reads (a prompt
    table whose keys and values were baked) were written too. With the
    first three lists empty, each weight an endpoint reads is saved once
    and nothing else is. (`track` still finds the lookup tables a
    tokenizer owns.)
    """
    holder = getattr(archive, "_tf_trackable", archive)
    for name in ("variables", "trainable_variables", "non_trainable_variables"):
        if getattr(holder, name, None) is not None:
            setattr(holder, name, [])


def _write_out(archive, path, options):
    if "verbose" in inspect.signature(archive.write_out).parameters:
        archive.write_out(path, options=options, verbose=False)
    else:  # tf-keras's write_out prints the endpoints unconditionally.
        with contextlib.redirect_stdout(io.StringIO()):
            archive.write_out(path, options=options)


def write(servable, base_dir, version, model_name=None):
    """Save a `Servable` as `BASE/<version>`, atomically.

    Builds `serving_default` and `predict_tokens` (and `servable.extra`),
    the warmup requests for each, and the export info, and writes them with
    Keras' `ExportArchive` into a hidden directory renamed into place.

    Args:
        servable: the `Servable`.
        base_dir: the model's TF Serving base path.
        version: positive int; `BASE/<version>` must not exist.
        model_name: the name in warmup requests (default: the base dir name).

    Returns:
        The path of the new version directory.
    """
    base_dir = os.fspath(base_dir)
    target = layout.check_new_version(base_dir, version)
    around = servable.around_write or contextlib.nullcontext
    with around():
        _write(servable, base_dir, version, model_name)
    return target


def _write(servable, base_dir, version, model_name):
    stages, table = servable.stages, servable.table
    signatures = endpoints(stages, servable.text_length, table)
    # Encoding the warmup texts eagerly also builds a keras-hub tokenizer,
    # which the archive must track (it may own lookup tables).
    warmup = warmup_inputs(stages.encode, servable.warmup_texts, table)
    for name, extra in servable.extra.items():
        function, signature = endpoints(extra, servable.text_length, table)[
            "predict_tokens"
        ]
        function.__name__ = name  # a fresh closure: names its traced function
        signatures[name] = (function, signature)
        warmup[name] = warmup["predict_tokens"]
    archive = _archive_class(servable.keras2)()
    tracked = list(servable.tracked)
    tokenizer = getattr(stages, "tokenizer", None)
    if getattr(tokenizer, "built", False) and all(t is not tokenizer for t in tracked):
        tracked.append(tokenizer)
    for obj in tracked:
        archive.track(obj)
    for name, (fn, signature) in signatures.items():
        archive.add_endpoint(name, fn, input_signature=signature)
    options = tf.saved_model.SaveOptions(
        function_aliases={TPU_ALIAS: _endpoint_function(archive, "predict_tokens")}
    )
    policy = getattr(tracked[0], "dtype_policy", None) if tracked else None
    info = {
        "format": "tf-softprompt-export/1",
        "compute_dtype": getattr(policy, "compute_dtype", None),
        **servable.info,
        "signatures": list(signatures),
        "function_aliases": {TPU_ALIAS: "predict_tokens"},
    }
    _one_object_per_variable(archive)
    with layout.publish_version(base_dir, version) as tmp:
        _write_out(archive, tmp, options)
        layout.write_warmup_requests(
            tmp, model_name or os.path.basename(os.path.abspath(base_dir)), warmup
        )
        with open(os.path.join(tmp, INFO_FILE), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2, ensure_ascii=False)


def read_info(export_dir):
    """The `assets.extra/tf_softprompt.json` dict of an export."""
    with open(os.path.join(os.fspath(export_dir), INFO_FILE)) as f:
        return json.load(f)


def table_info(table):
    """The prompt table's part of the export info."""
    if table is None:
        return {
            "tasks": [],
            "prompt_lengths": [],
            "max_prompt_length": 0,
            "prompt_offset": 0,
            "prompt_method": None,
            "fingerprint": None,
            "multi_task": False,
        }
    return {
        "tasks": list(table.tasks),
        "prompt_lengths": list(table.lengths),
        "max_prompt_length": table.max_length,
        "prompt_offset": table.offset if table.takes_positions else None,
        "prompt_method": table.method,
        "prompt_takes_positions": table.takes_positions,
        "fingerprint": {table.fingerprint_key: table.fingerprint},
        "vocab_fingerprint": table.vocab_fingerprint,
        "multi_task": is_multi_task(table),
    }
