"""`PromptTuning`: the handle of a prompt-tuned keras-hub model."""

import keras
import numpy as np
import tensorflow as tf

from tf_softprompt import artifact, ops
from tf_softprompt.hub import calls, inspection

# The version of the `"prompt_tuning"` entry of a model's config. A model
# saved by this version must keep loading: `enable.restore` reads every
# version up to this one.
CONFIG_VERSION = 1


class PromptTuning:
    """The handle of a keras-hub model with prompt tuning enabled.

    Made by `tf_softprompt.hub.enable_prompt_tuning`; reachable again with
    `get_prompt_tuning(model)`, also after `keras.saving.load_model`.
    Callers never see virtual ids or prefix positions: inputs are plain
    `[B, T]` token ids and outputs are `[B, T, ...]`.

    Attributes:
        model: the Backbone or Task it was enabled on.
        backbone: the model's backbone.
        structure: the model's `inspection.ModelStructure`.
        method: the `tf_softprompt.methods.InjectionMethod`.
        table: the `PromptTable` layer holding the trained values.
        num_prompt_tokens: int, P.
        offset: int, the prompt goes after the first `offset` valid tokens
            (forms 1 and 2; a prefix has no place in the sequence).
        dims: the model's `ModelDims`.
        vocab_size: int, V; virtual ids are `[V, V + P)`.
        hidden_dim: int, H.
        initializer: str, how the prompt was initialised (artifacts record
            it).

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

    def __init__(
        self,
        model,
        structure,
        method,
        num_prompt_tokens,
        offset,
        table,
        initializer="uniform",
    ):
        self.model = model
        self.backbone = structure.backbone
        self.structure = structure
        self.method = method
        self.num_prompt_tokens = int(num_prompt_tokens)
        self.offset = int(offset)
        self.dims = structure.dims
        self.vocab_size = int(self.dims.vocab_size)
        self.hidden_dim = int(self.dims.hidden_dim)
        self.table = table
        self.initializer = str(initializer)
        self.installation = None
        self._fingerprint = None
        self._tasks = {}

    # --- The prompt -------------------------------------------------------------

    @property
    def prompt(self):
        """The trainable prompt variable (the method's shape).

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
        return np.asarray(keras.ops.convert_to_numpy(self.table.values()), np.float32)

    def assign_prompt(self, values, arrays=None):
        """Set the prompt from an array of the method's shape."""
        self.table.assign_values(values, arrays)

    def check_sequence_length(self, length):
        """Refuse, before any call, texts of `length` tokens that with the
        prompt's positions would not fit the model's position limit.

        Raises:
            ValueError: naming the positions needed, the limit and the
                longest text length that fits.
        """
        calls.check_length(self, int(length), self.num_prompt_tokens)

    @property
    def vocabulary(self):
        """The frozen `[V, H]` embedding matrix of the backbone."""
        return self.backbone.token_embedding.embeddings

    @property
    def prompt_token_ids(self):
        """The virtual ids `[V, V + P)` as a `[P]` int32 tensor."""
        return ops.virtual_token_ids(self.vocab_size, self.num_prompt_tokens)

    def frozen_base(self):
        """The `FrozenBase` view of the backbone (the prompt excluded)."""
        return inspection.frozen_base(self.backbone, self.table.weights)

    @property
    def fingerprint(self):
        """The fingerprint of the frozen base this prompt belongs to."""
        if self._fingerprint is None:
            self._fingerprint = self.method.fingerprint(self.frozen_base())
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
            self.prompt_values(),
            method=self.method.name,
            dims_metadata=self.method.shape_metadata(self.dims),
            fingerprint_key=self.method.fingerprint_key,
            fingerprint=self.fingerprint,
            num_prompt_tokens=self.num_prompt_tokens,
            initializer=self.initializer,
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
        takes_slots = self.method.sequence_slots(self.num_prompt_tokens)
        if takes_slots and loaded.metadata["offset"] != self.offset:
            raise ValueError(
                f"The prompt in {path!r} was trained with offset="
                f"{loaded.metadata['offset']}, but the model has offset="
                f"{self.offset}. Enable prompt tuning with offset="
                f"{loaded.metadata['offset']} to use this prompt."
            )
        self.table.assign_values(loaded.values, loaded.arrays)
        return loaded.metadata

    # --- Calls ----------------------------------------------------------------

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
            `(extended_inputs, restore)`: the inputs for `call_extended`, and
            a function mapping an extended `[B, W + T, ...]` output back to
            `[B, T, ...]`.
        """
        with calls.request(self, prompt_ids, prompt_mask):
            state = calls.current_request(self)
            extended, extension, _ = calls.extend(self, state, inputs)
        return extended, extension.restore

    def call_extended(
        self, extended_inputs, training=False, prompt_ids=None, prompt_mask=None
    ):
        """Run the backbone graph on inputs from `extend_inputs`, unchanged.

        Returns the raw extended outputs (pass sequence outputs through
        `restore`). `prompt_ids`/`prompt_mask` select a prefix's rows, as
        for `extend_inputs`.
        """
        with calls.request(self, prompt_ids, prompt_mask):
            return calls.call_extended(
                self, self.backbone, extended_inputs, training=training
            )

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
        with calls.request(
            self, prompt_ids, prompt_mask, keys_values, position_offsets
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
        if not inspection.is_causal_lm(self.model):
            raise ValueError(
                f"`generate_step` needs a CausalLM; prompt tuning was enabled "
                f"on a `{type(self.model).__name__}`."
            )
        with calls.request(
            self, prompt_ids, prompt_mask, keys_values, position_offsets
        ):
            return self.model.generate_step(inputs, stop_token_ids=stop_token_ids)

    def keys_values(self, prompt_ids):
        """The keys and values a prompt in front of the text has in every
        self-attention, computed by running it alone through the frozen
        model (forms 1 and 2; `tf_softprompt.hub.baking`).

        Args:
            prompt_ids: virtual ids `V + r`, the prompt's rows in order.

        Returns:
            float32 array `[L, 2, N, kv_heads, head_dim]`.
        """
        values = calls.keys_values_of(self, tf.constant(prompt_ids, tf.int32))
        return np.asarray(keras.ops.convert_to_numpy(values), np.float32)

    def base_keys_values(self, token_ids):
        """The keys and values real tokens produce in every self-attention
        of the base model, unprompted (a prefix's initial values).

        Args:
            token_ids: ints in `[0, V)`, one sequence.

        Returns:
            float32 array `[L, 2, N, kv_heads, head_dim]`.
        """
        values = calls.keys_values_of(
            self, tf.constant(token_ids, tf.int32), plain=True
        )
        return np.asarray(keras.ops.convert_to_numpy(values), np.float32)

    # --- Named tasks (per-example prompts in `generate()`) -------------------

    def add_task(self, name, rows):
        """Name the prompt rows one task uses, for `generate({"tasks": ...})`.

        Registered tasks are part of the model's config, so they survive
        `model.save()` and `keras.saving.load_model()`.

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

    # --- The Keras way -----------------------------------------------------------

    def get_config(self):
        """The prompt-tuning state in a model's config (`"prompt_tuning"`).

        Holds what rebuilds the model's prompt tuning (the weights come with
        the model's weights): the version, the method, P, the offset, the
        reparameterisation, the named tasks, and how the prompt was
        initialised (a record only: a rebuilt prompt starts at zero until
        the weights are loaded).
        """
        reparameterization = self.table.reparameterization
        return {
            "version": CONFIG_VERSION,
            "method": self.method.name,
            "num_prompt_tokens": self.num_prompt_tokens,
            "offset": self.offset,
            "reparameterization": None
            if reparameterization is None
            else {
                "hidden_dim": reparameterization.hidden_dim,
                "embedding_dim": reparameterization.embedding_dim,
            },
            "tasks": {name: list(rows) for name, rows in self._tasks.items()},
            "initializer": self.initializer,
        }

    def disable(self):
        """Take prompt tuning off the model: the base's classes, layers,
        variables and trainable flags are as before enabling, and its
        outputs bit-identical; prompt tuning can be enabled again. The
        prompt's values are dropped with it (save them first with
        `save_prompt`)."""
        if self.installation is not None:
            self.installation.remove()
            self.installation = None


__all__ = ["CONFIG_VERSION", "PromptTuning"]
