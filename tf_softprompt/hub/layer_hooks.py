"""Hooks at the layers of a keras-hub model that a prompt changes.

Each hook is one small object for one layer: `install()` gives the layer a
subclass of its own class (keras-hub's own way to extend a layer, as
`CachedMultiHeadAttention` extends `MultiHeadAttention`), whose method reads
the running prompted call (`tf_softprompt.hub.context`) and asks the
injection method (`tf_softprompt.methods`) what to compute; `remove()` gives
the layer its class back, exactly as it was. Outside a prompted call of its
own model a hooked layer runs as before, except a self-attention: the
transformer running outside the model's prompted call would silently run
without the prompt (e.g. a Task method prompt tuning was not attached to),
so it raises `PromptPathError`.

The hooks:

- `TokenEmbeddingHook`: ids are range-checked, and `method.embed` gives
  forms 1 and 2 their prompt rows for virtual ids. The reverse (logits)
  path is the layer's own, so logits cover the V real ids only and no
  sampler can emit a virtual id.
- `PositionEmbeddingHook`, `RotaryHook`: positions shifted per example
  (`position_offsets`: a baked prompt, or a prefix of past positions), and
  `method.slot_positions` / `mask_slots` (form 2).
- `SegmentEmbeddingHook`: `method.mask_slots` at prompt slots (form 2).
- `AttentionHook`: `method.attention_inputs` (a prefix), or precomputed
  keys and values in front of the text; also records the keys and values
  it receives when the call asks for them.

Example:
```python
hook = AttentionHook(tuning, layer, index=0)
hook.install()   # type(layer) is now a subclass of LlamaAttention
hook.remove()    # type(layer) is LlamaAttention again
```
"""

import contextlib

import keras
import tensorflow as tf

# Keras' shape inference (`compute_output_spec`) runs layers symbolically
# outside any call; it passes through the hooks unprompted (same shapes).
from keras.src.backend.common.symbolic_scope import in_symbolic_scope

from tf_softprompt import methods, ops
from tf_softprompt.hub import context
from tf_softprompt.hub.inspection import PromptPathError


def outside_call_error(layer, tuning):
    return PromptPathError(
        f"`{layer.name}` of a prompt-tuned model ({tuning.method.name} prompt) "
        "ran outside the model's prompted call, which would silently drop "
        "the prompt. Call the model itself, or its `generate`, `score` or "
        "`call_with_cache`; for a Task built around a prompt-tuned backbone, "
        "first call `tf_softprompt.hub.enable_prompt_tuning(task, ...)` with "
        "the backbone's settings."
    )


class LayerHook:
    """Routes one layer's method through the running prompted call.

    Subclasses set `mixin`, a class whose methods override the layer's and
    find this hook as `type(self).tf_softprompt_hook`.

    Args:
        tuning: the `PromptTuning` the layer serves.
        layer: the keras-hub layer.
    """

    mixin = None

    def __init__(self, tuning, layer):
        self.tuning = tuning
        self.layer = layer
        self.original_class = None

    def install(self):
        """Give the layer a subclass of its class that runs this hook."""
        if getattr(type(self.layer), "tf_softprompt_hook", None) is not None:
            raise ValueError(
                f"`{self.layer.name}` is already hooked by another prompt "
                "tuning. Disable it first (`tf_softprompt.hub."
                "disable_prompt_tuning`)."
            )
        self.original_class = type(self.layer)
        base = self.original_class
        subclass = type(
            base.__name__,
            (self.mixin, base),
            {
                "tf_softprompt_hook": self,
                "__module__": base.__module__,
                "__qualname__": base.__qualname__,
            },
        )
        self.layer.__class__ = subclass

    def remove(self):
        """Give the layer its own class back."""
        if self.original_class is not None:
            self.layer.__class__ = self.original_class
            self.original_class = None

    def state(self):
        """The running call of this hook's model, or `None`."""
        state = context.current(self.tuning)
        return state if state is not None and state.running else None

    def check_outside_call(self, drops_prompt):
        """Raise `PromptPathError` if running this layer outside its model's
        prompted call would drop the prompt (`drops_prompt`); Keras' shape
        inference passes."""
        if drops_prompt and not in_symbolic_scope():
            raise outside_call_error(self.layer, self.tuning)


class _Hooked:
    """What every hooked layer class adds."""

    @classmethod
    def from_config(cls, config):
        raise PromptPathError(
            f"`{cls.__name__}` is a layer of a prompt-tuned model and cannot "
            "be rebuilt on its own: `keras.models.clone_model` rebuilds a "
            "keras-hub model layer by layer into a plain Functional model that "
            "would run without the prompt. Rebuild the whole model instead: "
            "`clone = type(model).from_config(model.get_config())` then "
            "`clone.set_weights(model.get_weights())`, or `model.save(path)` "
            "and `keras.saving.load_model(path)`."
        )


