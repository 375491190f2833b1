"""Prompt tuning for keras-hub models: one call on a Backbone or a Task.

This module is the only place that touches keras-hub internals. It relies on
the structure keras-hub backbones share, not on per-model code:

- `backbone.token_embedding`, a `keras.layers.Embedding` (usually a
  `ReversibleEmbedding`) that embeds ids forward and, for causal LMs, turns
  hidden states into logits with `reverse=True`;
- a dict input of `token_ids`, `padding_mask` and optionally `segment_ids`,
  all `[B, T]`;
- for `CausalLM` tasks, `generate_step()` -> `_build_cache()` ->
  `call_with_cache()` and `score()`, all of which embed through
  `backbone.token_embedding`;
- for `method="prepend"`, `backbone.position_embedding` (a keras-hub
  `PositionEmbedding` that accepts `positions=`) and `backbone.embeddings_add`.

What `enable_prompt_tuning` changes, all on the instances it is given:

1. `backbone.token_embedding.call`: the forward lookup accepts virtual ids
   `[V, V + P)` and sends them to the trainable `[P, H]` prompt through
   `tf_softprompt.ops.prompt_lookup`. The reverse (logits) path is the
   original one, so logits cover the V real ids only and no sampler can
   emit a virtual id.
2. `backbone.call`: inputs are packed (valid positions first), the virtual
   ids are inserted after the first `offset` valid tokens of each row, the
   original functional graph runs on the extended rows, and the prompt
   positions are removed from every sequence output before the rows are
   put back in the caller's layout. Packing makes left padding, right
   padding and mixed lengths give the per-example unpadded results, also for
   learned absolute positions (GPT-2, BERT).
3. For a `CausalLM`: `generate_step` and `score` get the same treatment.
   `call_with_cache` is left alone: it embeds through the patched token
   embedding.
4. For `method="prepend"`: `position_embedding.call` gives real tokens the
   positions they have without a prompt, and `embeddings_add.call` puts the
   prompt vector in place of the token + position (+ segment) sum at the
   prompt slots.

The prompt lives in a small tracked layer attached to the backbone
(`backbone.prompt_tuning_table`), so it is in `model.trainable_variables`,
is updated by `fit`, and is saved by `model.save_weights` and TF
checkpoints. Loading a weights file without a prompt (a base preset) into an
enabled model leaves the prompt as it is; a plain model ignores the prompt
in an enabled model's file. No variable is added to the token embedding, so
`from_preset` works before and after enabling.

Example:
```python
lm = keras_hub.models.GPT2CausalLM.from_preset("gpt2_base_en")
handle = tf_softprompt.hub.enable_prompt_tuning(lm, 20)
lm.compile(optimizer=keras.optimizers.Adam(3e-2))
lm.fit(texts, epochs=3)
lm.generate("The movie was", max_length=30)
handle.save_prompt("review.prompt.npz", task="review")
```
"""

import contextlib
import threading
import warnings

import keras
import keras_hub
import tensorflow as tf

from tf_softprompt import initializers, ops
from tf_softprompt._layer_logic import (
    PromptWeightsMixin,
    _check_num_prompt_tokens,
    _check_offset,
)

# keras-hub versions whose internals this module was checked against. Another
# version gets a warning at enable time; tests/test_hub.py pins the installed
# one, so an upgrade is noticed.
TESTED_KERAS_HUB_VERSIONS = ("0.32",)

METHODS = ("embedding", "prepend")
_SEQUENCE_INPUTS = ("token_ids", "padding_mask", "segment_ids")
_ATTRIBUTE = "_tf_softprompt_handle"
_TABLE_ATTRIBUTE = "prompt_tuning_table"


class UnsupportedModelError(ValueError):
    """The model does not have the keras-hub structure prompt tuning needs."""


