"""The core-layer side of the exporter: Keras 3 and tf-keras models built with
`tf_softprompt`'s layers (`PromptEmbedding`, `PromptPrepend`,
`PrefixAttention`).

The model's prompt layer is replaced, in a clone that shares every other
layer and weight, by one holding the export's prompt table; the model
stage then gives each example its own task's prompt and runs the clone:

- `PromptEmbedding` (form 1): each example's virtual ids are inserted into
  its token ids (`tf_softprompt.packing`), padded slots masked and packed
  behind the text.
- `PromptPrepend` (form 2): the replacement is an exporter-private
  subclass of the model's flavour of `PromptPrepend` that inserts each
  example's rows `[B, Pmax, H]` of the table with their mask, and packs
  the valid slots first, so that a shorter prompt's text sits where it sat
  in training (position layers after the prompt see the same positions).
  The runner hands it the per-example rows through a context
  (`selected_rows`) while the model is traced. Padded slots are masked,
  so layers after it must consume the Keras mask (masked pooling,
  attention with the mask, RNNs) for shorter prompts to be exact.
- `PrefixAttention` (form 3): the replacement wraps the same attention with
  the table `[2, K * Pmax, heads, key_dim]` as its prefix and reads each
  example's rows (`selected_rows`; `PrefixAttentionMixin.prefix_rows`),
  masked beyond its task's length: what the keras-hub prefix does.

A model without a prompt layer exports as a baseline.

Example:
```python
layer = find_prompt_layer(model)
table = prompt_table(layer, prompts=None, task="sst2", offset=1)
runner = Runner(table_model(model, layer, table), table, layer)
```
"""

import contextlib
import contextvars

import keras
import numpy as np
import tensorflow as tf

from tf_softprompt import initializers, keras2, layers, ops, packing
from tf_softprompt.export.prompt_table import MultiTaskPromptTable

_EMBEDDING_LAYERS = (layers.PromptEmbedding, keras2.PromptEmbedding)
_PREPEND_LAYERS = (layers.PromptPrepend, keras2.PromptPrepend)
_PREFIX_LAYERS = (layers.PrefixAttention, keras2.PrefixAttention)

# (rows [B, Pmax] int32 into the table, mask [B, Pmax] bool) of the call
# being traced, set by `Runner` around the model call.
_SELECTED_ROWS = contextvars.ContextVar("tf_softprompt_selected_rows", default=None)


@contextlib.contextmanager
def selected_rows(rows, mask):
    """Give every `PromptPrepend` replacement these per-example rows."""
    token = _SELECTED_ROWS.set((rows, mask))
    try:
        yield
    finally:
        _SELECTED_ROWS.reset(token)


class _SelectedRowsPrepend:
    """`PromptPrepend` over a padded multi-task table (exporter only).

    The layer's prompt is the table, `[K * Pmax, H]`. Each example inserts
    its own `Pmax` rows at `offset` (`selected_rows`; task 0's outside a
    runner call, e.g. while the clone is built), the slots beyond its task's
    length are masked, and the sequence is packed (valid positions first,
    in order). With no incoming mask and prompts of one length, nothing is
    masked and no mask is made, as the plain layer does.

    Args:
        num_prompt_tokens: int, the table's rows `K * Pmax`.
        lengths: list of the K prompt lengths.
        **kwargs: `PromptPrepend`'s (`offset`, `prompt_initializer`, ...).
    """

    def __init__(self, num_prompt_tokens, lengths, **kwargs):
        super().__init__(num_prompt_tokens, **kwargs)
        self.lengths = tuple(int(n) for n in lengths)
        self.width = max(self.lengths)

    def _selection(self, inputs):
        selection = _SELECTED_ROWS.get()
        if selection is not None:
            return selection
        slots = tf.range(self.width)[None]
        rows = tf.tile(slots, tf.stack([tf.shape(inputs)[0], 1]))
        return rows, rows < self.lengths[0]

    def _extended_mask(self, inputs, mask, prompt_mask):
        if mask is None:
            if len(set(self.lengths)) == 1:
                return None
            raise ValueError(
                f"Prompts of different lengths {list(self.lengths)} in a "
                "PromptPrepend export are masked, but no Keras mask reaches "
                f"the layer {self.name}, so the layers after it could not skip "
                "the padded slots. Give the embedding `mask_zero=True` (or pass "
                "a mask), or export prompts of one length."
            )
        mask = tf.cast(mask, tf.bool)
        return ops.insert_along_sequence(mask, prompt_mask, self.offset)

    def call(self, inputs, mask=None):
        rows, prompt_mask = self._selection(inputs)
        values = tf.gather(self.prompt, rows)  # [B, Pmax, H]
        outputs = ops.prepend_prompt(inputs, values, self.offset)
        extended = self._extended_mask(inputs, mask, prompt_mask)
        if extended is None:
            return outputs
        return packing.gather_rows(outputs, packing.pack_permutation(extended))

    def compute_mask(self, inputs, mask=None):
        _, prompt_mask = self._selection(inputs)
        extended = self._extended_mask(inputs, mask, prompt_mask)
        if extended is None:
            return None
        return packing.gather_rows(extended, packing.pack_permutation(extended))

    def compute_output_shape(self, input_shape):
        batch, length, hidden = tuple(input_shape)
        return (batch, None if length is None else length + self.width, hidden)


