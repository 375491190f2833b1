"""The keras-hub side of the exporter, through `tf_softprompt.hub` only.

A keras-hub Backbone or Task either has prompt tuning enabled (its own
prompt is the one task), or gets it enabled here to fit prompt artifacts
(several tasks in one padded table). The model stage then runs
`handle.call` with each example's prompt ids, for every method.

Example:
```python
handle, table = prompt_table(classifier, prompts={"a": "a.prompt.npz"})
handle = fit(classifier, handle, table)
```
"""

import numpy as np
import tensorflow as tf

from tf_softprompt import hub, methods
from tf_softprompt.export.core_models import model_inputs
from tf_softprompt.export.prompt_table import MultiTaskPromptTable


def prompt_table(model, prompts=None, task="default", offset=None):
    """`(handle, table)` for a keras-hub model.

    With `prompts=None` the model's own prompt (prompt tuning must be
    enabled) is the one task `task`. With artifacts, the table is built from
    them and checked against the base's fingerprint; the handle is `None`
    when prompt tuning is not enabled yet.
    """
    handle = hub.get_prompt_tuning(model)
    if prompts is None:
        if handle is None:
            raise ValueError(
                f"{type(model).__name__} has no prompt tuning enabled and no "
                "`prompts` were given. Pass prompt artifacts or call "
                "`tf_softprompt.hub.enable_prompt_tuning` first."
            )
        table = MultiTaskPromptTable.from_arrays(
            {task: handle.prompt_values()},
            offset=handle.offset,
            method=handle.method.name,
            vocab_size=handle.vocab_size,
            fingerprint=handle.fingerprint,
        )
        return handle, table
    method = _artifacts_method(prompts)
    identity = hub.base_identity(model, method)
    table = MultiTaskPromptTable.from_artifacts(
        prompts,
        method=method.name,
        dims_metadata=identity["dims_metadata"],
        fingerprint=identity["fingerprint"],
        vocab_size=identity["vocab_size"],
    )
    if offset is not None and table.takes_positions:
        table = MultiTaskPromptTable.from_arrays(
            {t: table.task_prompt(k) for k, t in enumerate(table.tasks)},
            offset=int(offset),
            method=table.method,
            vocab_size=table.vocab_size,
            fingerprint=table.fingerprint,
        )
    return handle, table


def _artifacts_method(prompts):
    from tf_softprompt import artifact

    paths = prompts.values() if isinstance(prompts, dict) else prompts
    names = {artifact.read_metadata(path)["method"] for path in paths}
    if len(names) != 1:
        raise ValueError(
            "All prompts in one export must share one method. Received: "
            f"{sorted(names)}. Export each method separately."
        )
    return methods.get(names.pop())


def fit(model, handle, table):
    """Enable (if needed) and fill `model`'s prompt tuning with `table`.

    Modifies `model`: a model without prompt tuning gets it with
    `K * Pmax` prompt tokens of the table's method and offset.
    """
    if handle is None:
        kwargs = {"offset": table.offset} if table.takes_positions else {}
        handle = hub.enable_prompt_tuning(
            model, table.num_rows, method=table.method, **kwargs
        )
    shape = (handle.num_prompt_tokens, handle.offset, handle.method.name)
    offset = table.offset if table.takes_positions else 0
    if shape != (table.num_rows, offset, table.method):
        raise ValueError(
            "The model's prompt tuning does not fit the prompts: it has "
            f"(num_prompt_tokens, offset, method)={shape}, the table needs "
            f"{(table.num_rows, table.offset, table.method)} ({len(table.tasks)} "
            f"tasks x {table.max_length} tokens). Export a model without prompt "
            "tuning enabled and the exporter enables it to fit."
        )
    handle.assign_prompt(table.table)
    return handle


class Runner:
    """The model stage of a keras-hub classifier: logits `[B, C]`.

    Args:
        model: the Task (or Backbone) with prompt tuning enabled.
        handle: its `PromptTuning` handle.
        heads: optional `(kernels [K, H, C], biases [K, C])`: each example
            is classified by its task's head from the backbone's pooled
            output (the prompted backbone runs once for the mixed batch).
    """

    def __init__(self, model, handle, heads=None):
        self.model = model
        self.handle = handle
        self.heads = None
        if heads is not None:
            kernels, biases = heads
            self.heads = (
                tf.constant(kernels, tf.float32),
                tf.constant(biases, tf.float32),
            )

    def __call__(self, token_ids, padding_mask, prompt_ids, prompt_mask, task_index):
        if self.heads is None:
            inputs = model_inputs(self.model, token_ids, padding_mask)
            return self.handle.call(inputs, prompt_ids, prompt_mask, training=False)
        backbone = self.handle.backbone
        inputs = model_inputs(backbone, token_ids, padding_mask)
        outputs = self.handle.call(inputs, prompt_ids, prompt_mask, training=False)
        pooling = getattr(self.model, "pooling", None)
        if pooling is None:
            pooled = outputs["pooled_output"]
        else:  # a PooledTextClassifier: the representation it was trained on
            pooled = pooling(outputs, padding_mask)
        pooled = tf.cast(pooled, tf.float32)
        kernels, biases = self.heads
        kernel = tf.gather(kernels, task_index)
        return tf.einsum("bh,bhc->bc", pooled, kernel) + tf.gather(biases, task_index)


def stacked_heads(model, table, heads):
    """`(kernels [K, H, Cmax], biases [K, Cmax], classes [K])` from
    `{task: (kernel [H, C_k], bias [C_k])}`; shorter heads are zero-padded
    (their padded classes are masked by the exporter)."""
    if set(heads) != set(table.tasks):
        raise ValueError(
            f"`heads` must name the same tasks as the prompts. Received heads "
            f"for {sorted(heads)}, prompts for {sorted(table.tasks)}."
        )
    kernel, _ = hub.classifier_head(model)
    hidden = int(kernel.shape[0])
    arrays = [
        (np.asarray(heads[t][0], np.float32), np.asarray(heads[t][1], np.float32))
        for t in table.tasks
    ]
    for task, (k, b) in zip(table.tasks, arrays):
        if k.ndim != 2 or k.shape[0] != hidden or b.shape != (k.shape[1],):
            raise ValueError(
                f"The head of task {task!r} must be kernel [{hidden}, C] and bias "
                f"[C]. Received shapes {list(k.shape)} and {list(b.shape)}."
            )
    classes = [k.shape[1] for k, _ in arrays]
    cmax = max(classes)
    kernels = np.zeros((len(arrays), hidden, cmax), np.float32)
    biases = np.zeros((len(arrays), cmax), np.float32)
    for i, (k, b) in enumerate(arrays):
        kernels[i, :, : k.shape[1]], biases[i, : b.shape[0]] = k, b
    return kernels, biases, classes
