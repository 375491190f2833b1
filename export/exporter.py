"""Export a prompt-tuned classifier as a TF Serving SavedModel.

The trained prompts are baked into the SavedModel as a constant-shaped
table, so TF Serving needs nothing from this package at serving time. The
graph is written with the Keras `ExportArchive` (Keras 3, or tf-keras's for
Keras 2 models), whose SavedModels load in TF Serving's C++ session loader;
a plain `tf.saved_model.save` of a Keras 3 model does not.

Stages, each a named function:

1. `encode` (CPU, string ops): text to fixed-length ids (`text.TextEncoder`),
   truncating the text, never the prompt.
2. `select_prompts`: task ids to each example's virtual prompt ids and
   mask (`prompt_table.MultiTaskPromptTable`); task names are looked up first.
3. the model stage (a "runner"): inserts the prompt ids at the prompt
   offset and runs the Keras model (core layers), or hands them to the
   keras-hub adapter (`tf_softprompt.hub`); int/float only with a static
   sequence length, the part a TPU converter takes.
4. `postprocess`: class probabilities, label ids and label names.

Model kinds: Keras 3 and tf-keras models holding one `PromptEmbedding`
(one or several tasks) or `PromptPrepend` (one task), keras-hub
Backbones/Tasks with prompt tuning (or given artifacts, then enabled to
fit), optionally with one classifier head per task, and models without a
prompt (a baseline).

Signatures (all batch-major, so TF Serving's batching applies):

- `serving_default(text: string[B] [, task: string[B]])` -> `probabilities`
  float32 `[B, C]`, `label_ids` int32 `[B]`, `label_names` string `[B]`.
  The `task` input exists when several prompts are exported.
- `predict_tokens(token_ids: int32[B, T], padding_mask: int32[B, T]
  [, task_id: int32[B]])` -> the same outputs, with `T = sequence_length -
  Pmax` text positions as `TextEncoder` produces them. No string ops; it is
  also saved under the function alias `tpu_func` for the TPU converter.

Example:
```python
path = export_model(
    model, "models/demo", 1, tokenizer=tokenizer, sequence_length=32,
    labels=["negative", "positive"],
    prompts={"sst2": "sst2.prompt.npz", "imdb": "imdb.prompt.npz"},
)
```
"""

import contextlib
import dataclasses
import inspect
import io
import json
import os

import keras
import numpy as np
import tensorflow as tf

from tf_softprompt import initializers, keras2, layers
from tf_softprompt.export import layout
from tf_softprompt.export.prompt_table import MultiTaskPromptTable, insert_prompt_ids
from tf_softprompt.export.text import TextEncoder

TPU_ALIAS = "tpu_func"
INFO_FILE = os.path.join("assets.extra", "tf_softprompt.json")
_EMBEDDING_LAYERS = (layers.PromptEmbedding, keras2.PromptEmbedding)
_PREPEND_LAYERS = (layers.PromptPrepend, keras2.PromptPrepend)


def find_prompt_layer(model):
    """The model's one prompt layer (`PromptEmbedding`/`PromptPrepend`), or
    `None` for a model without prompts (a baseline export)."""
    found = [
        layer
        for layer in _walk_layers(model)
        if isinstance(layer, _EMBEDDING_LAYERS + _PREPEND_LAYERS)
    ]
    if len(found) > 1:
        raise ValueError(
            "The exporter serves one prompt layer per model. Received a model "
            f"with {len(found)}: {[layer.name for layer in found]}."
        )
    return found[0] if found else None


def _walk_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers") and layer is not model:
            yield from _walk_layers(layer)


def _is_keras2(model):
    import tf_keras

    return isinstance(model, tf_keras.Model)


def _clone_with(model, old, new):
    if not any(top is old for top in model.layers):
        raise ValueError(
            f"The prompt layer {old.name} is nested inside a sub-model of "
            f"{model.name}; the exporter replaces top-level prompt layers only. "
            "Build the prompt layer into the outer functional model."
        )
    if _is_keras2(model):
        import tf_keras

        clone = tf_keras.models.clone_model
    else:
        clone = keras.models.clone_model
    return clone(model, clone_function=lambda layer: new if layer is old else layer)