def _unsupported(model, reason):
    return UnsupportedModelError(
        f"Prompt tuning does not support `{type(model).__name__}`: {reason} "
        "Supported are keras-hub backbones with a `token_embedding` layer and "
        "`token_ids`/`padding_mask`/`segment_ids` inputs (e.g. GPT2, Gemma, "
        "Llama, BERT) and the Tasks that wrap them."
    )


def _check_keras_hub_version():
    version = ".".join(keras_hub.__version__.split(".")[:2])
    if version not in TESTED_KERAS_HUB_VERSIONS:
        warnings.warn(
            f"tf_softprompt.hub was tested with keras-hub "
            f"{', '.join(TESTED_KERAS_HUB_VERSIONS)}, but {keras_hub.__version__} "
            "is installed. Run tests/test_hub.py before relying on it.",
            stacklevel=3,
        )


class PromptTable(PromptWeightsMixin, keras.layers.Layer):
    """The `[P, H]` prompt of a keras-hub model, as a tracked layer.

    It only owns the variable and the artifact methods; the lookup lives in
    `PromptTuning`. It never holds the vocabulary, so making it trainable
    cannot unfreeze the base model.

    A weights file without this layer (a base preset) leaves the prompt
    unchanged when loaded: see `load_own_variables`.

    Args:
        num_prompt_tokens: int, P (rows of the table).
        hidden_dim: int, H.
        method: `"embedding"` or `"prepend"`, recorded in the artifact.
        offset: int, recorded in the artifact.
        prompt_initializer: `"uniform"` or a `tf_softprompt.initializers`
            initialiser.
    """

    def __init__(
        self,
        num_prompt_tokens,
        hidden_dim,
        method="embedding",
        offset=0,
        prompt_initializer="uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_prompt_tokens = _check_num_prompt_tokens(num_prompt_tokens)
        self.hidden_dim = int(hidden_dim)
        self.method = method
        self.offset = offset
        self.prompt_initializer = initializers.get(prompt_initializer)
        self._add_prompt_weight(self.hidden_dim)
        self.built = True

    def load_own_variables(self, store):
        # A base model's weights file has no entry for the prompt; keep it.
        if store is None or len(store.keys()) == 0:
            return
        super().load_own_variables(store)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_prompt_tokens": self.num_prompt_tokens,
                "hidden_dim": self.hidden_dim,
                "method": self.method,
                "offset": self.offset,
            }
        )
        return config


class _Layout:
    """Per-row prompt layout of the running call (for `method="prepend"`).

    `start[b]` is the packed position of row b's first prompt slot and
    `count[b]` its number of valid prompt slots; `stash` carries the token
    embedding's output to the embedding sum.
    """

    def __init__(self, start, count):
        self.start = start
        self.count = count
        self.stash = None


class _Extension:
    """How a batch was extended, to undo it on outputs (see `extend_inputs`)."""

    def __init__(self, packing, extended_packing, offset, width, length, is_prompt):
        # Each packing is (perm, unpack): `perm` packs rows (valid positions
        # first) and `unpack`, its inverse, is where each position went.
        self.perm, self.unpack = packing
        self.extended_perm, self.extended_unpack = extended_packing
        self.offset = offset
        self.width = width
        self.length = length
        self.is_prompt = is_prompt
        self.layout = None  # a `_Layout` for method="prepend"

    def restore(self, x):
        """`[B, W + T, ...]` outputs of an extended run -> `[B, T, ...]`.

        Undoes the packing, removes the W prompt positions and returns the
        rows in the caller's original layout (left padding stays left).
        """
        x = ops.gather_rows(x, self.extended_unpack)
        x = tf.concat([x[:, : self.offset], x[:, self.offset + self.width :]], 1)
        return ops.gather_rows(x, self.unpack)

    def strip_generated(self, x):
        """`[B, W + T]` generated rows -> `[B, T]`, prompt slots removed.

        Generated rows stay packed (left-aligned, like the preprocessor's
        right-padded output): the generated tokens fill what was padding.
        """
        keep = ops.pack_permutation(tf.logical_not(self.is_prompt))
        return ops.gather_rows(x, keep)[:, : self.length]


