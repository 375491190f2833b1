"""What prompt tuning needs to know of a keras-hub model, found once.

It relies on the structure keras-hub backbones share, not on per-model
code:

- `backbone.token_embedding`, a `keras.layers.Embedding` (usually a
  `ReversibleEmbedding`) that embeds ids forward and, for causal LMs, turns
  hidden states into logits with `reverse=True`;
- a dict input of `token_ids`, `padding_mask` and optionally
  `segment_ids`, all `[B, T]`;
- `backbone.position_embedding` (a keras-hub `PositionEmbedding` that takes
  `positions=`, GPT-2 and BERT) with `embeddings_add`, and with segments
  `backbone.segment_embedding`;
- every keras-hub `RotaryEmbedding` inside the backbone (Llama's
  `rotary_embedding_layer`, Gemma's `rope_layer`), which take `positions=`;
- `backbone.transformer_layers`, each holding one self-attention layer
  whose `_compute_attention(query, key, value, attention_mask, ...)`
  receives projected `[B, S, heads, head_dim]` tensors: Keras'
  `MultiHeadAttention` (BERT; GPT-2's `CachedMultiHeadAttention`),
  `LlamaAttention` (which has already repeated its kv heads) and
  `CachedGemmaAttention` (grouped, with an optional sliding window applied
  to the mask it receives).

`inspect(model)` finds all of it once and returns a `ModelStructure`; the
methods say what they need of it (`InjectionMethod.missing_structure`).

Example:
```python
structure = inspect(lm)
structure.dims  # ModelDims(vocab_size=..., hidden_dim=..., attention=(...))
```
"""

import dataclasses
import warnings

import keras
import keras_hub

from tf_softprompt.methods.base import AttentionDims, FrozenBase, ModelDims

# keras-hub versions whose internals this package was checked against. Another
# version gets a warning at enable time; tests/test_hub.py pins the installed
# one, so an upgrade is noticed.
TESTED_KERAS_HUB_VERSIONS = ("0.32",)
SEQUENCE_INPUTS = ("token_ids", "padding_mask", "segment_ids")


class UnsupportedModelError(ValueError):
    """The model does not have the keras-hub structure prompt tuning needs."""


class PromptPathError(ValueError):
    """A call path that cannot carry the prompt: it raises rather than run
    the model without it."""


def unsupported(model, reason):
    """An `UnsupportedModelError` naming the model's class and the reason."""
    return UnsupportedModelError(
        f"Prompt tuning does not support `{type(model).__name__}`: {reason} "
        "Supported are keras-hub backbones with a `token_embedding` layer and "
        "`token_ids`/`padding_mask`/`segment_ids` inputs (e.g. GPT2, Gemma, "
        "Llama, BERT) and the Tasks that wrap them."
    )


def check_keras_hub_version():
    """Warn when the installed keras-hub is not a tested version."""
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


