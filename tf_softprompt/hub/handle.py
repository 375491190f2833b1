"""`PromptTuning`: the handle of a prompt-tuned keras-hub model."""

import contextlib
import threading

import keras
import numpy as np
import tensorflow as tf

from tf_softprompt import artifact, initializers, methods, ops, packing
from tf_softprompt.hub import adapter

HANDLE_ATTRIBUTE = "_tf_softprompt_handle"
# Extra keys of a `generate()` / `generate_step()` inputs dict (see
# `PromptTuning.generate_step`); "tasks" is resolved by `generate()` only.
SELECTION_KEYS = ("prompt_ids", "prompt_mask", "position_offsets")


class _CallState:
    """What the running call selected: per-example prompt ids and mask, the
    layout of the extended rows (read by the position hooks), precomputed
    keys/values and per-example position offsets."""

    def __init__(self):
        self.selection = None  # (prompt_ids [B, W], prompt_mask [B, W])
        self.layout = None
        self.keys_values = None  # [L, 2, N, kv_heads, head_dim]
        self.position_offsets = None  # int32 [B]


class PromptTuning:
    """The handle of a keras-hub model with prompt tuning enabled.

    Made by `tf_softprompt.hub.enable_prompt_tuning`; reachable again with
    `get_prompt_tuning(model)`. Callers never see virtual ids or prefix
    positions: inputs are plain `[B, T]` token ids and outputs are
    `[B, T, ...]`.

    Attributes:
        model: the Backbone or Task it was enabled on.
        backbone: the model's backbone.
        method: the `tf_softprompt.methods.InjectionMethod`.
        table: the `PromptTable` layer holding the trained values.
        num_prompt_tokens: int, P.
        offset: int, the prompt goes after the first `offset` valid tokens
            (forms 1 and 2; a prefix has no place in the sequence).
        dims: the model's `ModelDims`.
        vocab_size: int, V; virtual ids are `[V, V + P)`.
        hidden_dim: int, H.

    Multi-task serving: the table can hold K tasks' prompts of up to Pmax
    tokens each (P = K * Pmax), and each example picks its own through
    `prompt_ids`/`prompt_mask` (`call`, `generate_step`, `extend_inputs`):
    the ids `V + r` name token `r` of the table, for every method (a
    prefix's row `r` along its token axis). Masked slots behave exactly
    like absent ones.

    Per-example prompts in `CausalLM.generate()`: register each task's rows
    with `add_task`, then pass `"tasks"` (one name per example) next to the
    inputs; or pass `"prompt_ids"`/`"prompt_mask"` `[B, W]` directly. With
    a preprocessor the texts go under `"prompts"`:
    `lm.generate({"prompts": texts, "tasks": names})`; without one, next
    to `token_ids`/`padding_mask`. Each example's output is what a model
    holding only its task's prompt generates.

    Precomputed keys/values (a baked prompt, `tf_softprompt.hub.baking`):
    `call` and `generate_step` take `keys_values` `[L, 2, N, kv_heads,
    head_dim]`, which every self-attention reads in front of the text
    instead of the prompt (`prompt_ids` then name its rows `V + r`, and
    forms 1 and 2 insert nothing into the sequence), and
    `position_offsets` int `[B]`: each example's text starts at that
    position (GPT-2's position ids, RoPE's rotations), as it does behind a
    prompt that took those positions.

    Example:
    ```python
    handle = hub.enable_prompt_tuning(lm, num_tasks * pmax)
    handle.assign_prompt(table)  # tokens k*pmax .. k*pmax+p_k-1: task k
    slots = tf.range(pmax)[None]
    prompt_ids = V + task[:, None] * pmax + slots  # [B, pmax]
    prompt_mask = slots < tf.gather(lengths, task)[:, None]
    logits = handle.call(inputs, prompt_ids=prompt_ids, prompt_mask=prompt_mask)

    handle.add_task("story", range(0, 3))
    handle.add_task("poem", range(pmax, pmax + 2))
    lm.generate({"prompts": ["Once", "The sea"], "tasks": ["story", "poem"]})
    ```
    """

    def __init__(self, model, backbone, method, num_prompt_tokens, offset, dims, table):
        self.model = model
        self.backbone = backbone
        self.method = method
        self.num_prompt_tokens = int(num_prompt_tokens)
        self.offset = int(offset)
        self.dims = dims
        self.vocab_size = int(dims.vocab_size)
        self.hidden_dim = int(dims.hidden_dim)
        self.table = table
        self._local = threading.local()
        self._originals = {}
        self._fingerprint = None
        self._tasks = {}

    # --- Public surface -------------------------------------------------

    @property
    def prompt(self):
        """The trainable float32 prompt variable (the method's shape).

        Raises:
            ValueError: for a reparameterised prefix, which has no direct
                variable; use `prompt_values()`.
        """
        if self.table.reparameterization is not None:
            raise ValueError(
                "This prefix is reparameterised (an MLP computes it), so it has "
                "no direct variable. Read it with `handle.prompt_values()`."
            )
        return self.table.prompt

    def prompt_values(self):
        """The effective prompt as a float32 numpy array."""
        return keras.ops.convert_to_numpy(self.table.values())

    def assign_prompt(self, values, arrays=None):
        """Set the prompt from an array of the method's shape."""
        self.table.assign_values(values, arrays)

    @property
    def vocabulary(self):
        """The frozen `[V, H]` embedding matrix of the backbone."""
        return self.backbone.token_embedding.embeddings

    @property
    def prompt_token_ids(self):
        """The virtual ids `[V, V + P)` as a `[P]` int32 tensor."""
        return ops.virtual_token_ids(self.vocab_size, self.num_prompt_tokens)

    @property
    def fingerprint(self):
        """The fingerprint of the frozen base this prompt belongs to."""
        if self._fingerprint is None:
            self._fingerprint = self.method.fingerprint(
                adapter.frozen_base(self.backbone, self.table.weights)
            )
        return self._fingerprint

    def save_prompt(self, path, task="default", **extra):
        """Write the prompt artifact (`tf_softprompt.artifact`, `.npz`).

        Records the method, its dims, the offset, the fingerprint of the
        frozen base (the vocabulary for forms 1 and 2, every weight for a
        prefix) and the model's class name. A reparameterised prefix also
        stores its MLP, so training can resume from the file.

        Returns:
            The metadata dict.
        """
        extra.setdefault("model_class", type(self.model).__name__)
        return artifact.save_artifact(
            path,
            self.table.values(),
            method=self.method.name,
            dims_metadata=self.method.shape_metadata(self.dims),
            fingerprint_key=self.method.fingerprint_key,
            fingerprint=self.fingerprint,
            num_prompt_tokens=self.num_prompt_tokens,
            initializer=initializers.describe(self.table.prompt_initializer),
            task=task,
            offset=self.offset,
            arrays=self.table.extra_arrays(),
            **extra,
        )

    def load_prompt(self, path):
        """Load a prompt artifact; it stays trainable.

        Raises:
            ValueError: if the method, its dims, the offset or the base's
                fingerprint differ from this model's, or the file is corrupt.
        """
        loaded = artifact.load_artifact(path)
        artifact.check_artifact(
            loaded,
            self.method.name,
            self.method.shape_metadata(self.dims),
            self.method.fingerprint_key,
            self.fingerprint,
        )
        if self.method.uses_virtual_ids and loaded.metadata["offset"] != self.offset:
            raise ValueError(
                f"The prompt in {path!r} was trained with offset="
                f"{loaded.metadata['offset']}, but the model has offset="
                f"{self.offset}. Enable prompt tuning with offset="
                f"{loaded.metadata['offset']} to use this prompt."
            )
        self.table.assign_values(loaded.values, loaded.arrays)
        return loaded.metadata

    def extend_inputs(self, inputs, prompt_ids=None, prompt_mask=None):
        """Pack a batch and insert the prompt's virtual ids.

        Rows are packed first (valid positions to the front), the virtual
        ids go after the first `offset` valid tokens, and the rows are packed
        again, so masked prompt slots behave exactly like absent ones. A
        prefix takes no slots: the rows are only packed.

        Args:
            inputs: dict with `token_ids` `[B, T]` and optionally
                `padding_mask` and `segment_ids` `[B, T]`.
            prompt_ids: optional int `[B, W]` virtual ids per example, each in
                `[V, V + P)`. Defaults to all P ids for every row.
            prompt_mask: optional bool `[B, W]`, False for unused slots.

        Returns:
            `(extended_inputs, restore)`: the inputs for `call_extended` (or
            `call_with_cache`), and a function mapping an extended
            `[B, W + T, ...]` output back to `[B, T, ...]`.
        """
        extended, extension, _ = self._extend(inputs, prompt_ids, prompt_mask)
        return extended, extension.restore

    def call_extended(
        self, extended_inputs, training=False, prompt_ids=None, prompt_mask=None
    ):
        """Run the backbone graph on inputs from `extend_inputs`, unchanged.

        Returns the raw extended outputs (pass sequence outputs through
        `restore`). `prompt_ids`/`prompt_mask` select a prefix's rows, as
        for `extend_inputs`.
        """
        layout = None
        if self.method.replaces_position_sum:
            layout = packing.Layout.from_token_ids(
                extended_inputs["token_ids"],
                extended_inputs["padding_mask"],
                self.vocab_size,
            )
        selection = self._checked_selection(
            extended_inputs["token_ids"], prompt_ids, prompt_mask
        )
        if self.method.uses_virtual_ids:
            selection = None  # the extended ids carry it
        with self._using(selection=selection, layout=layout):
            return self._originals["backbone.call"](extended_inputs, training=training)

    def call(
        self,
        inputs,
        prompt_ids=None,
        prompt_mask=None,
        training=False,
        *,
        keys_values=None,
        position_offsets=None,
    ):
        """Run the enabled model (Task or Backbone) with per-example prompts.

        Same as `model(inputs)`, with `prompt_ids`/`prompt_mask` as in
        `extend_inputs`. Outputs have the prompt positions removed.

        Args:
            inputs: the model's inputs dict.
            prompt_ids, prompt_mask: as in `extend_inputs`.
            training: bool.
            keys_values: optional float `[L, 2, N, kv_heads, head_dim]`
                keys/values every self-attention reads in front of the text
                instead of the prompt (a baked prompt); `prompt_ids` then
                name its rows `V + r` (default: all N).
            position_offsets: optional int `[B]`: example b's sequence starts
                at position `position_offsets[b]` instead of 0.
        """
        with self._using(
            selection=(prompt_ids, prompt_mask),
            keys_values=keys_values,
            position_offsets=position_offsets,
        ):
            return self.model(inputs, training=training)

    def generate_step(
        self,
        inputs,
        stop_token_ids=None,
        prompt_ids=None,
        prompt_mask=None,
        *,
        keys_values=None,
        position_offsets=None,
    ):
        """`CausalLM.generate_step` with optional per-example prompts.

        Args:
            inputs: dict with right-padded `token_ids` and `padding_mask`,
                `[B, T]`; T is the total length (prompt text + generation).
                May also hold `prompt_ids`, `prompt_mask` and
                `position_offsets` (as the arguments below), which is how
                `CausalLM.generate` passes them.
            stop_token_ids: as in `CausalLM.generate_step`.
            prompt_ids, prompt_mask: as in `extend_inputs`.
            keys_values, position_offsets: as in `call`.

        Returns:
            dict of `token_ids` and `padding_mask`, `[B, T]`, without virtual
            ids, rows left-aligned.
        """
        if "generate_step" not in self._originals:
            raise ValueError(
                f"`generate_step` needs a CausalLM; prompt tuning was enabled "
                f"on a `{type(self.model).__name__}`."
            )
        with self._using(
            selection=(prompt_ids, prompt_mask),
            keys_values=keys_values,
            position_offsets=position_offsets,
        ):
            return self._generate_step(inputs, stop_token_ids)

    # --- Named tasks (per-example prompts in `generate()`) -------------------

    def add_task(self, name, rows):
        """Name the prompt rows one task uses, for `generate({"tasks": ...})`.

        Args:
            name: str, the task's name.
            rows: iterable of ints in `[0, P)`, the task's prompt tokens in
                order (rows of the table; a prefix's rows along its token
                axis), e.g. `range(k * pmax, k * pmax + p_k)`.

        Example:
        ```python
        handle.add_task("story", range(0, 3))
        lm.generate({"prompts": ["Once upon"], "tasks": ["story"]})
        ```
        """
        rows = [int(r) for r in rows]
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"A task name must be a non-empty str. Received: {name!r}."
            )
        if not rows or min(rows) < 0 or max(rows) >= self.num_prompt_tokens:
            raise ValueError(
                f"Task {name!r} needs at least one row, each in [0, "
                f"{self.num_prompt_tokens}) (the table's P rows). Received: "
                f"rows={rows}."
            )
        self._tasks[name] = tuple(rows)

    @property
    def tasks(self):
        """`{name: rows}` of the tasks named with `add_task`."""
        return dict(self._tasks)

    def task_selection(self, names):
        """`(prompt_ids, prompt_mask)` numpy `[B, W]` for one task per example.

        W is the longest registered task (the same for every call, so a
        compiled `generate` is reused); shorter tasks are masked.

        Raises:
            ValueError: for a name not registered with `add_task`, listing
                the known ones.
        """
        if isinstance(names, (str, bytes)):
            names = [names]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        unknown = sorted(set(names) - set(self._tasks))
        if unknown:
            raise ValueError(
                f"Unknown task(s) {unknown}. Known tasks: "
                f"{sorted(self._tasks) or 'none (register them with add_task)'}."
            )
        width = max(len(rows) for rows in self._tasks.values())
        ids = np.full((len(names), width), self.vocab_size, np.int32)
        mask = np.zeros((len(names), width), bool)
        for b, name in enumerate(names):
            rows = self._tasks[name]
            ids[b, : len(rows)] = self.vocab_size + np.asarray(rows)
            mask[b, : len(rows)] = True
        return ids, mask

    # --- Call state ---------------------------------------------------------

    @contextlib.contextmanager
    def _using(
        self, selection=None, layout=None, keys_values=None, position_offsets=None
    ):
        state = self._state()
        previous = (
            state.selection,
            state.layout,
            state.keys_values,
            state.position_offsets,
        )
        if selection is not None:
            state.selection = selection
        if layout is not None:
            state.layout = layout
        if keys_values is not None:
            keys_values = tf.convert_to_tensor(keys_values)
            ops.check_prompt_shape(
                keys_values,
                methods.get("prefix").prompt_shape(
                    self._attention_dims(), keys_values.shape[2]
                ),
                "keys_values",
            )
            state.keys_values = keys_values
        if position_offsets is not None:
            state.position_offsets = tf.cast(position_offsets, tf.int32)
        try:
            yield
        finally:
            (
                state.selection,
                state.layout,
                state.keys_values,
                state.position_offsets,
            ) = previous

    def _attention_dims(self):
        """The `ModelDims` with attention shapes (what keys_values must fit)."""
        if self.dims.attention:
            return self.dims
        if getattr(self, "_kv_dims", None) is None:
            self._kv_dims = adapter.model_dims(self.backbone, methods.get("prefix"))
        return self._kv_dims

    def _in_sequence(self):
        """Whether the running call inserts virtual ids (forms 1 and 2,
        unless precomputed keys/values stand in for the prompt)."""
        return self.method.uses_virtual_ids and self._state().keys_values is None

    def _attends(self):
        """Whether the running call puts keys/values in front of the text."""
        return self.method.attends or self._state().keys_values is not None

    def _position_offsets(self, batch_size):
        """Each example's first text position in the running call (`[B]`),
        or `None` for 0: the call's `position_offsets`, else, for a prefix
        that takes positions (`past_prefix`), its length per example."""
        state = self._state()
        if state.position_offsets is not None:
            return state.position_offsets
        if self.method.uses_virtual_ids or not self.method.adds_positions:
            return None
        prompt_ids, prompt_mask = state.selection or (None, None)
        if prompt_mask is not None:
            return tf.reduce_sum(tf.cast(prompt_mask, tf.int32), axis=1)
        width = self.num_prompt_tokens
        if prompt_ids is not None:
            width = tf.shape(prompt_ids)[1]
        return tf.fill(tf.reshape(batch_size, [1]), width)

    def _split_selection(self, inputs):
        """`(inputs, {selection kwargs for _using})` from an inputs dict that
        may carry `SELECTION_KEYS`."""
        if not isinstance(inputs, dict) or not set(inputs) & set(SELECTION_KEYS):
            return inputs, {}
        inputs = dict(inputs)
        prompt_ids = inputs.pop("prompt_ids", None)
        prompt_mask = inputs.pop("prompt_mask", None)
        kwargs = {"position_offsets": inputs.pop("position_offsets", None)}
        if prompt_ids is not None or prompt_mask is not None:
            kwargs["selection"] = (prompt_ids, prompt_mask)
        return inputs, kwargs

    def _state(self):
        state = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = _CallState()
        return state

    def _checked_selection(self, token_ids, prompt_ids=None, prompt_mask=None):
        """`(prompt_ids, prompt_mask)` `[B, W]`, defaulting to all P ids.

        For a prefix the default stays `(None, None)`: every example uses
        the whole table, without a gather.
        """
        if prompt_ids is None and prompt_mask is None:
            prompt_ids, prompt_mask = self._state().selection or (None, None)
        if prompt_ids is None and prompt_mask is None and not self._in_sequence():
            return None, None
        keys_values = self._state().keys_values
        rows = self.num_prompt_tokens if keys_values is None else keys_values.shape[2]
        token_ids = tf.convert_to_tensor(token_ids)
        if prompt_ids is None:
            batch = tf.shape(token_ids)[0]
            prompt_ids = tf.tile(
                ops.virtual_token_ids(self.vocab_size, rows)[None],
                tf.stack([batch, 1]),
            )
        else:
            prompt_ids = ops.check_token_ids(
                tf.convert_to_tensor(prompt_ids),
                self.vocab_size,
                rows,
                "prompt_ids",
            )
        if prompt_ids.shape[1] is None:
            raise ValueError(
                "`prompt_ids` must have a static second dimension (the longest "
                f"prompt). Received: shape={prompt_ids.shape}."
            )
        if prompt_mask is None:
            prompt_mask = tf.ones_like(prompt_ids, dtype=tf.bool)
        return prompt_ids, tf.cast(prompt_mask, tf.bool)

    def _extend(self, inputs, prompt_ids=None, prompt_mask=None):
        token_ids = tf.convert_to_tensor(inputs["token_ids"])
        if not token_ids.dtype.is_integer:
            token_ids = tf.cast(token_ids, "int32")
        token_ids = ops.check_token_ids(token_ids, self.vocab_size, 0)
        prompt_ids, prompt_mask = self._checked_selection(
            token_ids, prompt_ids, prompt_mask
        )
        inputs = {**inputs, "token_ids": token_ids}
        if self._in_sequence():
            self._check_length(token_ids.shape[1], prompt_ids.shape[1])
            extended, extension = packing.extend_inputs(
                inputs, prompt_ids, prompt_mask, self.offset
            )
        else:
            width = self.num_prompt_tokens if self.method.adds_positions else 0
            self._check_length(token_ids.shape[1], width)
            extended, extension = packing.extend_inputs(inputs)
        return extended, extension, (prompt_ids, prompt_mask)

    def _check_length(self, length, width):
        limit = getattr(self.backbone, "max_sequence_length", None)
        if limit is None or not isinstance(length, int):
            return
        total = length + width if self.method.adds_positions else length
        if total > limit:
            raise ValueError(
                f"The prompted sequence is {total} positions long "
                f"({length} tokens + {width} prompt tokens), but "
                f"`{type(self.backbone).__name__}` has "
                f"max_sequence_length={limit}. Shorten the inputs (e.g. the "
                f"preprocessor's sequence_length) to at most {limit - width}."
            )

    # --- Hooks (patched in by `adapter.install`) ------------------------------

    def _embed(self, inputs, reverse=False):
        if reverse:
            # Logits over the V real ids only, so no sampler emits a virtual id.
            return self._originals["token_embedding.call"](inputs, reverse=True)
        embedding = self.backbone.token_embedding
        if not self.method.uses_virtual_ids:
            return self._originals["token_embedding.call"](
                ops.check_token_ids(inputs, self.vocab_size, 0)
            )
        token_ids = ops.check_token_ids(
            tf.cast(inputs, "int32") if not inputs.dtype.is_integer else inputs,
            self.vocab_size,
            self.num_prompt_tokens,
        )
        outputs = self.method.lookup(
            token_ids, embedding.embeddings, self.table.values()
        )
        return tf.cast(outputs, embedding.compute_dtype)

    def _current_layout(self):
        layout = self._state().layout
        if layout is None:
            raise ValueError(
                f"method={self.method.name!r} needs the prompt layout of the "
                "running call. Call the model, `score`, `generate`, or the "
                "handle's `call`, `call_extended` or `generate_step`, not the "
                "backbone's layers directly."
            )
        return layout

    def _position_call(self, inputs, start_index=0, positions=None):
        original = self._originals["position_embedding.call"]
        offsets = self._position_offsets(tf.shape(inputs)[0])
        prepend = self.method.replaces_position_sum
        if positions is not None or (offsets is None and not prepend):
            return original(inputs, start_index=start_index, positions=positions)
        length = tf.shape(inputs)[-2]
        if prepend:
            positions, is_prompt = self.method.positions(
                self._current_layout(), start_index, length
            )
            if offsets is not None:
                positions = positions + offsets[:, None]
        else:
            positions = ops.offset_positions(offsets, start_index, length)
        outputs = original(inputs, start_index=start_index, positions=positions)
        return self.method.zero_at_prompt(outputs, is_prompt) if prepend else outputs

    def _segment_call(self, inputs, *args, **kwargs):
        outputs = self._originals["segment_embedding.call"](inputs, *args, **kwargs)
        _, is_prompt = self.method.positions(
            self._current_layout(), 0, tf.shape(inputs)[1]
        )
        return self.method.zero_at_prompt(outputs, is_prompt)

    def _attention_inputs(self, index, key, value, attention_mask, query_length):
        state = self._state()
        prompt_ids, prompt_mask = state.selection or (None, None)
        rows = None
        if prompt_ids is not None:
            rows = tf.cast(prompt_ids, tf.int32) - self.vocab_size
        values = state.keys_values
        if values is None:
            values = self.table.values()
        return methods.get("prefix").attention_inputs(
            values,
            index,
            key,
            value,
            attention_mask,
            rows=rows,
            prefix_mask=prompt_mask,
            query_length=query_length,
        )

    def _backbone_call(self, inputs, training=None, mask=None, **kwargs):
        extended, extension, selection = self._extend(inputs)
        with self._using(selection=selection, layout=extension.layout):
            outputs = self._originals["backbone.call"](
                extended, training=training, mask=mask, **kwargs
            )

        def restore(x):
            if x.shape.rank is not None and x.shape.rank >= 3:
                return extension.restore(x)
            return x

        return tf.nest.map_structure(restore, outputs)

    def _generate_step(self, inputs, stop_token_ids=None):
        inputs, requested = self._split_selection(inputs)
        with self._using(**requested):
            extended, extension, selection = self._extend(inputs)
            with self._using(selection=selection, layout=extension.layout):
                outputs = self._originals["generate_step"](
                    extended, stop_token_ids=stop_token_ids
                )
        return {k: extension.strip_generated(v) for k, v in outputs.items()}

    def _generate(self, inputs, *args, **kwargs):
        """`CausalLM.generate`, also taking per-example prompts as extra keys
        of an inputs dict (see the class docstring)."""
        original = self._originals["generate"]
        keys = {*SELECTION_KEYS, "tasks"}
        if not isinstance(inputs, dict) or not set(inputs) & keys:
            return original(inputs, *args, **kwargs)
        inputs = dict(inputs)
        tasks = inputs.pop("tasks", None)
        selection = {k: inputs.pop(k) for k in SELECTION_KEYS if k in inputs}
        if tasks is not None:
            if "prompt_ids" in selection or "prompt_mask" in selection:
                raise ValueError(
                    "Pass either `tasks` or `prompt_ids`/`prompt_mask` to "
                    "`generate`, not both."
                )
            ids, mask = self.task_selection(tasks)
            selection.update(prompt_ids=ids, prompt_mask=mask)
        model = self.model
        if model.preprocessor is not None and set(inputs) == {"prompts"}:
            inputs = inputs["prompts"]
        batch = _static_batch(inputs)
        for key, value in selection.items():
            value = np.asarray(value)
            if batch is not None and value.shape[:1] != (batch,):
                raise ValueError(
                    f"`{key}` must have one row per example ({batch}). "
                    f"Received shape {list(value.shape)}."
                )
            selection[key] = tf.convert_to_tensor(
                value.astype(bool) if key == "prompt_mask" else value.astype(np.int32)
            )
        compiled = model.make_generate_function()

        def with_selection(x, stop_token_ids=None):
            return compiled({**x, **selection}, stop_token_ids=stop_token_ids)

        model.generate_function = with_selection
        try:
            return original(inputs, *args, **kwargs)
        finally:
            model.generate_function = compiled

    def _score(self, token_ids, padding_mask=None, target_ids=None, **kwargs):
        inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
        extended, extension, selection = self._extend(inputs)
        if target_ids is not None:
            target_ids = extension.extend_companion(target_ids)
        with self._using(selection=selection, layout=extension.layout):
            outputs = self._originals["score"](
                extended["token_ids"],
                padding_mask=extended["padding_mask"],
                target_ids=target_ids,
                **kwargs,
            )
        return extension.restore(outputs)


def _static_batch(inputs):
    if isinstance(inputs, str):
        return 1  # `generate` adds the batch dimension
    if isinstance(inputs, dict):
        inputs = next(iter(inputs.values()), None)
    shape = getattr(inputs, "shape", None)
    if shape is not None:
        return int(shape[0]) if len(shape) and shape[0] is not None else None
    if isinstance(inputs, (list, tuple)):
        return len(inputs)
    return None


def get_prompt_tuning(model):
    """The `PromptTuning` handle of an enabled model, or `None`."""
    handle = getattr(model, HANDLE_ATTRIBUTE, None)
    if handle is None and adapter.is_hub_model(model):
        handle = getattr(getattr(model, "backbone", None), HANDLE_ATTRIBUTE, None)
    return handle


__all__ = ["HANDLE_ATTRIBUTE", "SELECTION_KEYS", "PromptTuning", "get_prompt_tuning"]