class PromptTuning:
    """The handle of a keras-hub model with prompt tuning enabled.

    Made by `enable_prompt_tuning`; reachable again with
    `get_prompt_tuning(model)`.

    Attributes:
        model: the Backbone or Task it was enabled on.
        backbone: the model's backbone.
        table: the `PromptTable` layer holding the prompt.
        num_prompt_tokens: int, P (rows of the prompt table).
        offset: int, the prompt goes after the first `offset` valid tokens.
        method: `"embedding"` or `"prepend"`.
        vocab_size: int, V; virtual ids are `[V, V + P)`.
        hidden_dim: int, H.

    Multi-task serving: the table can hold K tasks' prompts of up to Pmax
    rows each (P = K * Pmax), and each example picks its own rows through
    `prompt_ids`/`prompt_mask` (`call`, `generate_step`, `extend_inputs`).
    Masked slots behave exactly like absent ones.

    Example:
    ```python
    handle = hub.enable_prompt_tuning(lm, num_tasks * pmax)
    handle.prompt.assign(table)  # rows k*pmax .. k*pmax+p_k-1: task k
    slots = tf.range(pmax)[None]
    prompt_ids = V + task[:, None] * pmax + slots  # [B, pmax]
    prompt_mask = slots < tf.gather(lengths, task)[:, None]
    logits = handle.call(inputs, prompt_ids=prompt_ids, prompt_mask=prompt_mask)
    out = handle.generate_step(inputs, prompt_ids=prompt_ids, prompt_mask=prompt_mask)
    ```
    """

    def __init__(self, model, backbone, num_prompt_tokens, offset, method, init):
        self.model = model
        self.backbone = backbone
        self.num_prompt_tokens = num_prompt_tokens
        self.offset = offset
        self.method = method
        embedding = backbone.token_embedding
        self.vocab_size = int(embedding.input_dim)
        self.hidden_dim = int(embedding.output_dim)
        self.table = PromptTable(
            num_prompt_tokens,
            self.hidden_dim,
            method=method,
            offset=offset,
            prompt_initializer=init,
            name="prompt_tuning_table",
        )
        self._local = threading.local()
        self._originals = {}

    # --- Public surface -------------------------------------------------

    @property
    def prompt(self):
        """The trainable `[P, H]` float32 prompt variable."""
        return self.table.prompt

    @property
    def vocabulary(self):
        """The frozen `[V, H]` embedding matrix of the backbone."""
        return self.backbone.token_embedding.embeddings

    @property
    def prompt_token_ids(self):
        """The virtual ids `[V, V + P)` as a `[P]` int32 tensor."""
        return ops.virtual_token_ids(self.vocab_size, self.num_prompt_tokens)

    def save_prompt(self, path, task="default", **extra):
        """Write the prompt artifact (`tf_softprompt.artifact`, `.npz`).

        Records method, offset, V, H and the fingerprint of the frozen
        vocabulary, plus the model's class name.

        Returns:
            The metadata dict.
        """
        extra.setdefault("model_class", type(self.model).__name__)
        return self.table.save_prompt(path, self.vocabulary, task=task, **extra)

    def load_prompt(self, path):
        """Load a prompt artifact; it stays trainable.

        Raises:
            ValueError: if P, H, V or the vocabulary fingerprint differ from
                this model's, or the file is corrupt.
        """
        return self.table.load_prompt(path, self.vocabulary)

    def extend_inputs(self, inputs, prompt_ids=None, prompt_mask=None):
        """Insert the prompt's virtual ids into a batch of backbone inputs.

        Rows are packed first (valid positions to the front), the virtual
        ids go after the first `offset` valid tokens, and the rows are packed
        again, so masked prompt slots behave exactly like absent ones.

        Args:
            inputs: dict with `token_ids` `[B, T]` and optionally
                `padding_mask` `[B, T]` and `segment_ids` `[B, T]`.
            prompt_ids: optional int `[B, W]` virtual ids per example, each in
                `[V, V + P)` (e.g. several tasks' prompts stacked in one
                table). Defaults to all P ids for every row.
            prompt_mask: optional bool `[B, W]`, False for unused slots of a
                shorter prompt. Defaults to all True.

        Returns:
            `(extended_inputs, restore)`: the `[B, W + T]` inputs for
            `call_extended` (or `call_with_cache`), and a function mapping a
            `[B, W + T, ...]` output back to `[B, T, ...]` in the caller's
            layout.
        """
        extended, extension = self._extend(inputs, prompt_ids, prompt_mask)
        return extended, extension.restore

    def call_extended(self, extended_inputs, training=False):
        """Run the backbone graph on inputs from `extend_inputs`, unchanged.

        Returns the raw `[B, W + T, ...]` outputs (pass sequence outputs
        through `restore`).
        """
        layout = self._layout_from_ids(extended_inputs)
        with self._using(layout=layout):
            return self._originals["backbone.call"](extended_inputs, training=training)

    def call(self, inputs, prompt_ids=None, prompt_mask=None, training=False):
        """Run the enabled model (Task or Backbone) with per-example prompts.

        Same as `model(inputs)`, with `prompt_ids`/`prompt_mask` as in
        `extend_inputs`. Outputs have the prompt positions removed.
        """
        with self._using(selection=(prompt_ids, prompt_mask)):
            return self.model(inputs, training=training)

    def generate_step(
        self, inputs, stop_token_ids=None, prompt_ids=None, prompt_mask=None
    ):
        """`CausalLM.generate_step` with optional per-example prompts.

        Args:
            inputs: dict with right-padded `token_ids` and `padding_mask`,
                `[B, T]`; T is the total length (prompt text + generation).
            stop_token_ids: as in `CausalLM.generate_step`.
            prompt_ids, prompt_mask: as in `extend_inputs`.

        Returns:
            dict of `token_ids` and `padding_mask`, `[B, T]`, without virtual
            ids, rows left-aligned.
        """
        if "generate_step" not in self._originals:
            raise ValueError(
                f"`generate_step` needs a CausalLM; prompt tuning was enabled "
                f"on a `{type(self.model).__name__}`."
            )
        with self._using(selection=(prompt_ids, prompt_mask)):
            return self._generate_step(inputs, stop_token_ids)

    # --- Extension ------------------------------------------------------

    @contextlib.contextmanager
    def _using(self, selection=None, layout=None):
        previous = (
            getattr(self._local, "selection", None),
            getattr(self._local, "layout", None),
        )
        if selection is not None:
            self._local.selection = selection
        if layout is not None:
            self._local.layout = layout
        try:
            yield
        finally:
            self._local.selection, self._local.layout = previous

    def _selection(self):
        return getattr(self._local, "selection", None) or (None, None)

    def _extend(self, inputs, prompt_ids=None, prompt_mask=None):
        if prompt_ids is None and prompt_mask is None:
            prompt_ids, prompt_mask = self._selection()
        token_ids = tf.convert_to_tensor(inputs["token_ids"])
        if not token_ids.dtype.is_integer:
            token_ids = tf.cast(token_ids, "int32")
        token_ids = ops.check_token_ids(token_ids, self.vocab_size, 0)
        batch = tf.shape(token_ids)[0]
        length = token_ids.shape[1]
        if length is None:
            length = tf.shape(token_ids)[1]
        padding_mask = inputs.get("padding_mask")
        if padding_mask is None:
            mask = tf.ones_like(token_ids, dtype=tf.bool)
            mask_dtype = tf.int32
        else:
            padding_mask = tf.convert_to_tensor(padding_mask)
            mask_dtype = padding_mask.dtype
            mask = tf.cast(padding_mask, tf.bool)
        if prompt_ids is None:
            prompt_ids = tf.tile(self.prompt_token_ids[None], tf.stack([batch, 1]))
        else:
            prompt_ids = tf.convert_to_tensor(prompt_ids)
            prompt_ids = ops.check_token_ids(
                prompt_ids, self.vocab_size, self.num_prompt_tokens, "prompt_ids"
            )
        prompt_ids = tf.cast(prompt_ids, token_ids.dtype)
        width = prompt_ids.shape[1]
        if width is None:
            raise ValueError(
                "`prompt_ids` must have a static second dimension (the longest "
                f"prompt). Received: shape={prompt_ids.shape}."
            )
        if prompt_mask is None:
            prompt_mask = tf.ones_like(prompt_ids, dtype=tf.bool)
        prompt_mask = tf.cast(prompt_mask, tf.bool)
        self._check_length(length, width)

        unpack = ops.pack_destinations(mask)
        perm = ops.inverse_permutation(unpack)
        packed_mask = ops.gather_rows(mask, perm)
        extended_mask = ops.insert_along_sequence(packed_mask, prompt_mask, self.offset)
        is_prompt = ops.insert_along_sequence(
            tf.zeros_like(packed_mask), prompt_mask, self.offset
        )
        extended_unpack = ops.pack_destinations(extended_mask)
        extended_perm = ops.inverse_permutation(extended_unpack)
        extended = {
            "token_ids": ops.insert_along_sequence(
                ops.gather_rows(token_ids, perm), prompt_ids, self.offset
            ),
            "padding_mask": tf.cast(extended_mask, mask_dtype),
        }
        if inputs.get("segment_ids") is not None:
            segment_ids = ops.gather_rows(
                tf.convert_to_tensor(inputs["segment_ids"]), perm
            )
            extended["segment_ids"] = ops.extend_sequence(
                segment_ids, width, self.offset, fill_value=0
            )
        extended = {k: ops.gather_rows(v, extended_perm) for k, v in extended.items()}
        extension = _Extension(
            (perm, unpack),
            (extended_perm, extended_unpack),
            self.offset,
            width,
            length,
            ops.gather_rows(is_prompt, extended_perm),
        )
        if self.method == "prepend":
            valid = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
            start = tf.minimum(self.offset, valid)
            count = tf.reduce_sum(tf.cast(prompt_mask, tf.int32), axis=1)
            extension.layout = _Layout(start, count)
        return extended, extension

    def _layout_from_ids(self, extended_inputs):
        if self.method != "prepend":
            return None
        is_prompt = tf.logical_and(
            tf.convert_to_tensor(extended_inputs["token_ids"]) >= self.vocab_size,
            tf.cast(extended_inputs["padding_mask"], tf.bool),
        )
        count = tf.reduce_sum(tf.cast(is_prompt, tf.int32), axis=1)
        start = tf.cast(tf.argmax(tf.cast(is_prompt, tf.int32), axis=1), tf.int32)
        return _Layout(start, count)

    def _check_length(self, length, width):
        limit = getattr(self.backbone, "max_sequence_length", None)
        if limit is None or not isinstance(length, int):
            return
        total = length if self.method == "prepend" else length + width
        if total > limit:
            raise ValueError(
                f"The prompted sequence is {total} positions long "
                f"({length} tokens + {width} prompt tokens), but "
                f"`{type(self.backbone).__name__}` has "
                f"max_sequence_length={limit}. Shorten the inputs (e.g. the "
                f"preprocessor's sequence_length) to at most {limit - width}."
            )

    # --- Patched methods --------------------------------------------------

    def _embed(self, inputs, reverse=False):
        if reverse:
            return self._originals["token_embedding.call"](inputs, reverse=True)
        embedding = self.backbone.token_embedding
        token_ids = ops.check_token_ids(
            tf.cast(inputs, "int32") if not inputs.dtype.is_integer else inputs,
            self.vocab_size,
            self.num_prompt_tokens,
        )
        outputs = ops.prompt_lookup(token_ids, embedding.embeddings, self.prompt)
        outputs = tf.cast(outputs, embedding.compute_dtype)
        layout = getattr(self._local, "layout", None)
        if layout is not None:
            layout.stash = (token_ids >= self.vocab_size, outputs)
        return outputs

    def _backbone_call(self, inputs, training=None, mask=None, **kwargs):
        extended, extension = self._extend(inputs)
        with self._using(layout=extension.layout):
            outputs = self._originals["backbone.call"](
                extended, training=training, mask=mask, **kwargs
            )

        def restore(x):
            if x.shape.rank is not None and x.shape.rank >= 3:
                return extension.restore(x)
            return x

        return tf.nest.map_structure(restore, outputs)

    def _generate_step(self, inputs, stop_token_ids=None):
        extended, extension = self._extend(inputs)
        with self._using(layout=extension.layout):
            outputs = self._originals["generate_step"](
                extended, stop_token_ids=stop_token_ids
            )
        return {k: extension.strip_generated(v) for k, v in outputs.items()}

    def _score(self, token_ids, padding_mask=None, target_ids=None, **kwargs):
        inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
        extended, extension = self._extend(inputs)
        if target_ids is not None:
            target_ids = ops.gather_rows(
                tf.convert_to_tensor(target_ids), extension.perm
            )
            target_ids = ops.extend_sequence(target_ids, extension.width, self.offset)
            target_ids = ops.gather_rows(target_ids, extension.extended_perm)
        with self._using(layout=extension.layout):
            outputs = self._originals["score"](
                extended["token_ids"],
                padding_mask=extended["padding_mask"],
                target_ids=target_ids,
                **kwargs,
            )
        return extension.restore(outputs)

    def _current_layout(self):
        layout = getattr(self._local, "layout", None)
        if layout is None:
            raise ValueError(
                "method='prepend' needs the prompt layout of the running call. "
                "Call the model, `score`, `generate`, or the handle's `call`, "
                "`call_extended` or `generate_step`, not the backbone's layers "
                "directly."
            )
        return layout

    def _position_call(self, inputs, start_index=0, positions=None):
        if positions is None:
            layout = self._current_layout()
            length = tf.shape(inputs)[-2]
            index = tf.cast(start_index, tf.int32) + tf.range(length)
            before = tf.clip_by_value(
                index[None] - layout.start[:, None], 0, layout.count[:, None]
            )
            positions = index[None] - before
        return self._originals["position_embedding.call"](
            inputs, start_index=start_index, positions=positions
        )

    def _sum_call(self, inputs, *args, **kwargs):
        outputs = self._originals["embeddings_add.call"](inputs, *args, **kwargs)
        layout = self._current_layout()
        if layout.stash is None:
            return outputs
        is_prompt, embedded = layout.stash
        layout.stash = None
        return tf.where(is_prompt[..., None], tf.cast(embedded, outputs.dtype), outputs)

    def _patch(self, owner, name, attribute, replacement):
        self._originals[name] = getattr(owner, attribute)
        # Instance attributes only; bypass Keras' attribute tracking.
        object.__setattr__(owner, attribute, replacement)