def transformer_layers(model):
    """The transformer blocks of a keras-hub Backbone or Task, in order.

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


def _supported_attention_classes():
    from keras_hub.src.models.gemma.gemma_attention import CachedGemmaAttention
    from keras_hub.src.models.llama.llama_attention import LlamaAttention

    return (keras.layers.MultiHeadAttention, LlamaAttention, CachedGemmaAttention)


def _is_attention_like(layer):
    name = type(layer).__name__
    return hasattr(layer, "_compute_attention") or (
        "Attention" in name and not isinstance(layer, keras.layers.Softmax)
    )


def _find_attention(backbone):
    """`(layers, None)`, or `(None, reason)` when a block's self-attention
    is missing, unknown or not alone."""
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
            return None, (
                f"method='prefix' does not know the attention layer(s) "
                f"{others or ['(none found)']} of transformer layer {index} "
                f"(`{type(block).__name__}`). Supported attention layers: "
                f"{[c.__name__ for c in supported]}."
            )
        if len(candidates) > 1:
            return None, (
                f"transformer layer {index} (`{type(block).__name__}`) has "
                f"{len(candidates)} attention layers "
                f"({[layer.name for layer in candidates]}); method='prefix' "
                "handles one self-attention per layer (no cross-attention)."
            )
        found.append(candidates[0])
    return found, None


def attention_layers(backbone, model=None):
    """The one self-attention layer of each transformer block, in order.

    Raises:
        UnsupportedModelError: naming the class of an attention layer whose
            `_compute_attention` contract was not checked, or a block with
            no or several attention layers (e.g. cross-attention).
    """
    layers, reason = _find_attention(backbone)
    if reason is not None:
        raise unsupported(model or backbone, reason)
    return layers


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


@dataclasses.dataclass(frozen=True)
class ModelStructure:
    """The parts of a keras-hub model prompt tuning works with.

    Attributes:
        model: the Backbone or Task inspected.
        backbone: its backbone.
        task: the Task, or `None`.
        token_embedding: the backbone's token `Embedding`.
        position_embedding: its keras-hub `PositionEmbedding`, or `None`.
        segment_embedding: its segment `Embedding`, or `None`.
        sums_embeddings: whether the backbone sums token and position
            embeddings in a layer of its own (`embeddings_add`).
        rotary: tuple of every keras-hub `RotaryEmbedding` inside it.
        attention: tuple of the self-attention layers, one per transformer
            block; empty when `attention_problem` says why not.
        attention_problem: why the attention layers cannot take keys and
            values in front, or `None`.
        dims: the `ModelDims` (attention dims when `attention` is known).
        max_sequence_length: the position limit, or `None`.
        default_offset: where a prompt in the sequence goes by default: 1
            after BERT's [CLS] (read by its pooler), else 0.
        sliding_window: whether an attention applies a sliding window.
    """

    model: object
    backbone: object
    task: object
    token_embedding: object
    position_embedding: object
    segment_embedding: object
    sums_embeddings: bool
    rotary: tuple
    attention: tuple
    attention_problem: str
    dims: ModelDims
    max_sequence_length: int
    default_offset: int
    sliding_window: bool

    @property
    def shiftable_positions(self):
        """Whether the text's positions can start at a per-example offset."""
        return self.position_embedding is not None or bool(self.rotary)

    def attention_index(self, layer):
        """The index of a self-attention layer among `attention`."""
        for index, candidate in enumerate(self.attention):
            if candidate is layer:
                return index
        raise ValueError(f"{layer.name} is not a self-attention of this model.")


def _check_supported(model, backbone):
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


def inspect(model):
    """The `ModelStructure` of a keras-hub Backbone or Task.

    Raises:
        UnsupportedModelError: for a model without a token embedding and
            sequence inputs, or not on the TensorFlow backend.
    """
    backbone, task = split(model)
    _check_supported(model, backbone)
    position = getattr(backbone, "position_embedding", None)
    if not isinstance(position, keras_hub.layers.PositionEmbedding):
        position = None
    segment = getattr(backbone, "segment_embedding", None)
    rotary = tuple(
        layer
        for layer in backbone._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras_hub.layers.RotaryEmbedding)
    )
    embedding = backbone.token_embedding
    attention, dims, problem = (), (), None
    try:
        layers, problem = _find_attention(backbone)
        if layers is not None:
            dims = tuple(attention_dims(layer) for layer in layers)
            attention = tuple(layers)
    except (UnsupportedModelError, ValueError) as error:
        problem = str(error)
    outputs = backbone.output
    pooled = isinstance(outputs, dict) and "pooled_output" in outputs
    return ModelStructure(
        model=model,
        backbone=backbone,
        task=task,
        token_embedding=embedding,
        position_embedding=position,
        segment_embedding=segment,
        sums_embeddings=hasattr(backbone, "embeddings_add"),
        rotary=rotary,
        attention=attention,
        attention_problem=problem,
        dims=ModelDims(int(embedding.input_dim), int(embedding.output_dim), dims),
        max_sequence_length=getattr(backbone, "max_sequence_length", None),
        default_offset=1 if pooled else 0,
        sliding_window=any(
            getattr(layer, "use_sliding_window_attention", False) for layer in attention
        ),
    )


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


def check_method(structure, method):
    """Raise `UnsupportedModelError` unless `method` can run on the model."""
    problem = method.missing_structure(structure)
    if problem is not None:
        raise unsupported(structure.model, problem)


__all__ = [
    "TESTED_KERAS_HUB_VERSIONS",
    "ModelStructure",
    "PromptPathError",
    "UnsupportedModelError",
    "attention_dims",
    "attention_layers",
    "check_keras_hub_version",
    "check_method",
    "frozen_base",
    "inspect",
    "is_causal_lm",
    "is_hub_model",
    "split",
    "transformer_layers",
    "unsupported",
]
