"""Export a prompt-tuned classifier as a TF Serving SavedModel.

The trained prompts are baked into the SavedModel as a constant-shaped
table, so TF Serving needs nothing from this package at serving time.

Stages, each a named function (`archive` builds the signatures):

1. `encode` (CPU, string ops): text to fixed-length ids (`text.TextEncoder`),
   truncating the text, never the prompt.
2. `select_prompts`: task ids to each example's prompt ids and mask
   (`prompt_table.MultiTaskPromptTable`); task names are looked up first.
3. `run`, the model stage: the runner (`core_models.Runner` for models
   built with the core layers, `hub_models.Runner` for keras-hub models,
   every injection method) gives class scores; then probabilities and
   label ids. Int/float only with a static sequence length: the part a
   TPU converter takes.
4. `present`: adds the label names (strings) for `serving_default`.

Signatures (all batch-major, so TF Serving's batching applies):

- `serving_default(text: string[B] [, task: string[B]])` -> `probabilities`
  float32 `[B, C]`, `label_ids` int32 `[B]`, `label_names` string `[B]`.
  The `task` input exists when several prompts are exported.
- `predict_tokens(token_ids: int32[B, T], padding_mask: int32[B, T]
  [, task_id: int32[B]])` -> `probabilities` and `label_ids` only: no string
  op and no string output; also saved under the function alias `tpu_func`
  for the TPU converter. `T` is `sequence_length - Pmax` text positions
  for prompts that take positions (forms 1 and 2), `sequence_length` for
  a prefix, as `TextEncoder` produces them.

Per-task heads and labels: a keras-hub `TextClassifier` exported from
several runs may give each task its own head (`heads`) and label names
(`labels` as `{task: names}`); tasks with fewer classes have their padded
classes masked (probability 0), and `C` is the largest class count.

Example:
```python
path = export_model(
    model, "models/demo", 1, tokenizer=tokenizer, sequence_length=32,
    labels=["negative", "positive"],
    prompts={"sst2": "sst2.prompt.npz", "imdb": "imdb.prompt.npz"},
)
```
"""

import os

import tensorflow as tf

from tf_softprompt import hub
from tf_softprompt.export import archive, core_models, hub_models, layout
from tf_softprompt.export.text import TextEncoder


class ClassifierStages:
    """The named stages of a classifier export.

    Args:
        runner: `(token_ids, padding_mask, prompt_ids, prompt_mask,
            task_index) -> [B, C]` scores.
        table: the `MultiTaskPromptTable`, or `None` (a baseline).
        encoder: the `TextEncoder`.
        labels: `[K, C]` nested list of label names per task (one row when
            all tasks share them), with `""` for padded classes.
        classes: list of K class counts (one entry when shared).
        activation: `"softmax"` if the runner gives logits, `None` if it
            gives probabilities.
    """

    def __init__(self, runner, table, encoder, labels, classes, activation):
        self.runner = runner
        self.table = table
        self.encoder = encoder
        self.labels = tf.constant(labels)
        self.class_mask = tf.constant(
            [[c < n for c in range(len(labels[0]))] for n in classes]
        )
        self.activation = activation

    def encode(self, text):
        return self.encoder(text)

    def select_prompts(self, task_index):
        if self.table is None:
            return None, None
        return self.table.prompt_ids(task_index)

    def _per_task(self, table, task_index):
        if table.shape[0] == 1:
            return tf.gather(table, tf.zeros_like(task_index))
        return tf.gather(table, task_index)

    def run(self, token_ids, padding_mask, task_index):
        prompt_ids, prompt_mask = self.select_prompts(task_index)
        scores = self.runner(
            token_ids, padding_mask, prompt_ids, prompt_mask, task_index
        )
        scores = tf.cast(scores, tf.float32)
        valid = self._per_task(self.class_mask, task_index)
        if self.activation:
            scores = tf.where(valid, scores, tf.constant(-1e30, tf.float32))
            probabilities = tf.nn.softmax(scores)
        else:
            probabilities = tf.where(valid, scores, tf.zeros_like(scores))
        label_ids = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {"probabilities": probabilities, "label_ids": label_ids}

    def present(self, outputs, task_index):
        names = self._per_task(self.labels, task_index)
        label_names = tf.gather(names, outputs["label_ids"], batch_dims=1)
        return {**outputs, "label_names": label_names}


