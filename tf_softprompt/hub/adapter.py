"""Everything that touches keras-hub internals, in one place.

It relies on the structure keras-hub backbones share, not on per-model
code:

- `backbone.token_embedding`, a `keras.layers.Embedding` (usually a
  `ReversibleEmbedding`) that embeds ids forward and, for causal LMs, turns
  hidden states into logits with `reverse=True`;
- a dict input of `token_ids`, `padding_mask` and optionally
  `segment_ids`, all `[B, T]`;
- for `CausalLM` tasks, `generate_step()` -> `_build_cache()` ->
  `call_with_cache()` and `score()`, all of which embed through
  `backbone.token_embedding` and attend through the same attention layers;
- for `method="prepend"`, `backbone.position_embedding` (a keras-hub
  `PositionEmbedding` that accepts `positions=`) and, with segments,
  `backbone.segment_embedding`;
- for `method="prefix"`, `backbone.transformer_layers`, each holding one
  self-attention layer whose `_compute_attention(query, key, value,
  attention_mask, ...)` receives projected `[B, S, heads, head_dim]`
  tensors: Keras' `MultiHeadAttention` (BERT; GPT-2's
  `CachedMultiHeadAttention`), `LlamaAttention` (which has already repeated
  its kv heads) and `GemmaAttention` (grouped, with an optional sliding
  window applied to the mask it receives);
- for position offsets (the text's positions start after keys and values
  that are not in the sequence: a baked prompt), the backbone's keras-hub
  `PositionEmbedding` (`backbone.position_embedding`, GPT2, BERT) and every
  keras-hub `RotaryEmbedding` inside it (Llama's `rotary_embedding_layer`,
  Gemma's `rope_layer`), which all accept `positions=`.

`install(handle)` patches these on the instances it is given, routing each
to the handle, which computes with the handle's `InjectionMethod`.

Example:
```python
backbone, task = split(model)
check_structure(model, backbone, methods.get("prefix"))
dims = model_dims(backbone, methods.get("prefix"))
```
"""

import contextlib
import warnings

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from tf_softprompt import ops
from tf_softprompt.methods.base import AttentionDims, FrozenBase, ModelDims
from tf_softprompt.patching import patched

# keras-hub versions whose internals this module was checked against. Another
# version gets a warning at enable time; tests/test_hub.py pins the installed
# one, so an upgrade is noticed.
TESTED_KERAS_HUB_VERSIONS = ("0.32",)
SEQUENCE_INPUTS = ("token_ids", "padding_mask", "segment_ids")


class UnsupportedModelError(ValueError):
    """The model does not have the keras-hub structure prompt tuning needs."""


def unsupported(model, reason):
    return UnsupportedModelError(
        f"Prompt tuning does not support `{type(model).__name__}`: {reason} "
        "Supported are keras-hub backbones with a `token_embedding` layer and "
        "`token_ids`/`padding_mask`/`segment_ids` inputs (e.g. GPT2, Gemma, "
        "Llama, BERT) and the Tasks that wrap them."
    )


def check_keras_hub_version():
    version = ".".join(keras_hub.__version__.split(".")[:2])
    if version not in TESTED_KERAS_HUB_VERSIONS:
        warnings.warn(
            f"tf_softprompt.hub was tested with keras-hub "
            f"{', '.join(TESTED_KERAS_HUB_VERSIONS)}, but {keras_hub.__version__} "
            "is installed. Run tests/test_hub.py before relying on it.",
            stacklevel=3,
        )


def split(model):
    """`(backbone, task)` of a Backbone (task `None`) or a Task."""
    if isinstance(model, keras_hub.models.Backbone):
        return model, None
    if isinstance(model, keras_hub.models.Task):
        backbone = getattr(model, "backbone", None)
        if isinstance(backbone, keras_hub.models.Backbone):
            return backbone, model
        raise unsupported(model, "the task has no keras-hub `backbone`.")
    raise unsupported(model, "it is not a keras_hub Backbone or Task.")


def is_hub_model(model):
    return isinstance(model, (keras_hub.models.Backbone, keras_hub.models.Task))


def is_causal_lm(model):
    return isinstance(model, keras_hub.models.CausalLM)


