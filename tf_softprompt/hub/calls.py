"""The prompted calls of a keras-hub model: what runs around its own code.

Every entry point of a prompt-tuned model goes through one of these, with
the `PromptTuning` it runs for (`tuning`):

- `backbone_call`: the backbone's `call`. Rows are packed (valid positions
  first), forms 1 and 2 insert the virtual ids after the first `offset`
  valid tokens, the backbone's own graph runs with the call's state
  published (`context`), and prompt positions are removed from every
  sequence output before the rows are put back in the caller's layout.
  Packing makes left padding, right padding and mixed lengths give the
  per-example unpadded results, also with learned absolute positions.
- `generate_step`, `score`: the same around a `CausalLM`'s own method.
- `call_with_cache`: called by keras-hub's generation inside a prompted
  call, it runs as is; called directly (a hand-written decoding loop over
  the caller's cache), the prompt enters as keys and values in front of
  the text (`keys_values_of`), with the text's positions after it.
- `generate`: per-example prompts (`tasks`, `prompt_ids`) in
  `CausalLM.generate`.

A request (`request`) carries per-example prompts, precomputed keys and
values and position offsets from the caller down to the call that runs.

Example:
```python
with request(tuning, prompt_ids=ids, prompt_mask=mask):
    logits = lm(inputs)  # backbone_call picks the request up
```
"""

import contextlib

import numpy as np
import tensorflow as tf

from tf_softprompt import methods, ops, packing
from tf_softprompt.hub import context
from tf_softprompt.hub.inspection import PromptPathError

# Extra keys of a `generate()` / `generate_step()` inputs dict; "tasks" is
# resolved by `generate()` only.
SELECTION_KEYS = ("prompt_ids", "prompt_mask", "position_offsets")


def current_request(tuning):
    """The state of `tuning`'s running call or request, or an empty one."""
    state = context.current(tuning)
    return state if state is not None else context.CallState(tuning=tuning)


@contextlib.contextmanager
def request(
    tuning, prompt_ids=None, prompt_mask=None, keys_values=None, position_offsets=None
):
    """Pass per-example prompts (and precomputed keys/values, position
    offsets) down to the prompted call that runs inside the block.

    Args:
        tuning: the `PromptTuning`.
        prompt_ids, prompt_mask: int/bool `[B, W]` rows `V + r` per example.
        keys_values: float `[L, 2, N, kv_heads, head_dim]`, read by every
            self-attention in front of the text instead of the prompt.
        position_offsets: int `[B]`, where each example's text starts.
    """
    state = current_request(tuning)
    changes = {}
    if prompt_ids is not None or prompt_mask is not None:
        changes.update(prompt_ids=prompt_ids, prompt_mask=prompt_mask)
    if keys_values is not None:
        keys_values = tf.convert_to_tensor(keys_values)
        ops.check_prompt_shape(
            keys_values,
            methods.get("prefix").prompt_shape(tuning.dims, keys_values.shape[2]),
            "keys_values",
        )
        changes["keys_values"] = keys_values
    if position_offsets is not None:
        changes["position_offsets"] = tf.cast(position_offsets, tf.int32)
    with context.scope(state.replace(**changes, running=False)):
        yield


def in_sequence(tuning, state):
    """Whether the call inserts virtual ids (forms 1 and 2, unless
    precomputed keys/values stand in for the prompt)."""
    slots = tuning.method.sequence_slots(tuning.num_prompt_tokens)
    return bool(slots) and state.keys_values is None


def selection(tuning, state, token_ids):
    """`(prompt_ids, prompt_mask)` `[B, W]` of the call, defaulting to all
    P ids; `(None, None)` for a prefix without a selection (every example
    reads the whole table, without a gather)."""
    prompt_ids, prompt_mask = state.prompt_ids, state.prompt_mask
    if prompt_ids is None and prompt_mask is None and not in_sequence(tuning, state):
        return None, None
    rows = tuning.num_prompt_tokens
    if state.keys_values is not None:
        rows = int(state.keys_values.shape[2])
    if prompt_ids is None:
        batch = tf.shape(token_ids)[0]
        prompt_ids = tf.tile(
            ops.virtual_token_ids(tuning.vocab_size, rows)[None], tf.stack([batch, 1])
        )
    else:
        prompt_ids = ops.check_token_ids(
            tf.convert_to_tensor(prompt_ids), tuning.vocab_size, rows, "prompt_ids"
        )
    if prompt_ids.shape[1] is None:
        raise ValueError(
            "`prompt_ids` must have a static second dimension (the longest "
            f"prompt). Received: shape={prompt_ids.shape}."
        )
    if prompt_mask is None:
        prompt_mask = tf.ones_like(prompt_ids, dtype=tf.bool)
    return prompt_ids, tf.cast(prompt_mask, tf.bool)