# --- token embedding -----------------------------------------------------------


class _TokenEmbedding(_Hooked):
    def call(self, inputs, *args, **kwargs):
        reverse = kwargs.get("reverse", args[0] if args else False)
        if reverse:
            return super().call(inputs, *args, **kwargs)
        return type(self).tf_softprompt_hook.embed(inputs, super().call)


class TokenEmbeddingHook(LayerHook):
    """Forms 1 and 2: ids `>= V` read the prompt (`method.embed`)."""

    mixin = _TokenEmbedding

    def embed(self, inputs, original):
        tuning, state = self.tuning, self.state()
        method = tuning.method
        if not inputs.dtype.is_integer:
            inputs = tf.cast(inputs, "int32")
        if state is None:
            # Real ids embedded on their own (e.g. `token_embedding(ids)`):
            # the vocabulary lookup. The prompt enters through the model's
            # calls, and the attention hooks refuse runs that skip them.
            return original(ops.check_token_ids(inputs, tuning.vocab_size, 0))
        rows = tuning.num_prompt_tokens if state.in_sequence else 0
        token_ids = ops.check_token_ids(inputs, tuning.vocab_size, rows)
        outputs = None
        if rows:
            outputs = method.embed(token_ids, self.layer.embeddings, state.values)
        if outputs is None:
            return original(token_ids)
        return tf.cast(outputs, self.layer.compute_dtype)


# --- positions -------------------------------------------------------------------


class _PositionEmbedding(_Hooked):
    def call(self, inputs, start_index=0, positions=None):
        return type(self).tf_softprompt_hook.positions(
            inputs, start_index, positions, super().call
        )


class PositionEmbeddingHook(LayerHook):
    """A keras-hub `PositionEmbedding`: shifted positions, form 2's slots."""

    mixin = _PositionEmbedding

    def positions(self, inputs, start_index, positions, original):
        state = self.state()
        if state is None or positions is not None:
            return original(inputs, start_index=start_index, positions=positions)
        offsets = state.position_offsets
        slots = None
        if state.layout is not None:
            slots = self.tuning.method.slot_positions(
                state.layout, start_index, tf.shape(inputs)[-2]
            )
        if slots is None and offsets is None:
            return original(inputs, start_index=start_index)
        if slots is None:
            positions = ops.offset_positions(offsets, start_index, tf.shape(inputs)[-2])
            return original(inputs, start_index=start_index, positions=positions)
        positions, is_prompt = slots
        if offsets is not None:
            positions = positions + offsets[:, None]
        outputs = original(inputs, start_index=start_index, positions=positions)
        return self.tuning.method.mask_slots(outputs, is_prompt)


class _SegmentEmbedding(_Hooked):
    def call(self, inputs, *args, **kwargs):
        return type(self).tf_softprompt_hook.segments(
            inputs, super().call(inputs, *args, **kwargs)
        )


class SegmentEmbeddingHook(LayerHook):
    """A segment embedding: form 2 zeroes it at prompt slots."""

    mixin = _SegmentEmbedding

    def segments(self, inputs, outputs):
        state = self.state()
        if state is None or state.layout is None:
            return outputs
        slots = self.tuning.method.slot_positions(state.layout, 0, tf.shape(inputs)[1])
        if slots is None:
            return outputs
        return self.tuning.method.mask_slots(outputs, slots[1])


class _Rotary(_Hooked):
    def call(self, inputs, start_index=0, positions=None):
        return type(self).tf_softprompt_hook.rotate(
            inputs, start_index, positions, super().call
        )


class RotaryHook(LayerHook):
    """A keras-hub `RotaryEmbedding`: rotations at shifted positions."""

    mixin = _Rotary

    def rotate(self, inputs, start_index, positions, original):
        state = self.state()
        offsets = None if state is None else state.position_offsets
        if offsets is None or positions is not None:
            return original(inputs, start_index=start_index, positions=positions)
        axis = self.layer.sequence_axis % inputs.shape.rank
        positions = ops.offset_positions(offsets, start_index, tf.shape(inputs)[axis])
        return original(inputs, positions=positions)


# --- attention -------------------------------------------------------------------