def _split(model):
    if isinstance(model, keras_hub.models.Backbone):
        return model, None
    if isinstance(model, keras_hub.models.Task):
        backbone = getattr(model, "backbone", None)
        if isinstance(backbone, keras_hub.models.Backbone):
            return backbone, model
        raise _unsupported(model, "the task has no keras-hub `backbone`.")
    raise _unsupported(model, "it is not a keras_hub Backbone or Task.")


def _check_structure(model, backbone, method):
    if keras.config.backend() != "tensorflow":
        raise _unsupported(
            model,
            f"the Keras backend is {keras.config.backend()!r}; "
            "tf_softprompt needs KERAS_BACKEND=tensorflow.",
        )
    embedding = backbone.token_embedding
    if not isinstance(embedding, keras.layers.Embedding):
        raise _unsupported(
            model, "its backbone has no `token_embedding` Embedding layer."
        )
    if embedding.quantization_mode is not None:
        raise _unsupported(
            model,
            f"its token embedding is quantized ({embedding.quantization_mode}).",
        )
    input_names = set(backbone.input) if isinstance(backbone.input, dict) else set()
    if "token_ids" not in input_names or not input_names <= set(_SEQUENCE_INPUTS):
        raise _unsupported(
            model,
            f"its backbone inputs are {sorted(input_names) or backbone.input}; "
            f"only {list(_SEQUENCE_INPUTS)} are handled.",
        )
    if method == "prepend":
        position = getattr(backbone, "position_embedding", None)
        if position is None or not hasattr(backbone, "embeddings_add"):
            raise _unsupported(
                model,
                "method='prepend' needs absolute position embeddings "
                "(`position_embedding` and `embeddings_add`, as in GPT2 and "
                "BERT). Use method='embedding'.",
            )


