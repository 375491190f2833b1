"""The core-layer side of the exporter: Keras 3 and tf-keras models built with
`tf_softprompt`'s layers (`PromptEmbedding`, `PromptPrepend`).

The model's prompt layer is replaced, in a clone that shares every other
layer and weight, by one holding the export's prompt table; the model
stage then inserts each example's prompt ids (`tf_softprompt.packing`) and
runs the clone. A model without a prompt layer exports as a baseline.

Example:
```python
layer = find_prompt_layer(model)
table = prompt_table(layer, prompts=None, task="sst2", offset=1)
runner = Runner(table_model(model, layer, table), table, layer)
```
"""

import keras
import numpy as np
import tensorflow as tf

from tf_softprompt import initializers, keras2, layers, packing
from tf_softprompt.export.prompt_table import MultiTaskPromptTable

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


def is_keras2(model):
    import tf_keras

    return isinstance(model, tf_keras.Model)


def _clone_with(model, old, new):
    if not any(top is old for top in model.layers):
        raise ValueError(
            f"The prompt layer {old.name} is nested inside a sub-model of "
            f"{model.name}; the exporter replaces top-level prompt layers only. "
            "Build the prompt layer into the outer functional model."
        )
    if is_keras2(model):
        import tf_keras

        clone = tf_keras.models.clone_model
    else:
        clone = keras.models.clone_model
    return clone(model, clone_function=lambda layer: new if layer is old else layer)


def table_model(model, layer, table):
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


def prompt_table(layer, prompts, vocabulary, task, offset, default_offset):
    """The table to serve: the layer's own prompt, or the artifacts'.

    Args:
        layer: the model's prompt layer, or `None` (a baseline).
        prompts: `None`, or artifacts (list of paths or `{task: path}`).
        vocabulary: the base's `[V, H]` matrix; only needed for a
            `PromptPrepend` model exported from artifacts.
        task: the task name of the layer's own prompt.
        offset: the prompt position, or `None` for the artifacts' (own
            prompt: `default_offset`).
        default_offset: int, where an own prompt goes when `offset` is None.
    """
    if layer is None:
        if prompts is not None:
            raise ValueError(
                "The model has no tf_softprompt prompt layer, so it cannot serve "
                f"prompts. Received: prompts={prompts!r}. Build the model with "
                "`PromptEmbedding`, or export without `prompts`."
            )
        return None
    if prompts is None:
        offset = default_offset if offset is None else offset
        vocab = vocabulary
        if vocab is None and isinstance(layer, _EMBEDDING_LAYERS):
            vocab = np.asarray(layer.vocabulary)
        return MultiTaskPromptTable.from_arrays(
            {task: np.asarray(layer.prompt)}, vocab, offset=offset, method=layer.method
        )
    vocab = vocabulary if vocabulary is not None else _vocabulary(layer)
    table = MultiTaskPromptTable.from_artifacts(prompts, vocab, method=layer.method)
    if offset is None:
        return table
    return MultiTaskPromptTable.from_arrays(
        {t: table.task_prompt(k) for k, t in enumerate(table.tasks)},
        vocab,
        offset=int(offset),
        method=table.method,
    )


def _vocabulary(layer):
    if isinstance(layer, _EMBEDDING_LAYERS):
        return np.asarray(layer.vocabulary)
    raise ValueError(
        f"Pass `vocabulary=` (the base's [V, H] embedding matrix) to export "
        f"prompts for {type(layer).__name__} layer {layer.name}."
    )


def model_inputs(model, token_ids, padding_mask):
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


class Runner:
    """The model stage of a core-layer model: its outputs `[B, C]`.

    Args:
        model: the (cloned) model holding the table.
        table: the `MultiTaskPromptTable`, or `None`.
        layer: the original prompt layer (its kind decides whether ids are
            inserted).
    """

    def __init__(self, model, table, layer):
        self.model = model
        self.table = table
        self.inserts_ids = table is not None and isinstance(layer, _EMBEDDING_LAYERS)

    def __call__(self, token_ids, padding_mask, prompt_ids, prompt_mask, task_index):
        if self.inserts_ids:
            extended, _ = packing.extend_inputs(
                {"token_ids": token_ids, "padding_mask": padding_mask},
                prompt_ids,
                prompt_mask,
                self.table.offset,
            )
            token_ids, padding_mask = extended["token_ids"], extended["padding_mask"]
        inputs = model_inputs(self.model, token_ids, padding_mask)
        return self.model(inputs, training=False)