class _Attention(_Hooked):
    def _compute_attention(self, query, key, value, attention_mask=None, *a, **kw):
        return type(self).tf_softprompt_hook.attend(
            super()._compute_attention, query, key, value, attention_mask, a, kw
        )

    def _compute_vllm_attention(self, *args, **kwargs):
        hook = type(self).tf_softprompt_hook
        if hook.tuning.method.changes_attention():
            raise PromptPathError(
                f"`{type(self).__name__}` {self.name} is routed to vLLM paged "
                "attention, which skips `_compute_attention` and so would "
                "silently drop the prefix. Serve prefix-tuned models without "
                "vLLM."
            )
        return super()._compute_vllm_attention(*args, **kwargs)


@contextlib.contextmanager
def _sliding_window_off(layer):
    object.__setattr__(layer, "use_sliding_window_attention", False)
    try:
        yield
    finally:
        object.__setattr__(layer, "use_sliding_window_attention", True)


class AttentionHook(LayerHook):
    """One self-attention: a prefix (or precomputed keys and values) in
    front of its keys and values, with the mask extended.

    Args:
        tuning: the `PromptTuning`.
        layer: the attention layer.
        index: its index among the model's self-attention layers.
        num_key_value_heads: the layer's kv heads (Llama repeats them to
            the query heads before `_compute_attention`; recorded keys and
            values are reduced back).
    """

    mixin = _Attention

    def __init__(self, tuning, layer, index, num_key_value_heads):
        super().__init__(tuning, layer)
        self.index = index
        self.num_key_value_heads = num_key_value_heads

    def attend(self, original, query, key, value, attention_mask, args, kwargs):
        tuning, state = self.tuning, self.state()
        method = tuning.method
        if state is None:
            # The transformer running outside the model's prompted call (a
            # Task method that prompt tuning was not attached to) would run
            # without the prompt, whatever the method.
            self.check_outside_call(True)
            return original(query, key, value, attention_mask, *args, **kwargs)
        if state.recorded is not None:
            groups = int(key.shape[2]) // self.num_key_value_heads
            state.recorded[self.index] = (key[:, :, ::groups], value[:, :, ::groups])
        if state.keys_values is not None:
            values, change = state.keys_values, methods.get("prefix").attention_inputs
        elif method.changes_attention():
            values, change = state.values, method.attention_inputs
        else:
            return original(query, key, value, attention_mask, *args, **kwargs)
        rows = None
        if state.prompt_ids is not None:
            rows = tf.cast(state.prompt_ids, tf.int32) - tuning.vocab_size
        sliding = bool(getattr(self.layer, "use_sliding_window_attention", False))
        layer = self.layer

        def prefixed(key, value, mask, query_length):
            if sliding:
                # Gemma applies its window to the mask it receives: apply it
                # to the real keys, where positions line up, and keep the
                # prefix visible to every query (as it is without a window).
                if mask is None:
                    mask = tf.ones(
                        tf.stack([tf.shape(query)[0], query_length, tf.shape(key)[1]]),
                        tf.bool,
                    )
                mask = layer._mask_sliding_window(
                    mask, cache_update_index=kwargs.get("cache_update_index", 0)
                )
            return change(
                values,
                self.index,
                key,
                value,
                mask,
                rows=rows,
                prefix_mask=state.prompt_mask,
                query_length=query_length,
            )

        compute = methods.prefix.compute_attention_with
        if sliding:
            with _sliding_window_off(layer):
                return compute(
                    original,
                    prefixed,
                    query,
                    key,
                    value,
                    attention_mask,
                    *args,
                    **kwargs,
                )
        return compute(
            original, prefixed, query, key, value, attention_mask, *args, **kwargs
        )


def hooks_for(tuning, structure):
    """The layer hooks of a model, one per layer a call may change.

    Every self-attention (when its class is supported) and every position
    layer is hooked whatever the method, so any call can bring precomputed
    keys/values and position offsets (a baked prompt).
    """
    hooks = [TokenEmbeddingHook(tuning, structure.token_embedding)]
    if structure.position_embedding is not None:
        hooks.append(PositionEmbeddingHook(tuning, structure.position_embedding))
    if isinstance(structure.segment_embedding, keras.layers.Embedding):
        hooks.append(SegmentEmbeddingHook(tuning, structure.segment_embedding))
    hooks.extend(RotaryHook(tuning, layer) for layer in structure.rotary)
    for index, (layer, dims) in enumerate(
        zip(structure.attention, structure.dims.attention)
    ):
        hooks.append(AttentionHook(tuning, layer, index, dims.num_key_value_heads))
    return hooks


__all__ = [
    "AttentionHook",
    "LayerHook",
    "PositionEmbeddingHook",
    "RotaryHook",
    "SegmentEmbeddingHook",
    "TokenEmbeddingHook",
    "hooks_for",
]