def check_structure(model, backbone, method):
    """Raise `UnsupportedModelError` unless `method` can run on `backbone`."""
    if keras.config.backend() != "tensorflow":
        raise unsupported(
            model,
            f"the Keras backend is {keras.config.backend()!r}; "
            "tf_softprompt needs KERAS_BACKEND=tensorflow.",
        )
    embedding = getattr(backbone, "token_embedding", None)
    if not isinstance(embedding, keras.layers.Embedding):
        raise unsupported(
            model, "its backbone has no `token_embedding` Embedding layer."
        )
    if embedding.quantization_mode is not None:
        raise unsupported(
            model,
            f"its token embedding is quantized ({embedding.quantization_mode}).",
        )
    input_names = set(backbone.input) if isinstance(backbone.input, dict) else set()
    if "token_ids" not in input_names or not input_names <= set(SEQUENCE_INPUTS):
        raise unsupported(
            model,
            f"its backbone inputs are {sorted(input_names) or backbone.input}; "
            f"only {list(SEQUENCE_INPUTS)} are handled.",
        )
    if method.replaces_position_sum:
        position = getattr(backbone, "position_embedding", None)
        if position is None or not hasattr(backbone, "embeddings_add"):
            raise unsupported(
                model,
                f"method={method.name!r} needs absolute position embeddings "
                "(`position_embedding` and `embeddings_add`, as in GPT2 and "
                "BERT). Use method='embedding' or 'prefix'.",
            )
    if method.attends:
        attention_layers(backbone, model)
        if method.adds_positions and not has_shiftable_positions(backbone):
            raise unsupported(
                model,
                f"method={method.name!r} starts the text after the prefix's "
                "positions, but the backbone has neither a keras-hub "
                "PositionEmbedding nor RotaryEmbedding to shift. Use "
                "method='prefix'.",
            )


def default_offset(backbone):
    outputs = backbone.output
    if isinstance(outputs, dict) and "pooled_output" in outputs:
        return 1  # BERT-style: [CLS] stays at position 0 for the pooler.
    return 0


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
            f"`{type(backbone).__name__}` has no `transformer_layers`. Pass a "
            "keras-hub Backbone or Task (BERT, GPT2, Gemma, Llama, ...)."
        )
    return layers


# --- self-attention layers (method="prefix") ---------------------------------


def _supported_attention_classes():
    from keras_hub.src.models.gemma.gemma_attention import CachedGemmaAttention
    from keras_hub.src.models.llama.llama_attention import LlamaAttention

    return (keras.layers.MultiHeadAttention, LlamaAttention, CachedGemmaAttention)


def _is_attention_like(layer):
    name = type(layer).__name__
    return hasattr(layer, "_compute_attention") or (
        "Attention" in name and not isinstance(layer, keras.layers.Softmax)
    )


def attention_layers(backbone, model=None):
    """The one self-attention layer of each transformer block, in order.

    Raises:
        UnsupportedModelError: naming the class of an attention layer whose
            `_compute_attention` contract was not checked, or a block with
            no or several attention layers (e.g. cross-attention).
    """
    model = model or backbone
    supported = _supported_attention_classes()
    found = []
    for index, block in enumerate(transformer_layers(backbone)):
        candidates = [
            layer
            for layer in block._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, supported)
        ]
        if not candidates:
            others = sorted(
                {
                    type(layer).__name__
                    for layer in block._flatten_layers(include_self=False)
                    if _is_attention_like(layer)
                }
            )
            raise unsupported(
                model,
                f"method='prefix' does not know the attention layer(s) "
                f"{others or ['(none found)']} of transformer layer {index} "
                f"(`{type(block).__name__}`). Supported attention layers: "
                f"{[c.__name__ for c in supported]}.",
            )
        if len(candidates) > 1:
            raise unsupported(
                model,
                f"transformer layer {index} (`{type(block).__name__}`) has "
                f"{len(candidates)} attention layers "
                f"({[layer.name for layer in candidates]}); method='prefix' "
                "handles one self-attention per layer (no cross-attention).",
            )
        found.append(candidates[0])
    return found


def attention_dims(layer):
    """`AttentionDims` of a supported attention layer."""
    if isinstance(layer, keras.layers.MultiHeadAttention):
        if layer.value_dim != layer.key_dim:
            raise UnsupportedModelError(
                f"method='prefix' needs equal key and value sizes; "
                f"`{type(layer).__name__}` {layer.name} has key_dim="
                f"{layer.key_dim}, value_dim={layer.value_dim}."
            )
        return AttentionDims(int(layer.num_heads), int(layer.key_dim))
    head_dim = getattr(layer, "head_dim", None)
    if head_dim is None:
        head_dim = int(layer._key_dense.kernel.shape[-1])
    return AttentionDims(int(layer.num_key_value_heads), int(head_dim))