def check_length(tuning, length, width):
    """Raise if `length` tokens plus the prompt's positions exceed the
    model's position limit."""
    limit = tuning.structure.max_sequence_length
    if limit is None or not isinstance(length, int):
        return
    taken = width if tuning.method.positions_before_text(width) else 0
    if length + taken > limit:
        raise ValueError(
            f"The prompted sequence is {length + taken} positions long "
            f"({length} tokens + {taken} prompt positions), but "
            f"`{type(tuning.backbone).__name__}` has "
            f"max_sequence_length={limit}. Shorten the inputs (the "
            "preprocessor's sequence_length; `--sequence-length` on the command "
            f"line) to at most {limit - taken}."
        )


def extend(tuning, state, inputs):
    """Pack `inputs` and insert the call's virtual ids.

    Returns:
        `(extended, extension, (prompt_ids, prompt_mask))`.
    """
    token_ids = tf.convert_to_tensor(inputs["token_ids"])
    if not token_ids.dtype.is_integer:
        token_ids = tf.cast(token_ids, "int32")
    token_ids = ops.check_token_ids(token_ids, tuning.vocab_size, 0)
    prompt_ids, prompt_mask = selection(tuning, state, token_ids)
    inputs = {**inputs, "token_ids": token_ids}
    if in_sequence(tuning, state):
        check_length(tuning, token_ids.shape[1], prompt_ids.shape[1])
        extended, extension = packing.extend_inputs(
            inputs, prompt_ids, prompt_mask, tuning.offset
        )
    else:
        check_length(tuning, token_ids.shape[1], tuning.num_prompt_tokens)
        extended, extension = packing.extend_inputs(inputs)
    return extended, extension, (prompt_ids, prompt_mask)


def _position_offsets(tuning, state, prompt_ids, prompt_mask, batch_size):
    """Each example's first text position (`[B]`), or `None` for 0: the
    request's, else a prefix of past positions' length per example."""
    if state.position_offsets is not None:
        return state.position_offsets
    if in_sequence(tuning, state) or state.keys_values is not None:
        return None
    if not tuning.method.position_shift(tuning.num_prompt_tokens):
        return None
    if prompt_mask is not None:
        return tf.reduce_sum(tf.cast(prompt_mask, tf.int32), axis=1)
    width = tuning.num_prompt_tokens
    if prompt_ids is not None:
        width = tf.shape(prompt_ids)[1]
    return tf.fill(tf.reshape(batch_size, [1]), width)


def running(tuning, state, batch_size, layout=None, prompt_ids=None, prompt_mask=None):
    """The state the model's layers run with: the prompt's values computed
    once for the whole call, the layout and the selection."""
    sequence = in_sequence(tuning, state)
    values = None if state.keys_values is not None else tuning.table.values()
    if sequence:
        prompt_ids = prompt_mask = None  # the extended ids carry the selection
    return state.replace(
        running=True,
        in_sequence=sequence,
        values=values,
        layout=layout,
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        position_offsets=_position_offsets(
            tuning, state, prompt_ids, prompt_mask, batch_size
        ),
    )


def _restore(extension, outputs):
    def restore(x):
        if x.shape.rank is not None and x.shape.rank >= 3:
            return extension.restore(x)
        return x

    return tf.nest.map_structure(restore, outputs)


def backbone_call(tuning, call, inputs, **kwargs):
    """The backbone's `call` with the prompt: `call` is its own graph."""
    state = current_request(tuning)
    if state.running:  # inputs already extended (`call_extended`)
        return call(inputs, **kwargs)
    extended, extension, (ids, mask) = extend(tuning, state, inputs)
    batch = tf.shape(extended["token_ids"])[0]
    with context.scope(running(tuning, state, batch, extension.layout, ids, mask)):
        outputs = call(extended, **kwargs)
    return _restore(extension, outputs)