def _table_model(model, layer, table):
    """The model with its prompt layer replaced by one holding `table`.

    Every other layer (and its weights) is shared, not copied.
    """
    if isinstance(layer, _EMBEDDING_LAYERS):
        new = type(layer).from_embedding(
            layer.embedding,
            table.num_rows,
            validate_ids=layer.validate_ids,
            name=f"{layer.name}_task_table",
        )
        new.build((None, None))
    else:
        if len(table.tasks) != 1:
            raise ValueError(
                "Several prompts in one export need virtual prompt ids "
                "(`PromptEmbedding`); this model inserts its prompt with "
                f"`PromptPrepend` ({layer.name}). Export one task per model, or "
                "build the model with `PromptEmbedding`."
            )
        # Not through get_config: it refuses a vocabulary-based initialiser,
        # which a PromptPrepend cannot rebuild; the table is the prompt here.
        new = type(layer)(
            layer.num_prompt_tokens,
            offset=layer.offset,
            prompt_initializer=initializers.from_array(table.table),
            name=f"{layer.name}_exported",
            dtype=layer.dtype_policy,
        )
        new.build((None, None, int(layer.prompt.shape[1])))
    new.prompt.assign(table.table)
    return _clone_with(model, layer, new)


def _prompt_table(layer, prompts, vocabulary, task, offset, tokenizer, specials):
    """The table to serve: the layer's own prompt, or the artifacts'."""
    if layer is None:
        if prompts is not None:
            raise ValueError(
                "The model has no tf_softprompt prompt layer, so it cannot serve "
                f"prompts. Received: prompts={prompts!r}. Build the model with "
                "`PromptEmbedding`, or export without `prompts`."
            )
        return None
    if prompts is None:
        if offset is None:
            start = TextEncoder.resolve_specials(tokenizer, **specials)[0]
            offset = 0 if start is None else 1
        vocab = vocabulary
        if vocab is None and isinstance(layer, _EMBEDDING_LAYERS):
            vocab = _vocabulary(layer)
        return MultiTaskPromptTable.from_arrays(
            {task: np.asarray(layer.prompt)}, vocab, offset=offset, method=layer.method
        )
    vocab = vocabulary if vocabulary is not None else _vocabulary(layer)
    table = MultiTaskPromptTable.from_artifacts(prompts, vocab)
    if table.method != layer.method:
        raise ValueError(
            f"The prompts were trained with method={table.method!r}, but the "
            f"model's {type(layer).__name__} layer {layer.name} uses "
            f"method={layer.method!r}. Export them with a model of their method."
        )
    return table if offset is None else dataclasses.replace(table, offset=int(offset))


def _hub_model(model, prompts):
    """True for a keras-hub model that has, or is to get, prompt tuning."""
    try:
        import keras_hub
    except ImportError:
        return False
    if not isinstance(model, (keras_hub.models.Backbone, keras_hub.models.Task)):
        return False
    from tf_softprompt import hub

    return hub.get_prompt_tuning(model) is not None or prompts is not None


def hub_prompt_table(model, prompts, task="default", offset=None):
    """`(handle, table, backbone)` for a keras-hub model (`tf_softprompt.hub`).

    With `prompts=None` the model's own prompt (prompt tuning must be
    enabled) is the one task `task`. With artifacts, the table is built from
    them and checked against the base's fingerprint; the handle is `None`
    when prompt tuning is not enabled yet.
    """
    from tf_softprompt import hub

    handle = hub.get_prompt_tuning(model)
    backbone = getattr(model, "backbone", model)
    if prompts is None:
        if handle is None:
            raise ValueError(
                f"{type(model).__name__} has no prompt tuning enabled and no "
                "`prompts` were given. Pass prompt artifacts or call "
                "`tf_softprompt.hub.enable_prompt_tuning` first."
            )
        table = MultiTaskPromptTable.from_arrays(
            {task: handle.prompt_values()},
            np.asarray(handle.vocabulary),
            offset=handle.offset,
            method=handle.method.name,
        )
        return handle, table, backbone
    vocabulary = handle.vocabulary if handle else backbone.token_embedding.embeddings
    table = MultiTaskPromptTable.from_artifacts(prompts, np.asarray(vocabulary))
    if offset is not None:
        table = dataclasses.replace(table, offset=int(offset))
    return handle, table, backbone