class _Keras3SelectedRowsPrepend(_SelectedRowsPrepend, layers.PromptPrepend):
    def compute_mask(self, inputs, mask=None):
        if any(isinstance(x, keras.KerasTensor) for x in (inputs, mask)):
            return self.mask_operation()(inputs, mask)
        return super().compute_mask(inputs, mask)

    def mask_operation(self):
        """Keras 3 records a mask as an operation of the functional graph,
        which runs when the model runs: this layer's, computing its mask."""
        return _SelectedRowsMask(self)


class _SelectedRowsMask(keras.Operation):
    """The mask of a `_Keras3SelectedRowsPrepend`, as a graph operation."""

    def __init__(self, layer):
        super().__init__(name=f"{layer.name}_mask")
        self.layer = layer

    def call(self, inputs, mask=None):
        return _SelectedRowsPrepend.compute_mask(self.layer, inputs, mask)

    def compute_output_spec(self, inputs, mask=None):
        if mask is None and len(set(self.layer.lengths)) == 1:
            return None
        batch, length = inputs.shape[0], inputs.shape[1]
        length = None if length is None else length + self.layer.width
        return keras.KerasTensor((batch, length), dtype="bool")


class _Keras2SelectedRowsPrepend(_SelectedRowsPrepend, keras2.PromptPrepend):
    pass


class _SelectedRowsPrefix:
    """`PrefixAttention` over a padded multi-task table (exporter only).

    The layer's prefix is the table, `[2, K * Pmax, heads, key_dim]`; each
    example reads its own `Pmax` rows (`selected_rows`; task 0's outside a
    runner call), masked beyond its task's length.

    Args:
        num_prompt_tokens: int, `K * Pmax`.
        attention: the wrapped (shared) attention.
        lengths: list of the K prefix lengths.
        **kwargs: `PrefixAttention`'s.
    """

    def __init__(self, num_prompt_tokens, attention, lengths, **kwargs):
        super().__init__(num_prompt_tokens, attention, **kwargs)
        self.lengths = tuple(int(n) for n in lengths)
        self.width = max(self.lengths)

    def prefix_rows(self, query):
        selection = _SELECTED_ROWS.get()
        if selection is not None:
            return selection
        slots = tf.range(self.width)[None]
        rows = tf.tile(slots, tf.stack([tf.shape(query)[0], 1]))
        return rows, rows < self.lengths[0]


class _Keras3SelectedRowsPrefix(_SelectedRowsPrefix, layers.PrefixAttention):
    pass


class _Keras2SelectedRowsPrefix(_SelectedRowsPrefix, keras2.PrefixAttention):
    pass


