"""Export a prompt-tuned classifier as a TF Serving SavedModel.

The trained prompts are baked into the SavedModel as a constant-shaped
table, so TF Serving needs nothing from this package at serving time.

Stages, each a named function (`archive` builds the signatures):

1. `encode` (CPU, string ops): text to fixed-length ids (`text.TextEncoder`),
   truncating the text, never the prompt.
2. `select_prompts`: task ids to each row's prompt ids and mask
   (`prompt_table.MultiTaskPromptTable`); task names are looked up first
   (`ensembles.Routes`: a task, or an ensemble of tasks).
3. `run`, the model stage: an ensemble's examples become one row per
   member (`Routes.expand`); each task's text is cut to its own length
   (`TextEncoder.truncate`, when tasks were trained with different ones);
   the runner (`core_models.Runner` for models built with the core layers,
   `hub_models.Runner` for keras-hub models, every injection method) gives
   class scores; then probabilities (an ensemble's: the mean of its
   members', `Routes.combine`) and label ids. Int/float only with a static
   sequence length: the part a TPU converter takes.
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

Ensembles (`ensembles={name: [task, ...]}`): a served name that runs its
member tasks' prompts (and heads) as rows of the same pass and returns the
mean of their probabilities (`ensembles` explains the rule). Members stay
servable on their own; members of one ensemble share their label names.
With ensembles, `predict_tokens` gathers a data-dependent number of rows
(one per member), so its shapes are no longer static inside: export
ensembles separately from what the TPU converter gets.

Example:
```python
path = export_model(
    model, "models/demo", 1, tokenizer=tokenizer, sequence_length=32,
    labels=["negative", "positive"],
    prompts={"sst2": "sst2.prompt.npz", "imdb": "imdb.prompt.npz"},
)
```
"""

import dataclasses
import os

import tensorflow as tf

from tf_softprompt import hub
from tf_softprompt.export import archive, core_models, hub_models, layout
from tf_softprompt.export import ensembles as ensembles_lib
from tf_softprompt.export import labels as labels_lib
from tf_softprompt.export.text import TextEncoder


class ClassifierStages:
    """The named stages of a classifier export.

    Args:
        runner: `(token_ids, padding_mask, prompt_ids, prompt_mask,
            task_index) -> [B, C]` scores.
        table: the `MultiTaskPromptTable`, or `None` (a baseline).
        encoder: the `TextEncoder`.
        labels: `[E, C]` nested list of label names per served name (one
            row when all share them), with `""` for padded classes.
        classes: list of the K table tasks' class counts (one entry when
            shared).
        activation: `"softmax"` if the runner gives logits, `None` if it
            gives probabilities.
        routes: the `ensembles.Routes` (served names to table tasks), or
            `None` (no ensembles: served index = task index).
        text_limits: `None`, or the K tasks' text positions (each at most
            `encoder.length`): rows are cut to their task's.
        served_classes: the class count of each served name (tasks, then
            ensembles; one entry when all share it), served as
            `num_classes`.
    """

    def __init__(
        self,
        runner,
        table,
        encoder,
        labels,
        classes,
        activation,
        routes=None,
        text_limits=None,
        served_classes=None,
    ):
        self.runner = runner
        self.table = table
        self.encoder = encoder
        self.labels = tf.constant(labels)
        self.class_mask = tf.constant(
            [[c < n for c in range(len(labels[0]))] for n in classes]
        )
        self.activation = activation
        self.routes = routes if routes is not None and routes.has_ensembles else None
        self.text_limits = None
        if text_limits is not None:
            self.text_limits = tf.constant(text_limits, tf.int32)
        served_classes = served_classes or [len(labels[0])]
        self.served_classes = tf.constant(served_classes, tf.int32)

    @property
    def tokenizer(self):
        return self.encoder.tokenizer

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

    def _probabilities(self, token_ids, padding_mask, task_index):
        if self.text_limits is not None:
            token_ids, padding_mask = self.encoder.truncate(
                token_ids, padding_mask, tf.gather(self.text_limits, task_index)
            )
        prompt_ids, prompt_mask = self.select_prompts(task_index)
        scores = self.runner(
            token_ids, padding_mask, prompt_ids, prompt_mask, task_index
        )
        scores = tf.cast(scores, tf.float32)
        valid = self._per_task(self.class_mask, task_index)
        if self.activation:
            scores = tf.where(valid, scores, tf.constant(-1e30, tf.float32))
            return tf.nn.softmax(scores)
        return tf.where(valid, scores, tf.zeros_like(scores))

    def run(self, token_ids, padding_mask, task_index):
        if self.routes is None:
            probabilities = self._probabilities(token_ids, padding_mask, task_index)
        else:
            example, member = self.routes.expand(task_index)
            probabilities = self.routes.combine(
                self._probabilities(
                    tf.gather(token_ids, example),
                    tf.gather(padding_mask, example),
                    member,
                ),
                example,
                task_index,
            )
        label_ids = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        num_classes = tf.gather(
            self.served_classes,
            task_index if self.served_classes.shape[0] > 1 else task_index * 0,
        )
        return {
            "probabilities": probabilities,
            "label_ids": label_ids,
            "num_classes": num_classes,
        }

    def present(self, outputs, task_index):
        names = self._per_task(self.labels, task_index)
        label_names = tf.gather(names, outputs["label_ids"], batch_dims=1)
        return {**outputs, "label_names": label_names}


@dataclasses.dataclass
class _ModelStage:
    """What the classifier's model stage needs from the model kind."""

    tracked: list
    runner: object
    table: object
    keras2: bool
    head_classes: list = None