def fit_prompt_tuning(model, handle, table):
    """Enable (if needed) and fill `model`'s prompt tuning with `table`.

    Modifies `model`: a model without prompt tuning gets it with
    `K * Pmax` prompt tokens, and the table is assigned to its prompt.
    """
    from tf_softprompt import hub

    if handle is None:
        handle = hub.enable_prompt_tuning(
            model, table.num_rows, offset=table.offset, method=table.method
        )
    shape = (handle.num_prompt_tokens, handle.offset, handle.method.name)
    if shape != (table.num_rows, table.offset, table.method):
        raise ValueError(
            "The model's prompt tuning does not fit the prompts: it has "
            f"(num_prompt_tokens, offset, method)={shape}, the table needs "
            f"{(table.num_rows, table.offset, table.method)} ({len(table.tasks)} "
            f"tasks x {table.max_length} rows). Export a model without prompt "
            "tuning enabled and the exporter enables it to fit."
        )
    handle.assign_prompt(table.table)
    return handle


def _prepare_hub(model, prompts, task, offset, heads=None):
    """`(model, runner, table)` for a keras-hub classifier."""
    handle, table, backbone = hub_prompt_table(model, prompts, task, offset)
    if heads is not None:
        return _prepare_hub_heads(model, backbone, handle, table, heads)
    if prompts is not None:
        handle = fit_prompt_tuning(model, handle, table)
    return model, _hub_runner(handle, model), table


def _prepare_hub_heads(model, backbone, handle, table, heads):
    """Per-task heads: prompt tuning goes on the backbone, heads are stacked."""
    if handle is not None or not hasattr(model, "output_dense"):
        raise ValueError(
            "`heads` needs a keras-hub TextClassifier (with `output_dense`) "
            "without prompt tuning enabled. Received: "
            f"{type(model).__name__}, prompt tuning "
            f"{'enabled' if handle else 'not enabled'}."
        )
    if set(heads) != set(table.tasks):
        raise ValueError(
            f"`heads` must name the same tasks as the prompts. Received heads "
            f"for {sorted(heads)}, prompts for {sorted(table.tasks)}."
        )
    activation = getattr(model.output_dense, "activation", None)
    if activation not in (None, keras.activations.linear):
        raise ValueError(
            "Per-task heads are applied as linear layers; the model's "
            f"`output_dense` has activation {activation}."
        )
    kernels = np.stack([np.asarray(heads[t][0], np.float32) for t in table.tasks])
    biases = np.stack([np.asarray(heads[t][1], np.float32) for t in table.tasks])
    expected = tuple(model.output_dense.kernel.shape)
    if kernels.shape[1:] != expected or biases.shape[1:] != expected[-1:]:
        raise ValueError(
            f"Every head must be kernel {list(expected)} and bias "
            f"[{expected[-1]}]. Received stacked shapes {list(kernels.shape)} "
            f"and {list(biases.shape)}."
        )
    handle = fit_prompt_tuning(backbone, None, table)
    return model, _hub_heads_runner(handle, backbone, kernels, biases), table


def _vocabulary(layer):
    if isinstance(layer, _EMBEDDING_LAYERS):
        return np.asarray(layer.vocabulary)
    raise ValueError(
        f"Pass `vocabulary=` (the base's [V, H] embedding matrix) to export "
        f"prompts for {type(layer).__name__} layer {layer.name}."
    )