def find_prompt_layer(model):
    """The model's one prompt layer (`PromptEmbedding`, `PromptPrepend` or
    `PrefixAttention`), or `None` for a model without prompts (a baseline
    export)."""
    found = [
        layer
        for layer in _walk_layers(model)
        if isinstance(layer, _EMBEDDING_LAYERS + _PREPEND_LAYERS + _PREFIX_LAYERS)
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
    """Clone `model` with `new` for `old`, sharing every other layer.

    A Keras 3 `PromptPrepend` leaves its mask in the graph as a
    `PromptMask` operation (its rule: the old layer's); the clone runs the
    new layer's mask operation there instead.
    """
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
    mask = new.mask_operation() if hasattr(new, "mask_operation") else None

    def replace(operation):
        if operation is old:
            return new
        if mask is not None and _is_prepend_mask(operation):
            return mask
        return operation

    return clone(model, clone_function=replace)


def _is_prepend_mask(operation):
    return (
        isinstance(operation, layers.PromptMask)
        and operation.layer_class == "PromptPrepend"
    )


def table_model(model, layer, table):
    """The model with its prompt layer replaced by one holding `table`.

    Every other layer (and its weights) is shared, not copied.
    """
    if isinstance(layer, _PREFIX_LAYERS):
        flavour = (
            _Keras2SelectedRowsPrefix
            if isinstance(layer, keras2.PrefixAttention)
            else _Keras3SelectedRowsPrefix
        )
        new = flavour(
            table.num_rows,
            layer.attention,
            table.lengths,
            prefix_initializer=initializers.from_array(table.table[0]),
            name=f"{layer.name}_task_table",
            dtype=layer.dtype_policy,
        )
        new.build()
        new.prefix.assign(table.table[0])
        return _clone_with(model, layer, new)
    if isinstance(layer, _EMBEDDING_LAYERS):
        new = type(layer).from_embedding(
            layer.embedding,
            table.num_rows,
            validate_ids=layer.validate_ids,
            name=f"{layer.name}_task_table",
        )
        new.build((None, None))
    else:
        flavour = (
            _Keras2SelectedRowsPrepend
            if isinstance(layer, keras2.PromptPrepend)
            else _Keras3SelectedRowsPrepend
        )
        # Not through get_config: it refuses a vocabulary-based initialiser,
        # which a PromptPrepend cannot rebuild; the table is the prompt here.
        new = flavour(
            table.num_rows,
            table.lengths,
            offset=table.offset,
            prompt_initializer=initializers.from_array(table.table),
            name=f"{layer.name}_task_table",
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
    if isinstance(layer, _PREFIX_LAYERS):
        return _prefix_table(layer, prompts, task)
    if prompts is None:
        if offset is None:
            # A PromptPrepend knows where its prompt goes; ids do not.
            offset = getattr(layer, "offset", 0) if _is_prepend(layer) else None
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


def _prefix_table(layer, prompts, task):
    """The table of a `PrefixAttention`: its own prefix, or the artifacts'
    (checked against the wrapped attention's weights' fingerprint)."""
    if prompts is None:
        return MultiTaskPromptTable.from_arrays(
            {task: np.asarray(layer.prefix)[None]},
            method=layer.method,
            fingerprint=layer.base_fingerprint,
        )
    return MultiTaskPromptTable.from_artifacts(
        prompts,
        method=layer.method,
        dims_metadata=layer.dims_metadata(),
        fingerprint=layer.base_fingerprint,
        vocab_size=0,
    )


def _is_prepend(layer):
    return isinstance(layer, _PREPEND_LAYERS)


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
        self.selects_rows = table is not None and isinstance(
            layer, _PREPEND_LAYERS + _PREFIX_LAYERS
        )

    def __call__(self, token_ids, padding_mask, prompt_ids, prompt_mask, task_index):
        if self.selects_rows:
            rows = tf.cast(prompt_ids, tf.int32) - self.table.vocab_size
            with selected_rows(rows, tf.cast(prompt_mask, tf.bool)):
                inputs = model_inputs(self.model, token_ids, padding_mask)
                return self.model(inputs, training=False)
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