def _default_offset(backbone):
    outputs = backbone.output
    if isinstance(outputs, dict) and "pooled_output" in outputs:
        return 1  # BERT-style: [CLS] stays at position 0 for the pooler.
    return 0


def enable_prompt_tuning(
    model,
    num_prompt_tokens,
    *,
    offset=None,
    method="embedding",
    initializer="uniform",
):
    """Enable soft-prompt tuning on a keras-hub Backbone or Task, in place.

    Adds a trainable `[P, H]` float32 prompt and freezes every weight of the
    backbone, layer by layer (`backbone.trainable` stays True; setting it to
    False would freeze the prompt too). Layers a Task adds on top of its
    backbone (e.g. a `TextClassifier`'s output dense) keep their trainable
    setting, so a classifier trains prompt + head; freeze them yourself for
    prompt-only training. Call it before `compile()`.

    Callers never see virtual ids: inputs are plain `[B, T]` token ids,
    sequence outputs, logits and generated ids are `[B, T, ...]`, and logits
    cover the V real ids only. Left padding, right padding and mixed lengths
    give the per-example unpadded results. For generation the rows are
    returned left-aligned.

    Args:
        model: a `keras_hub.models.Backbone` or a `Task` wrapping one
            (`CausalLM`, `TextClassifier`, ...).
        num_prompt_tokens: int, P.
        offset: int, the prompt goes after the first `offset` valid tokens of
            each row. Defaults to 1 for backbones with a `pooled_output`
            (BERT-style: [CLS] stays first for the pooler) and 0 otherwise
            (causal LMs: the prompt comes first; pass 1 to keep a BOS token
            first).
        method: `"embedding"`: the prompt rows are embeddings of virtual ids,
            so they get positions, segment embeddings and scaling like any
            token (all models). `"prepend"`: the prompt vectors replace the
            token + position (+ segment) sum at their slots and real tokens
            keep the positions they have without a prompt (models with
            absolute position embeddings: GPT2, BERT).
        initializer: `"uniform"` or a `tf_softprompt.initializers` initialiser
            (e.g. `from_label_words(vocabulary, words, tokenize)`).

    Returns:
        The `PromptTuning` handle (also `get_prompt_tuning(model)`).

    Raises:
        UnsupportedModelError: for models without the keras-hub structure.

    Example:
    ```python
    classifier = keras_hub.models.BertTextClassifier.from_preset(
        "bert_tiny_en_uncased", num_classes=2
    )
    handle = tf_softprompt.hub.enable_prompt_tuning(classifier, 10)
    classifier.compile(optimizer=keras.optimizers.Adam(1e-2))
    classifier.fit(texts, labels)
    ```
    """
    _check_keras_hub_version()
    backbone, task = _split(model)
    if method not in METHODS:
        raise ValueError(
            f"`method` must be one of {list(METHODS)}. Received: method={method!r}."
        )
    _check_num_prompt_tokens(num_prompt_tokens)
    _check_structure(model, backbone, method)
    existing = getattr(backbone, _ATTRIBUTE, None)
    if existing is not None:
        same = (existing.num_prompt_tokens, existing.method) == (
            num_prompt_tokens,
            method,
        ) and offset in (None, existing.offset)
        if task is None or getattr(task, _ATTRIBUTE, None) is not None or not same:
            raise ValueError(
                f"Prompt tuning is already enabled on `{backbone.name}`. Use "
                "`tf_softprompt.hub.get_prompt_tuning(model)` to get its handle."
            )
        # A Task built around an enabled backbone: add its generate/score.
        _attach_task(existing, task)
        return existing
    offset = _default_offset(backbone) if offset is None else _check_offset(offset)

    for layer in backbone._flatten_layers(include_self=False):
        layer.trainable = False
    backbone.trainable = True
    handle = PromptTuning(
        model, backbone, num_prompt_tokens, offset, method, initializer
    )
    # Tracked by the backbone: in trainable_variables, weights files and
    # checkpoints, never inside the token embedding.
    setattr(backbone, _TABLE_ATTRIBUTE, handle.table)
    object.__setattr__(backbone, _ATTRIBUTE, handle)

    handle._patch(
        backbone.token_embedding, "token_embedding.call", "call", handle._embed
    )
    handle._patch(backbone, "backbone.call", "call", handle._backbone_call)
    if method == "prepend":
        handle._patch(
            backbone.position_embedding,
            "position_embedding.call",
            "call",
            handle._position_call,
        )
        handle._patch(
            backbone.embeddings_add, "embeddings_add.call", "call", handle._sum_call
        )
    _reset_compiled_functions(backbone)
    if task is not None:
        _attach_task(handle, task)
    return handle