def call_extended(tuning, backbone, extended_inputs, training=False):
    """Run the backbone's own graph on inputs that already hold the
    prompt's virtual ids (`packing.extend_inputs`)."""
    state = current_request(tuning)
    ids, mask = selection(tuning, state, extended_inputs["token_ids"])
    layout = packing.Layout.from_token_ids(
        extended_inputs["token_ids"],
        extended_inputs["padding_mask"],
        tuning.vocab_size,
    )
    batch = tf.shape(extended_inputs["token_ids"])[0]
    with context.scope(running(tuning, state, batch, layout, ids, mask)):
        return backbone(extended_inputs, training=training)


def split_selection(inputs):
    """`(inputs, request kwargs)` from an inputs dict that may carry
    `SELECTION_KEYS`."""
    if not isinstance(inputs, dict) or not set(inputs) & set(SELECTION_KEYS):
        return inputs, {}
    inputs = dict(inputs)
    kwargs = {key: inputs.pop(key, None) for key in SELECTION_KEYS}
    return inputs, kwargs


def generate_step(tuning, original, inputs, stop_token_ids=None):
    """`CausalLM.generate_step` with the prompt (and the inputs' selection).

    Returns rows left-aligned, prompt slots removed.
    """
    inputs, requested = split_selection(inputs)
    with request(tuning, **requested):
        state = current_request(tuning)
        extended, extension, (ids, mask) = extend(tuning, state, inputs)
        batch = tf.shape(extended["token_ids"])[0]
        with context.scope(running(tuning, state, batch, extension.layout, ids, mask)):
            outputs = original(extended, stop_token_ids=stop_token_ids)
    return {k: extension.strip_generated(v) for k, v in outputs.items()}


def score(
    tuning,
    original,
    token_ids,
    padding_mask=None,
    scoring_mode="logits",
    layer_intercept_fn=None,
    target_ids=None,
):
    """`CausalLM.score` with the prompt, in the caller's layout.

    `layer_intercept_fn` sees each layer's activations at the text positions
    only, in the caller's padding, and what it returns goes back in their
    place (the prompt positions pass unchanged).
    """
    if padding_mask is None:
        padding_mask = tf.ones_like(token_ids, tf.bool)
    inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
    state = current_request(tuning)
    extended, extension, (ids, mask) = extend(tuning, state, inputs)
    if target_ids is not None:
        target_ids = extension.extend_companion(target_ids)
    intercept = None
    if layer_intercept_fn is not None:

        def intercept(x, index):
            return extension.merge(x, layer_intercept_fn(extension.restore(x), index))

    batch = tf.shape(extended["token_ids"])[0]
    with context.scope(running(tuning, state, batch, extension.layout, ids, mask)):
        outputs = original(
            extended["token_ids"],
            padding_mask=extended["padding_mask"],
            scoring_mode=scoring_mode,
            layer_intercept_fn=intercept,
            target_ids=target_ids,
        )
    return extension.restore(outputs)


def keys_values_of(tuning, prompt_ids, plain=False):
    """Each self-attention's keys and values for one sequence, traceably.

    Args:
        tuning: the `PromptTuning`.
        prompt_ids: int `[N]`: virtual ids `V + r` (a prompt, run alone
            through the frozen model, forms 1 and 2), or with `plain=True`
            real token ids run through the base without any prompt.
        plain: run the base model unprompted.

    Returns:
        float `[L, 2, N, kv_heads, head_dim]` tensor: keys after RoPE,
        Llama's repeated heads reduced to its kv heads.
    """
    token_ids = tf.cast(tf.reshape(prompt_ids, [1, -1]), tf.int32)
    inputs = {"token_ids": token_ids, "padding_mask": tf.ones_like(token_ids)}
    if "segment_ids" in tuning.backbone.input:
        inputs["segment_ids"] = tf.zeros_like(token_ids)
    attention = tuning.structure.attention
    recorded = [None] * len(attention)
    state = current_request(tuning).replace(recorded=recorded)
    if plain:
        # No rows in front: every attention runs as the base's.
        dims = tuning.dims.attention[0]
        empty = tf.zeros(
            [len(attention), 2, 0, dims.num_key_value_heads, dims.head_dim]
        )
        state = state.replace(keys_values=empty, prompt_ids=None, prompt_mask=None)
        with context.scope(running(tuning, state, 1)):
            tuning.backbone(inputs, training=False)
    else:
        state = state.replace(keys_values=None, prompt_ids=None, prompt_mask=None)
        with context.scope(state):
            call_extended(tuning, tuning.backbone, inputs)
    if any(r is None for r in recorded):
        raise ValueError(
            "Not every self-attention layer ran; keys and values cannot be "
            "recorded for this model."
        )
    return tf.stack([tf.stack([k[0], v[0]]) for k, v in recorded])