def _model_inputs(model, token_ids, padding_mask):
    """Feed the model's named inputs; unknown extras (segment ids) get 0."""
    spec = model.input
    if not isinstance(spec, dict):
        # Positional inputs: token ids, then (if taken) the padding mask.
        if not isinstance(spec, (list, tuple)):
            return token_ids
        return [token_ids, tf.cast(padding_mask, spec[1].dtype)][: len(spec)]
    feeds = {}
    for name, tensor in spec.items():
        dtype = tf.as_dtype(tensor.dtype)
        if name == "token_ids":
            feeds[name] = tf.cast(token_ids, dtype)
        elif name == "padding_mask":
            feeds[name] = tf.cast(padding_mask, dtype)
        else:
            feeds[name] = tf.zeros_like(token_ids, dtype)
    return feeds


class _ServingStages:
    """The named stages, closed over one runner, table and encoder.

    `runner(token_ids, padding_mask, prompt_ids, prompt_mask, task_index)`
    is the model stage; `prompt_ids`/`prompt_mask` are `[B, Pmax]` (`None`
    without a prompt table) and `task_index` is `[B]`.
    """

    def __init__(self, runner, table, encoder, labels, activation):
        self.runner = runner
        self.table = table
        self.encoder = encoder
        self.labels = tf.constant(labels)
        self.activation = activation

    def encode(self, text):
        return self.encoder(text)

    def select_prompts(self, task_index):
        if self.table is None:
            return None, None
        return self.table.prompt_ids(task_index)

    def postprocess(self, outputs):
        outputs = tf.cast(outputs, tf.float32)
        probabilities = tf.nn.softmax(outputs) if self.activation else outputs
        label_ids = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {
            "probabilities": probabilities,
            "label_ids": label_ids,
            "label_names": tf.gather(self.labels, label_ids),
        }

    def predict(self, token_ids, padding_mask, task_index):
        prompt_ids, prompt_mask = self.select_prompts(task_index)
        padding_mask = tf.cast(padding_mask, tf.bool)
        outputs = self.runner(
            token_ids, padding_mask, prompt_ids, prompt_mask, task_index
        )
        return self.postprocess(outputs)


def _layer_runner(model, table, layer):
    """Runner for a model built with the core layers (or without prompts)."""
    embeds_ids = table is not None and isinstance(layer, _EMBEDDING_LAYERS)

    def run(token_ids, padding_mask, prompt_ids, prompt_mask, task_index):
        if embeds_ids:
            token_ids, padding_mask = insert_prompt_ids(
                token_ids, padding_mask, prompt_ids, prompt_mask, table.offset
            )
        return model(_model_inputs(model, token_ids, padding_mask), training=False)

    return run


def _hub_runner(handle, model):
    """Runner for a keras-hub model with prompt tuning enabled."""

    def run(token_ids, padding_mask, prompt_ids, prompt_mask, task_index):
        inputs = _model_inputs(model, token_ids, padding_mask)
        return handle.call(inputs, prompt_ids, prompt_mask, training=False)

    return run


def _hub_heads_runner(handle, backbone, kernels, biases):
    """Runner for a keras-hub backbone with one classifier head per task.

    The prompted backbone runs once for the mixed batch; each example's
    `pooled_output` then goes through its own task's dense head.
    """
    kernels = tf.constant(kernels, tf.float32)  # [K, H, C]
    biases = tf.constant(biases, tf.float32)  # [K, C]

    def run(token_ids, padding_mask, prompt_ids, prompt_mask, task_index):
        inputs = _model_inputs(backbone, token_ids, padding_mask)
        outputs = handle.call(inputs, prompt_ids, prompt_mask, training=False)
        pooled = tf.cast(outputs["pooled_output"], tf.float32)
        kernel = tf.gather(kernels, task_index)
        return tf.einsum("bh,bhc->bc", pooled, kernel) + tf.gather(biases, task_index)

    return run