def model_dims(backbone, method):
    """The `ModelDims` the method needs."""
    embedding = backbone.token_embedding
    attention = ()
    if method.attends:
        attention = tuple(attention_dims(layer) for layer in attention_layers(backbone))
    return ModelDims(int(embedding.input_dim), int(embedding.output_dim), attention)


def frozen_base(backbone, exclude=()):
    """The `FrozenBase` view of a backbone, for fingerprints.

    Args:
        backbone: a keras-hub backbone.
        exclude: variables left out (the prompt table the backbone tracks).
    """
    excluded = {id(v) for v in exclude}

    def weights():
        return [
            (w.path, keras.ops.convert_to_numpy(w))
            for w in backbone.weights
            if id(w) not in excluded
        ]

    return FrozenBase(backbone.token_embedding.embeddings, weights)


def freeze(backbone):
    """Freeze every layer of the backbone, keeping `backbone.trainable`.

    Setting `backbone.trainable = False` would also freeze the prompt
    table, which is tracked by the backbone.
    """
    for layer in backbone._flatten_layers(include_self=False):
        layer.trainable = False
    backbone.trainable = True


def capture_keys_values(backbone, token_ids):
    """The keys and values `token_ids` produce in each self-attention layer.

    Runs the (unprompted) backbone once on one sequence of the given ids,
    all valid, segment 0 (see `record_keys_values`).

    Args:
        backbone: a keras-hub backbone, not yet prompt-tuned.
        token_ids: list of P ints.

    Returns:
        float32 array `[L, 2, P, kv_heads, head_dim]`.
    """
    ids = np.asarray([token_ids], "int32")
    inputs = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    if "segment_ids" in backbone.input:
        inputs["segment_ids"] = np.zeros_like(ids)
    return record_keys_values(backbone, lambda: backbone(inputs, training=False))


def record_keys_values(backbone, run):
    """Each self-attention layer's keys and values while `run()` executes.

    Records the projected keys and values of the first example as each
    attention layer's `_compute_attention` receives them: after RoPE, before
    any prefix is put in front, Llama's repeated kv heads reduced back to
    the kv heads.

    Args:
        backbone: a keras-hub backbone (prompt-tuned or not).
        run: callable running the backbone once, eagerly, on a batch whose
            first row is the sequence to record (all positions valid).

    Returns:
        float32 array `[L, 2, S, kv_heads, head_dim]`, S the sequence length.
    """
    layers = attention_layers(backbone)
    dims = [attention_dims(layer) for layer in layers]
    captured = [None] * len(layers)
    with contextlib.ExitStack() as stack:
        for index, layer in enumerate(layers):
            original = layer._compute_attention

            def record(query, key, value, *args, _i=index, _f=original, **kwargs):
                groups = int(key.shape[2]) // dims[_i].num_key_value_heads
                captured[_i] = (
                    keras.ops.convert_to_numpy(key[0, :, ::groups]),
                    keras.ops.convert_to_numpy(value[0, :, ::groups]),
                )
                return _f(query, key, value, *args, **kwargs)

            stack.enter_context(patched(layer, "_compute_attention", record))
        run()
    return np.stack([np.stack(kv) for kv in captured]).astype(np.float32)


# --- positions (offsets per example) -----------------------------------------


def absolute_position_embedding(backbone):
    """The backbone's keras-hub `PositionEmbedding` (GPT2, BERT), or `None`."""
    layer = getattr(backbone, "position_embedding", None)
    if isinstance(layer, keras_hub.layers.PositionEmbedding):
        return layer
    return None


def rotary_embeddings(backbone):
    """Every keras-hub `RotaryEmbedding` inside the backbone (Llama, Gemma)."""
    return [
        layer
        for layer in backbone._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras_hub.layers.RotaryEmbedding)
    ]


def has_shiftable_positions(backbone):
    """Whether the text's positions can be started at a per-example offset:
    the backbone has a keras-hub `PositionEmbedding` or `RotaryEmbedding`."""
    return absolute_position_embedding(backbone) is not None or bool(
        rotary_embeddings(backbone)
    )


def _offset_rotary(handle, layer, original):
    """A `RotaryEmbedding.call` that rotates at each example's shifted
    positions when the running call has position offsets."""

    def call(inputs, start_index=0, positions=None):
        offsets = handle._position_offsets(tf.shape(inputs)[0])
        if offsets is None or positions is not None:
            return original(inputs, start_index=start_index, positions=positions)
        axis = layer.sequence_axis % inputs.shape.rank
        positions = ops.offset_positions(offsets, start_index, tf.shape(inputs)[axis])
        return original(inputs, positions=positions)

    return call