def _model_stage(model, prompts, vocabulary, task, offset, tokenizer, specials, heads):
    """The runner, table and tracked objects of a keras-hub model or a model
    built with the core layers."""
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
        return _ModelStage([model], runner, table, False, classes)
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
    return _ModelStage([serving_model], runner, table, core_models.is_keras2(model))


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
    ensembles=None,
    text_lengths=None,
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
            `{task: names}` (each task its own labels; with `heads`, one name
            per class of the task's head).
        prompts: `None` to export the model's own prompt as task `task`, or
            prompt artifacts (list of paths, or `{task: path}`) trained on
            this base; several give a multi-task export.
        vocabulary: the base's `[V, H]` matrix, needed only for a core-layer
            `PromptPrepend` model exported from artifacts.
        task: the task name of the model's own prompt.
        offset: where forms 1 and 2 insert the prompt; default: the
            artifacts' offset, else a `PromptPrepend`'s own, else 1 if the
            text starts with a special token, else 0.
        activation: `"softmax"` if the model outputs logits, `None` if it
            already outputs probabilities.
        model_name: the name in warmup requests (default: the base dir name).
        warmup_texts: texts for the warmup requests.
        start_id, end_id, pad_id: special ids; see `TextEncoder`.
        heads: for a keras-hub `TextClassifier` exported from several runs,
            `{task: (kernel [H, C_k], bias [C_k])}`: each example is
            classified by its own task's head (the prompted backbone runs
            once).
        ensembles: `{name: [task, ...]}`: served names that run several of
            the exported tasks (prompts trained for one task, e.g. with
            different seeds) as rows of one pass and return the mean of
            their probabilities; the members stay servable on their own.
        text_lengths: `{task: T_k}`: a task's own text positions (specials
            included, at most `sequence_length - Pmax` for forms 1 and 2, or
            `sequence_length`), for tasks trained on shorter texts: its text
            is cut as in training. Default: every task uses all positions.

    Returns:
        The path of the new version directory.

    Raises:
        FileExistsError: if the version exists.
        ValueError: if a prompt was trained on another base, the shapes do
            not fit, the label names do not match the classes, or an
            ensemble's members differ in their labels.

    Example:
    ```python
    export_model(
        classifier, "models/sst", 1, tokenizer=tokenizer, sequence_length=64,
        prompts={f"sst/{i}": f"seed{i}/prompt.npz" for i in range(3)},
        ensembles={"sst": ["sst/0", "sst/1", "sst/2"]},
    )
    ```
    """
    base_dir = os.fspath(base_dir)
    layout.check_new_version(base_dir, version)
    specials = {"start_id": start_id, "end_id": end_id, "pad_id": pad_id}
    stage = _model_stage(
        model, prompts, vocabulary, task, offset, tokenizer, specials, heads
    )
    table = stage.table
    if ensembles and table is None:
        raise ValueError(
            "`ensembles` combine exported prompts; this model has none. Pass `prompts`."
        )
    routes = None if table is None else ensembles_lib.Routes.build(table, ensembles)
    slots = table.sequence_slots if table is not None else 0
    encoder = TextEncoder(tokenizer, sequence_length - slots, **specials)
    tasks = list(table.tasks) if table is not None else [None]
    if heads is None:
        classes = {t: int(stage.tracked[0].output.shape[-1]) for t in tasks}
    else:
        classes = dict(zip(tasks, stage.head_classes))
    named = labels_lib.task_labels(labels, tasks, classes)
    names, class_counts = labels_lib.served_labels(named, table, routes)
    limits = labels_lib.text_limits(text_lengths, table, encoder)
    served_classes = list(
        labels_lib.classes_per_served_name(named, routes, tasks).values()
    )
    if len(set(served_classes)) == 1:
        served_classes = served_classes[:1]
    stages = ClassifierStages(
        stage.runner,
        table,
        encoder,
        names,
        class_counts,
        activation,
        routes,
        limits,
        served_classes,
    )
    info = {
        "kind": "classifier",
        "labels": names[0][: class_counts[0]] if len(names) == 1 else None,
        "labels_per_task": labels_lib.labels_per_served_name(named, routes),
        **archive.table_info(table),
        "ensembles": dict(routes.ensembles) if routes is not None else {},
        "served_tasks": list(routes.tasks) if routes is not None else [],
        "sequence_length": int(sequence_length),
        "text_positions": encoder.length,
        "text_positions_per_task": (
            dict(zip(table.tasks, limits)) if limits is not None else None
        ),
        "max_text_tokens": encoder.max_text_tokens,
        "special_ids": {
            "start": encoder.start_id,
            "end": encoder.end_id,
            "pad": encoder.pad_id,
        },
        "outputs": {
            "serving_default": [
                "probabilities",
                "label_ids",
                "label_names",
                "num_classes",
            ],
            "predict_tokens": ["probabilities", "label_ids", "num_classes"],
        },
        "num_classes_per_task": labels_lib.classes_per_served_name(
            named, routes, tasks
        ),
        "padded_classes": (
            "probabilities has one column per class of the task with the most "
            "classes; a row's num_classes says how many are its task's, and "
            "the rest are 0"
        ),
        "truncation": (
            "text keeps its first max_text_tokens tokens (a task with its own "
            "text_positions_per_task T_k: its first T_k - specials); the prompt "
            "is never truncated"
        ),
    }
    if routes is not None and routes.has_ensembles:
        info["ensemble_combination"] = ensembles_lib.COMBINATION
    servable = archive.Servable(
        stages=stages,
        text_length=encoder.length,
        table=routes if routes is not None else table,
        tracked=stage.tracked,
        info=info,
        keras2=stage.keras2,
        warmup_texts=tuple(warmup_texts),
    )
    return archive.write(servable, base_dir, version, model_name=model_name)


__all__ = ["ClassifierStages", "export_model"]