def _endpoints(stages, text_length, multi_task):
    """`{name: (fn, input_signature)}` for `serving_default` and
    `predict_tokens`."""
    ids_spec = tf.TensorSpec([None, text_length], tf.int32, name="token_ids")
    mask_spec = tf.TensorSpec([None, text_length], tf.int32, name="padding_mask")
    text_spec = tf.TensorSpec([None], tf.string, name="text")
    table = stages.table

    def zeros(x):
        return tf.zeros(tf.shape(x)[:1], tf.int32)

    if multi_task:

        def serving_default(text, task):
            token_ids, padding_mask = stages.encode(text)
            return stages.predict(token_ids, padding_mask, table.task_index(task))

        def predict_tokens(token_ids, padding_mask, task_id):
            return stages.predict(token_ids, padding_mask, table.check_task_id(task_id))

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

    def serving_default(text):  # noqa: F811 - one pair per mode
        token_ids, padding_mask = stages.encode(text)
        return stages.predict(token_ids, padding_mask, zeros(text))

    def predict_tokens(token_ids, padding_mask):  # noqa: F811
        return stages.predict(token_ids, padding_mask, zeros(token_ids))

    return {
        "serving_default": (serving_default, [text_spec]),
        "predict_tokens": (predict_tokens, [ids_spec, mask_spec]),
    }


def _archive_class(model):
    if _is_keras2(model):
        from tf_keras.export import ExportArchive
    else:
        from keras.export import ExportArchive
    return ExportArchive


def _endpoint_function(archive, name):
    # Keras 3 keeps endpoints on an inner trackable; tf-keras on itself.
    holder = getattr(archive, "_tf_trackable", archive)
    return getattr(holder, name)


def warmup_inputs(stages, texts, table):
    """Warmup requests for both signatures, one per text.

    With several tasks in `table`, requests cycle through the tasks, so
    every task's rows are exercised. Shared by the classifier and the
    causal-LM exporters.
    """
    multi_task = table is not None and len(table.tasks) > 1
    text = tf.constant(list(texts))
    # In graph mode, as when serving (eager keras-hub tokenizers return lists).
    token_ids, padding_mask = tf.function(stages.encode)(text)
    tokens = {
        "token_ids": token_ids.numpy(),
        "padding_mask": tf.cast(padding_mask, tf.int32).numpy(),
    }
    default = {"text": text.numpy()}
    if multi_task:
        tasks = [table.tasks[i % len(table.tasks)] for i in range(len(texts))]
        default["task"] = np.array(tasks, dtype=object)
        tokens["task_id"] = np.array(
            [i % len(table.tasks) for i in range(len(texts))], np.int32
        )
    return {"serving_default": default, "predict_tokens": tokens}