def baking_obstacle(model):
    """Why a prompt's keys/values cannot be computed once for `model`, or
    `None` when they can (keras-hub structure only; the method and offset
    are the caller's part).

    Baking needs a causal LM (a prompt in front of the text then attends
    only to itself), self-attention layers whose keys and values can be
    supplied (`_compute_attention`), no sliding window (it would hide the
    prompt from distant text positions, a prefix never), and a position
    mechanism whose positions can be shifted per example.
    """
    backbone, _ = split(model)
    if not is_causal_lm(model):
        return (
            f"`{type(model).__name__}` is not a causal LM: its prompt positions "
            "attend to the text, so their keys and values differ per request"
        )
    try:
        layers = attention_layers(backbone, model)
    except UnsupportedModelError as error:
        return str(error)
    if any(getattr(layer, "use_sliding_window_attention", False) for layer in layers):
        return (
            "its sliding-window attention hides the prompt from text positions "
            "beyond the window, which keys and values in front never are"
        )
    if not has_shiftable_positions(backbone):
        return (
            "it has neither a keras-hub PositionEmbedding nor RotaryEmbedding, "
            "so the text's positions cannot be started after the prompt"
        )
    return None


@contextlib.contextmanager
def _sliding_window_disabled(layer):
    object.__setattr__(layer, "use_sliding_window_attention", False)
    try:
        yield
    finally:
        object.__setattr__(layer, "use_sliding_window_attention", True)


def _prefixed_attention(handle, layer, index, original):
    """`_compute_attention` with the handle's prefix (or the running call's
    precomputed keys/values) in front of K/V; unchanged without one."""
    sliding = bool(getattr(layer, "use_sliding_window_attention", False))

    def compute_attention(query, key, value, attention_mask=None, *args, **kwargs):
        if not handle._attends():
            return original(query, key, value, attention_mask, *args, **kwargs)
        query_length = tf.shape(query)[1]
        if kwargs.pop("use_causal_mask", False):
            # Keras MultiHeadAttention's causal-only fast path passes no mask
            # and `is_causal`, which would align the causal triangle with the
            # prefix; spell the mask out over the real keys instead.
            attention_mask = ops.and_causal_mask(
                attention_mask, query_length, tf.shape(key)[1]
            )
        if sliding:
            # Gemma applies its window to the mask it is given; apply it to
            # the real keys here, where positions line up, and keep the prefix
            # visible to every query (as it is without a window).
            if attention_mask is None:
                attention_mask = tf.ones(
                    tf.stack([tf.shape(query)[0], query_length, tf.shape(key)[1]]),
                    tf.bool,
                )
            attention_mask = layer._mask_sliding_window(
                attention_mask, cache_update_index=kwargs.get("cache_update_index", 0)
            )
        key, value, attention_mask = handle._attention_inputs(
            index, key, value, attention_mask, query_length
        )
        if sliding:
            with _sliding_window_disabled(layer):
                return original(query, key, value, attention_mask, *args, **kwargs)
        return original(query, key, value, attention_mask, *args, **kwargs)

    return compute_attention


def _refuse_vllm(layer):
    def refuse(*args, **kwargs):
        raise UnsupportedModelError(
            f"`{type(layer).__name__}` {layer.name} is routed to vLLM paged "
            "attention, which skips `_compute_attention` and so would silently "
            "drop the prefix. Serve prefix-tuned models without vLLM."
        )

    return refuse


# --- installing -----------------------------------------------------------


def _patch(handle, owner, name, attribute, replacement):
    handle._originals[name] = getattr(owner, attribute)
    # Instance attributes only; bypass Keras' attribute tracking.
    object.__setattr__(owner, attribute, replacement)