def call_with_cache(tuning, original, token_ids, cache, cache_update_index, **kwargs):
    """`CausalLM.call_with_cache` with the prompt.

    Inside a prompted call (keras-hub's generation under `generate_step`)
    the ids already hold the prompt and it runs as is. Called directly, the
    caller's cache holds the text alone: the prompt enters every
    self-attention as keys and values in front (a prefix as it is; forms 1
    and 2 computed from the prompt's current values), and the text's
    positions start after the prompt's.

    Raises:
        PromptPathError: where the prompt cannot come first as keys and
            values (forms 1 and 2 after the first `offset` tokens, or a
            sliding-window attention).
    """
    state = current_request(tuning)
    if state.running:
        return original(token_ids, cache, cache_update_index, **kwargs)
    batch = tf.shape(token_ids)[0]
    if not in_sequence(tuning, state):
        with context.scope(
            running(tuning, state, batch, None, state.prompt_ids, state.prompt_mask)
        ):
            return original(token_ids, cache, cache_update_index, **kwargs)
    problem = None
    if tuning.offset:
        problem = (
            f"the prompt follows the first {tuning.offset} token(s) of each row "
            f"(offset={tuning.offset}), which the cache of a direct call does "
            "not hold"
        )
    elif tuning.structure.sliding_window:
        problem = "a sliding-window attention would hide the prompt"
    elif state.prompt_ids is not None or state.prompt_mask is not None:
        problem = "per-example prompts change which rows form each prompt"
    if problem is not None:
        raise PromptPathError(
            f"`call_with_cache` called directly cannot carry this "
            f"{tuning.method.name} prompt: {problem}. Use `generate`, "
            "`generate_step` or the handle's `generate_step`."
        )
    ids = ops.virtual_token_ids(tuning.vocab_size, tuning.num_prompt_tokens)
    keys_values = keys_values_of(tuning, ids)
    shift = tuning.method.positions_before_text(tuning.num_prompt_tokens)
    offsets = tf.fill(tf.reshape(batch, [1]), shift)
    state = state.replace(keys_values=keys_values, position_offsets=offsets)
    with context.scope(running(tuning, state, batch)):
        return original(token_ids, cache, cache_update_index, **kwargs)


def generate(tuning, model, original, inputs, *args, **kwargs):
    """`CausalLM.generate`, also taking per-example prompts as extra keys
    of an inputs dict: `tasks` (names registered with `add_task`), or
    `prompt_ids`/`prompt_mask` (and `position_offsets`)."""
    keys = {*SELECTION_KEYS, "tasks"}
    if not isinstance(inputs, dict) or not set(inputs) & keys:
        return original(inputs, *args, **kwargs)
    inputs = dict(inputs)
    tasks = inputs.pop("tasks", None)
    chosen = {k: inputs.pop(k) for k in SELECTION_KEYS if k in inputs}
    if tasks is not None:
        if "prompt_ids" in chosen or "prompt_mask" in chosen:
            raise ValueError(
                "Pass either `tasks` or `prompt_ids`/`prompt_mask` to "
                "`generate`, not both."
            )
        ids, mask = tuning.task_selection(tasks)
        chosen.update(prompt_ids=ids, prompt_mask=mask)
    if model.preprocessor is not None and set(inputs) == {"prompts"}:
        inputs = inputs["prompts"]
    batch = _static_batch(inputs)
    for key, value in chosen.items():
        value = np.asarray(value)
        if batch is not None and value.shape[:1] != (batch,):
            raise ValueError(
                f"`{key}` must have one row per example ({batch}). "
                f"Received shape {list(value.shape)}."
            )
        chosen[key] = tf.convert_to_tensor(
            value.astype(bool) if key == "prompt_mask" else value.astype(np.int32)
        )
    compiled = model.make_generate_function()

    def with_selection(x, stop_token_ids=None):
        return compiled({**x, **chosen}, stop_token_ids=stop_token_ids)

    model.generate_function = with_selection
    try:
        return original(inputs, *args, **kwargs)
    finally:
        model.generate_function = compiled


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


__all__ = [
    "SELECTION_KEYS",
    "PromptPathError",
    "backbone_call",
    "call_extended",
    "call_with_cache",
    "current_request",
    "extend",
    "generate",
    "generate_step",
    "keys_values_of",
    "request",
    "running",
    "score",
    "selection",
    "split_selection",
]