def export_model(
    model,
    base_dir,
    version,
    *,
    tokenizer,
    sequence_length,
    labels=None,
    prompts=None,
    vocabulary=None,
    task="default",
    offset=None,
    activation="softmax",
    model_name=None,
    warmup_texts=("a warmup request", ""),
    start_id=None,
    end_id=None,
    pad_id=None,
    heads=None,
):
    """Export a classifier with its trained prompt(s) to `BASE/<version>`.

    Assumes `model` maps `{"token_ids": [B, L], "padding_mask": [B, L]}` (or
    the list `[token_ids, padding_mask]`; other named inputs such as
    `segment_ids` are fed zeros) to class scores `[B, C]`, and holds one
    `tf_softprompt` prompt layer (Keras 3 or Keras 2). A model with no prompt
    layer exports as a baseline.

    Args:
        model: the Keras 3 or tf-keras model.
        base_dir: the model's TF Serving base path.
        version: positive int; `BASE/<version>` must not exist.
        tokenizer: callable strings `[B]` -> ragged ids (e.g. a keras-hub
            tokenizer); it runs in-graph.
        sequence_length: int L, the model's total length (prompt included).
        labels: list of C class names (default `"0"`, `"1"`, ...).
        prompts: `None` to export the model's own prompt as task `task`, or
            prompt artifacts (list of paths, or `{task: path}`) trained on
            this base; several give a multi-task export.
        vocabulary: the base's `[V, H]` matrix, needed only for a
            `PromptPrepend` model exported from artifacts.
        task: the task name of the model's own prompt.
        offset: where the prompt is inserted; default: the artifacts'
            offset, else 1 if the text starts with a special token, else 0.
        activation: `"softmax"` if the model outputs logits, `None` if it
            already outputs probabilities.
        model_name: the name in warmup requests (default: the base dir name).
        warmup_texts: texts for the warmup requests.
        start_id, end_id, pad_id: special ids; see `TextEncoder`.
        heads: for a keras-hub `TextClassifier` exported from several runs,
            `{task: (kernel [H, C], bias [C])}`: each example is classified
            by its own task's head (the prompted backbone runs once).

    Returns:
        The path of the new version directory.

    Raises:
        FileExistsError: if the version exists.
        ValueError: if a prompt was trained on another base, or the shapes
            do not fit.
    """
    base_dir = os.fspath(base_dir)
    target = layout.version_dir(base_dir, version)
    layout.check_new_version(base_dir, version)
    specials = {"start_id": start_id, "end_id": end_id, "pad_id": pad_id}
    if _hub_model(model, prompts):
        serving_model, runner, table = _prepare_hub(model, prompts, task, offset, heads)
    else:
        layer = find_prompt_layer(model)
        table = _prompt_table(
            layer, prompts, vocabulary, task, offset, tokenizer, specials
        )
        serving_model = model if table is None else _table_model(model, layer, table)
        runner = _layer_runner(serving_model, table, layer)
    method = None if table is None else table.method
    pmax = 0 if table is None else table.max_length
    encoder = TextEncoder(tokenizer, sequence_length - pmax, **specials)
    labels = _labels(serving_model, labels, encoder)
    multi_task = table is not None and len(table.tasks) > 1
    stages = _ServingStages(runner, table, encoder, labels, activation)
    endpoints = _endpoints(stages, encoder.length, multi_task)

    # Encoding the warmup texts eagerly also builds a keras-hub tokenizer,
    # which the archive must track (it may own lookup tables).
    warmup = warmup_inputs(stages, warmup_texts, table)
    archive = _archive_class(model)()
    archive.track(serving_model)
    if getattr(tokenizer, "built", False):
        archive.track(tokenizer)
    for name, (fn, signature) in endpoints.items():
        archive.add_endpoint(name, fn, input_signature=signature)
    options = tf.saved_model.SaveOptions(
        function_aliases={TPU_ALIAS: _endpoint_function(archive, "predict_tokens")}
    )
    info = _export_info(table, labels, sequence_length, encoder, multi_task, method)
    with layout.publish_version(base_dir, version) as tmp:
        _write_archive(archive, tmp, options)
        layout.write_warmup_requests(
            tmp, model_name or os.path.basename(os.path.abspath(base_dir)), warmup
        )
        with open(os.path.join(tmp, INFO_FILE), "w") as f:
            json.dump(info, f, indent=2)
    return target


def _write_archive(archive, path, options):
    if "verbose" in inspect.signature(archive.write_out).parameters:
        archive.write_out(path, options=options, verbose=False)
    else:  # tf-keras's write_out prints the endpoints unconditionally.
        with contextlib.redirect_stdout(io.StringIO()):
            archive.write_out(path, options=options)


def _labels(model, labels, encoder):
    if labels is not None:
        return [str(label) for label in labels]
    num_classes = model.output.shape[-1]
    return [str(i) for i in range(int(num_classes))]


def _export_info(table, labels, sequence_length, encoder, multi_task, method):
    """What a client needs to know, in `assets.extra/tf_softprompt.json`."""
    return {
        "format": "tf-softprompt-export/1",
        "labels": labels,
        "tasks": list(table.tasks) if table else [],
        "prompt_lengths": list(table.lengths) if table else [],
        "max_prompt_length": table.max_length if table else 0,
        "prompt_offset": table.offset if table else 0,
        "prompt_method": method,
        "vocab_fingerprint": table.vocab_fingerprint if table else None,
        "sequence_length": int(sequence_length),
        "text_positions": encoder.length,
        "max_text_tokens": encoder.max_text_tokens,
        "special_ids": {
            "start": encoder.start_id,
            "end": encoder.end_id,
            "pad": encoder.pad_id,
        },
        "multi_task": multi_task,
        "signatures": ["serving_default", "predict_tokens"],
        "function_aliases": {TPU_ALIAS: "predict_tokens"},
        "truncation": (
            "text keeps its first max_text_tokens tokens; the prompt is never truncated"
        ),
    }