def _attach_task(handle, task):
    object.__setattr__(task, _ATTRIBUTE, handle)
    handle.model = task
    if isinstance(task, keras_hub.models.CausalLM):
        handle._patch(task, "generate_step", "generate_step", handle._generate_step)
        if hasattr(task, "score"):
            handle._patch(task, "score", "score", handle._score)
    _reset_compiled_functions(task)


def _reset_compiled_functions(model):
    # Functions traced before enabling would bypass the prompt.
    for name in ("train_function", "test_function", "predict_function"):
        if getattr(model, name, None) is not None:
            setattr(model, name, None)
    if getattr(model, "generate_function", None) is not None:
        model.generate_function = None


def get_prompt_tuning(model):
    """The `PromptTuning` handle of an enabled model, or `None`."""
    handle = getattr(model, _ATTRIBUTE, None)
    if handle is None and isinstance(model, keras_hub.models.Task):
        handle = getattr(getattr(model, "backbone", None), _ATTRIBUTE, None)
    return handle


__all__ = [
    "PromptTable",
    "PromptTuning",
    "TESTED_KERAS_HUB_VERSIONS",
    "UnsupportedModelError",
    "enable_prompt_tuning",
    "get_prompt_tuning",
]


def transformer_layers(model):
    """The transformer blocks of a keras-hub Backbone or Task, in order.

    keras-hub backbones keep them in `backbone.transformer_layers`.

    Args:
        model: a keras-hub Backbone, or a Task with a `backbone`.

    Returns:
        A non-empty list of layers.
    """
    backbone = getattr(model, "backbone", model)
    layers = list(getattr(backbone, "transformer_layers", None) or ())
    if not layers:
        raise ValueError(
            f"`{type(backbone).__name__}` has no `transformer_layers`, so "
            "there is nothing to recompute. Pass a keras-hub Backbone or Task "
            "(BERT, GPT2, Gemma, ...), or train without recompute."
        )
    return layers