def install(handle):
    """Route the backbone's calls through the handle (instances only).

    Besides what the method needs, every self-attention (when its class is
    supported) and every position layer is routed through the handle, so
    any call can bring precomputed keys/values and position offsets
    (`PromptTuning.call(keys_values=..., position_offsets=...)`); without
    them these hooks call the original.
    """
    backbone, method = handle.backbone, handle.method
    _patch(
        handle, backbone.token_embedding, "token_embedding.call", "call", handle._embed
    )
    _patch(handle, backbone, "backbone.call", "call", handle._backbone_call)
    position = absolute_position_embedding(backbone)
    if method.replaces_position_sum or position is not None:
        _patch(
            handle,
            backbone.position_embedding,
            "position_embedding.call",
            "call",
            handle._position_call,
        )
    if method.replaces_position_sum:
        segments = getattr(backbone, "segment_embedding", None)
        if segments is not None:
            _patch(
                handle, segments, "segment_embedding.call", "call", handle._segment_call
            )
    for index, layer in enumerate(rotary_embeddings(backbone)):
        _patch(
            handle,
            layer,
            f"rotary.{index}.call",
            "call",
            _offset_rotary(handle, layer, layer.call),
        )
    try:
        layers = attention_layers(backbone)
    except UnsupportedModelError:
        if method.attends:
            raise
        layers = []  # forms 1 and 2 work without; precomputed keys/values do not
    for index, layer in enumerate(layers):
        name = f"attention.{index}._compute_attention"
        original = layer._compute_attention
        _patch(
            handle,
            layer,
            name,
            "_compute_attention",
            _prefixed_attention(handle, layer, index, original),
        )
        if method.attends and hasattr(layer, "_compute_vllm_attention"):
            _patch(
                handle,
                layer,
                f"attention.{index}._compute_vllm_attention",
                "_compute_vllm_attention",
                _refuse_vllm(layer),
            )
    reset_compiled_functions(backbone)


def attach_task(handle, task):
    """Give a Task's generate/score paths the prompt."""
    from tf_softprompt.hub.handle import HANDLE_ATTRIBUTE

    object.__setattr__(task, HANDLE_ATTRIBUTE, handle)
    handle.model = task
    if isinstance(task, keras_hub.models.CausalLM):
        _patch(handle, task, "generate_step", "generate_step", handle._generate_step)
        _patch(handle, task, "generate", "generate", handle._generate)
        if hasattr(task, "score"):
            _patch(handle, task, "score", "score", handle._score)
    reset_compiled_functions(task)


def reset_compiled_functions(model):
    # Functions traced before enabling would bypass the prompt.
    for name in ("train_function", "test_function", "predict_function"):
        if getattr(model, name, None) is not None:
            setattr(model, name, None)
    if getattr(model, "generate_function", None) is not None:
        model.generate_function = None


def classifier_head(model):
    """`(kernel, bias)` variables of a `TextClassifier`'s output dense layer.

    Raises:
        ValueError: if the model has no linear `output_dense` head.
    """
    dense = getattr(model, "output_dense", None)
    if dense is None:
        raise ValueError(
            "Per-task heads need a keras-hub TextClassifier (with "
            f"`output_dense`). Received: {type(model).__name__}."
        )
    activation = getattr(dense, "activation", None)
    if activation not in (None, keras.activations.linear):
        raise ValueError(
            "Per-task heads are applied as linear layers; the model's "
            f"`output_dense` has activation {activation}."
        )
    return dense.kernel, dense.bias


def pooled_output(outputs):
    """The backbone output a classifier head reads ([CLS] pooled)."""
    return outputs["pooled_output"]


def base_identity(model, method):
    """What a prompt of `method` must match to load into `model`.

    Works on a model with or without prompt tuning enabled.

    Returns:
        dict with `dims` (`ModelDims`), `dims_metadata`, `fingerprint_key`,
        `fingerprint` and `vocab_size`.
    """
    from tf_softprompt.hub.handle import get_prompt_tuning

    backbone, _ = split(model)
    handle = get_prompt_tuning(model)
    if handle is not None and handle.method is method:
        dims, fingerprint = handle.dims, handle.fingerprint
    else:
        check_structure(model, backbone, method)
        dims = model_dims(backbone, method)
        exclude = handle.table.weights if handle is not None else ()
        fingerprint = method.fingerprint(frozen_base(backbone, exclude))
    return {
        "dims": dims,
        "dims_metadata": method.shape_metadata(dims),
        "fingerprint_key": method.fingerprint_key,
        "fingerprint": fingerprint,
        "vocab_size": dims.vocab_size,
    }


def set_dropout(model, rate):
    """Set every dropout rate inside a keras-hub backbone (in place).

    Covers `keras.layers.Dropout` layers and the attention-probability
    dropout of Keras' `MultiHeadAttention`. A Task's own layers (e.g. a
    classifier head's dropout) are left alone.

    Args:
        model: a keras-hub Backbone, or a Task with a `backbone`.
        rate: float in `[0, 1)`.

    Returns:
        The number of layers changed.
    """
    if not 0 <= rate < 1:
        raise ValueError(f"`rate` must be in [0, 1). Received: rate={rate}.")
    backbone, _ = split(model)
    changed = 0
    for layer in backbone._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = float(rate)
            changed += 1
        elif isinstance(layer, keras.layers.MultiHeadAttention):
            layer._dropout = float(rate)
            changed += 1
    return changed