def _label_table(labels, table, num_classes):
    """`(names [K or 1][Cmax], classes)` from a list or `{task: list}`."""
    if labels is None:
        labels = [str(i) for i in range(num_classes)]
    if isinstance(labels, dict):
        tasks = list(table.tasks) if table is not None else []
        if sorted(labels) != sorted(tasks):
            raise ValueError(
                "Per-task `labels` must name every exported task. Received labels "
                f"for {sorted(labels)}, tasks {sorted(tasks)}."
            )
        rows = [[str(name) for name in labels[t]] for t in tasks]
        if all(row == rows[0] for row in rows):
            rows = rows[:1]  # shared after all: one row serves every task
    else:
        rows = [[str(name) for name in labels]]
    classes = [len(row) for row in rows]
    width = max(classes)
    return [row + [""] * (width - len(row)) for row in rows], classes


def _labels_per_task(table, names, classes):
    if not archive.is_multi_task(table):
        return None
    if len(names) == 1:
        return {t: names[0][: classes[0]] for t in table.tasks}
    return {t: row[:n] for t, row, n in zip(table.tasks, names, classes)}


def _prepare(model, prompts, vocabulary, task, offset, tokenizer, specials, heads):
    """`(tracked, runner, table, keras2, head_classes)` for a keras-hub or
    core-layer model; `head_classes` lists each task head's class count."""
    if hub.is_hub_model(model) and (
        hub.get_prompt_tuning(model) is not None or prompts is not None
    ):
        handle, table = hub_models.prompt_table(model, prompts, task, offset)
        stacked, classes = None, None
        if heads is not None:
            if handle is not None:
                raise ValueError(
                    "`heads` needs a keras-hub TextClassifier without prompt "
                    "tuning enabled (the exporter enables it on its backbone)."
                )
            kernels, biases, classes = hub_models.stacked_heads(model, table, heads)
            handle = hub_models.fit(model.backbone, None, table)
            stacked = (kernels, biases)
        elif prompts is not None:
            handle = hub_models.fit(model, handle, table)
        runner = hub_models.Runner(model, handle, stacked)
        return [model], runner, table, False, classes
    if heads is not None:
        raise ValueError(
            "`heads` is for keras-hub TextClassifiers exported from several "
            f"runs. Received a {type(model).__name__}."
        )
    layer = core_models.find_prompt_layer(model)
    start = TextEncoder.resolve_specials(tokenizer, **specials)[0]
    table = core_models.prompt_table(
        layer, prompts, vocabulary, task, offset, 0 if start is None else 1
    )
    serving_model = model
    if table is not None:
        serving_model = core_models.table_model(model, layer, table)
    runner = core_models.Runner(serving_model, table, layer)
    return [serving_model], runner, table, core_models.is_keras2(model), None


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
    `segment_ids` are fed zeros) to class scores `[B, C]`, and either holds
    one `tf_softprompt` prompt layer (Keras 3 or Keras 2) or is a keras-hub
    model with prompt tuning (`tf_softprompt.hub`, any method). A model with
    no prompt exports as a baseline.

    Args:
        model: the Keras 3 or tf-keras model, or keras-hub Task/Backbone.
        base_dir: the model's TF Serving base path.
        version: positive int; `BASE/<version>` must not exist.
        tokenizer: callable strings `[B]` -> ragged ids (e.g. a keras-hub
            tokenizer); it runs in-graph.
        sequence_length: int L, the model's total length (prompt slots
            included for forms 1 and 2).
        labels: list of C class names (default `"0"`, `"1"`, ...), or
            `{task: names}` with `heads` (each task its own labels).
        prompts: `None` to export the model's own prompt as task `task`, or
            prompt artifacts (list of paths, or `{task: path}`) trained on
            this base; several give a multi-task export.
        vocabulary: the base's `[V, H]` matrix, needed only for a core-layer
            `PromptPrepend` model exported from artifacts.
        task: the task name of the model's own prompt.
        offset: where forms 1 and 2 insert the prompt; default: the
            artifacts' offset, else 1 if the text starts with a special
            token, else 0.
        activation: `"softmax"` if the model outputs logits, `None` if it
            already outputs probabilities.
        model_name: the name in warmup requests (default: the base dir name).
        warmup_texts: texts for the warmup requests.
        start_id, end_id, pad_id: special ids; see `TextEncoder`.
        heads: for a keras-hub `TextClassifier` exported from several runs,
            `{task: (kernel [H, C_k], bias [C_k])}`: each example is
            classified by its own task's head (the prompted backbone runs
            once).

    Returns:
        The path of the new version directory.

    Raises:
        FileExistsError: if the version exists.
        ValueError: if a prompt was trained on another base, or the shapes
            do not fit.
    """
    base_dir = os.fspath(base_dir)
    layout.check_new_version(base_dir, version)
    specials = {"start_id": start_id, "end_id": end_id, "pad_id": pad_id}
    tracked, runner, table, keras2, head_classes = _prepare(
        model, prompts, vocabulary, task, offset, tokenizer, specials, heads
    )
    reserved = table.max_length if table is not None and table.takes_positions else 0
    encoder = TextEncoder(tokenizer, sequence_length - reserved, **specials)
    if heads is None:
        num_classes = int(tracked[0].output.shape[-1])
    else:
        num_classes = max(head_classes)
    names, classes = _label_table(labels, table, num_classes)
    if heads is not None and isinstance(labels, dict):
        given = dict(
            zip(
                table.tasks,
                classes * len(table.tasks) if len(classes) == 1 else classes,
            )
        )
        wanted = dict(zip(table.tasks, head_classes))
        if given != wanted:
            raise ValueError(
                f"Each task needs one label name per class of its head. Received "
                f"label counts {given} for head sizes {wanted}."
            )
    elif heads is not None and len(set(head_classes)) > 1:
        raise ValueError(
            "The heads have different class counts "
            f"{dict(zip(table.tasks, head_classes))}; pass `labels` as "
            "`{task: names}`, one list per task."
        )
    stages = ClassifierStages(runner, table, encoder, names, classes, activation)
    signatures = archive.endpoints(stages, encoder.length, table)
    # Encoding the warmup texts eagerly also builds a keras-hub tokenizer,
    # which the archive must track (it may own lookup tables).
    warmup = archive.warmup_inputs(stages.encode, warmup_texts, table)
    if getattr(tokenizer, "built", False):
        tracked.append(tokenizer)
    info = {
        "kind": "classifier",
        "labels": names[0][: classes[0]] if len(names) == 1 else None,
        "labels_per_task": _labels_per_task(table, names, classes),
        **archive.table_info(table),
        "sequence_length": int(sequence_length),
        "text_positions": encoder.length,
        "max_text_tokens": encoder.max_text_tokens,
        "special_ids": {
            "start": encoder.start_id,
            "end": encoder.end_id,
            "pad": encoder.pad_id,
        },
        "outputs": {
            "serving_default": ["probabilities", "label_ids", "label_names"],
            "predict_tokens": ["probabilities", "label_ids"],
        },
        "truncation": (
            "text keeps its first max_text_tokens tokens; the prompt is never truncated"
        ),
    }
    return archive.write(
        tracked,
        base_dir,
        version,
        signatures,
        warmup,
        info,
        keras2=keras2,
        model_name=model_name,
    )


__all__ = ["ClassifierStages", "export_model"]
