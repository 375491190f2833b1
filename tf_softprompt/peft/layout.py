"""Where PEFT puts a prompt, reproduced: the prompt rows, a prefix's keys
and values, a SEQ_CLS head, the base they must fit (`check_base`), and the
placement and provenance a run records.

Example:
```python
handle = apply_adapter(adapter, model)  # prompt tuning with PEFT's layout
```
"""

import numpy as np

from tf_softprompt.peft.adapter import (
    HEAD_BIAS,
    HEAD_WEIGHT,
    PREFIX_TYPE,
    PROMPT_TENSOR,
    WEIGHTS_FILE,
)
from tf_softprompt.peft.checks import check_model, key_value_dims
from tf_softprompt.peft.errors import error


def _base_config(model):
    backbone = getattr(model, "backbone", model)
    return backbone, backbone.get_config()


def check_base(adapter, model):
    """Check the adapter's recorded dims against the keras-hub `model`.

    `token_dim`, `num_layers` and `num_attention_heads` (when recorded) must
    equal the base's hidden size, transformer layer count and attention
    heads, and `prompt_embeddings` must be `[num_virtual_tokens, H]`.

    Raises:
        PeftImportError: naming the field, its value and the base's.
    """
    from tf_softprompt import hub

    backbone, config = _base_config(model)
    hidden = int(backbone.token_embedding.output_dim)
    base = {
        "token_dim": hidden,
        "num_layers": len(hub.transformer_layers(backbone)),
        "num_attention_heads": config.get("num_heads", config.get("num_query_heads")),
    }
    if adapter.peft_type == PREFIX_TYPE:
        # PEFT records a grouped-query model's key/value width and heads.
        heads, head_dim = key_value_dims(backbone)
        base.update(token_dim=heads * head_dim, num_attention_heads=heads)
    name = type(backbone).__name__
    for field, value in base.items():
        recorded = adapter.config.get(field)
        if recorded is not None and value is not None and recorded != value:
            raise error(
                adapter.path,
                f"{field}={recorded!r}, but the base `{name}` has {field}={value}. "
                "The adapter was trained on another base model "
                f"(base_model_name_or_path="
                f"{adapter.config.get('base_model_name_or_path')!r}); pass that "
                "model as --model.",
            )
    if adapter.peft_type == PREFIX_TYPE:
        prefix_values(adapter, base["num_layers"], heads, head_dim)  # shape check
        return
    prompt = adapter.tensors[PROMPT_TENSOR]
    expected = (int(adapter.num_virtual_tokens), hidden)
    if prompt.shape != expected:
        raise error(
            adapter.path,
            f"tensor {PROMPT_TENSOR!r} has shape {list(prompt.shape)}, but "
            f"num_virtual_tokens={adapter.num_virtual_tokens} and the base's "
            f"hidden size {hidden} need {list(expected)}.",
        )


def classifier_head(adapter, hidden_dim):
    """`(kernel [H, C], bias [C])` from PEFT's torch-layout BERT head."""
    weight = adapter.tensors[HEAD_WEIGHT]
    bias = adapter.tensors[HEAD_BIAS]
    if weight.ndim != 2 or weight.shape[1] != hidden_dim:
        raise error(
            adapter.path,
            f"tensor {HEAD_WEIGHT!r} has shape {list(weight.shape)}; a classifier "
            f"over hidden size {hidden_dim} is [num_labels, {hidden_dim}].",
        )
    if bias.shape != (weight.shape[0],):
        raise error(
            adapter.path,
            f"tensor {HEAD_BIAS!r} has shape {list(bias.shape)}, but "
            f"{HEAD_WEIGHT!r} has {weight.shape[0]} labels.",
        )
    return weight.T.copy(), bias.copy()


def prefix_values(adapter, num_layers, num_heads, head_dim):
    """A PREFIX_TUNING adapter's keys and values in `method="prefix"` layout.

    PEFT's `get_prompt` views `prompt_embeddings` `[P, L * 2 * token_dim]`
    as `[P, L * 2, heads, head_dim]`, permutes it to `[L * 2, heads, P,
    head_dim]` and splits it in pairs: layer i's keys are row block `2i`,
    its values `2i + 1`. (Llama's grouped-query attention: PEFT records
    `token_dim = kv_heads * head_dim` and `num_attention_heads = kv_heads`.)

    Args:
        adapter: a PREFIX_TUNING `PeftAdapter`.
        num_layers, num_heads, head_dim: the base's self-attention layers,
            key/value heads and head size.

    Returns:
        float32 `[L, 2, P, heads, head_dim]` (index 0 keys, 1 values).
    """
    prompt = adapter.tensors[PROMPT_TENSOR]
    num_tokens = int(adapter.num_virtual_tokens)
    width = num_layers * 2 * num_heads * head_dim
    if prompt.shape != (num_tokens, width):
        raise error(
            adapter.path,
            f"tensor {PROMPT_TENSOR!r} has shape {list(prompt.shape)}, but a prefix "
            f"of num_virtual_tokens={num_tokens} over {num_layers} layers x 2 x "
            f"{num_heads} heads x {head_dim} needs {[num_tokens, width]}.",
        )
    values = prompt.reshape(num_tokens, num_layers, 2, num_heads, head_dim)
    return np.ascontiguousarray(values.transpose(1, 2, 0, 3, 4))


def source_record(adapter):
    keys = ("peft_type", "task_type", "peft_version", "base_model_name_or_path")
    return {
        "kind": "peft",
        "adapter_dir": adapter.path,
        **{k: adapter.config.get(k) for k in keys},
        "revision": adapter.config.get("revision"),
        "num_virtual_tokens": int(adapter.num_virtual_tokens),
        "sha256": adapter.sha256,
        "tensors": {
            name: {"shape": list(a.shape), "dtype": adapter.dtypes[name]}
            for name, a in sorted(adapter.tensors.items())
        },
    }


def placement(peft_type, task_type, num_tokens):
    if peft_type == PREFIX_TYPE:
        return {
            "method": "past_prefix",
            "prefix_positions": [0, num_tokens - 1],
            "text_positions_start": num_tokens,
            "follows": (
                "PEFT: prompt_embeddings viewed as per-layer past_key_values "
                "(keys block 2i, values 2i+1), text at positions P..P+T-1"
            ),
        }
    placement = {
        "method": "embedding",
        "offset": 0,
        "prompt_positions": [0, num_tokens - 1],
        "text_positions_start": num_tokens,
        "follows": (
            "PEFT: prompt_embeddings concatenated before the token embeddings "
            "(inputs_embeds), positions 0..P+T-1"
        ),
    }
    if task_type == "SEQ_CLS":
        placement["prompt_segment_id"] = 0
        placement["pooled_token"] = "virtual token 0 (before [CLS])"
    return placement


def apply_adapter(adapter, model, description=None):
    """Enable prompt tuning on `model` with the adapter's prompt (and head).

    PEFT's layout: a prompt goes at offset 0 with `method="embedding"`, a
    prefix is a `method="past_prefix"` (the text after its P positions); a
    SEQ_CLS adapter's head is copied (transposed) into the classifier's
    `output_dense`.

    Args:
        adapter: a checked `PeftAdapter` (`check_config`).
        model: the keras-hub `BertTextClassifier` (SEQ_CLS) or `CausalLM`.
        description: the artifact's initializer string.

    Returns:
        The `PromptTuning` handle.
    """
    from tf_softprompt import hub, initializers

    check_model(adapter, model)
    check_base(adapter, model)
    prompt = adapter.tensors[PROMPT_TENSOR]
    method, offset = "embedding", 0
    if adapter.peft_type == PREFIX_TYPE:
        heads, head_dim = key_value_dims(model.backbone)
        num_layers = len(hub.transformer_layers(model.backbone))
        prompt = prefix_values(adapter, num_layers, heads, head_dim)
        method, offset = "past_prefix", None
    initializer = initializers.from_array(
        prompt,
        description=description
        or f"peft:{adapter.peft_type} {WEIGHTS_FILE}:{PROMPT_TENSOR}",
    )
    head = None
    if adapter.task_type == "SEQ_CLS":
        hidden = int(model.backbone.token_embedding.output_dim)
        head = classifier_head(adapter, hidden)
    handle = hub.enable_prompt_tuning(
        model,
        int(adapter.num_virtual_tokens),
        method=method,
        offset=offset,
        initializer=initializer,
    )
    if head is not None:
        kernel, bias = hub.classifier_head(model)
        kernel.assign(head[0])
        bias.assign(head[1])
    return handle


__all__ = [
    "apply_adapter",
    "check_base",
    "classifier_head",
    "placement",
    "prefix_values",
    "source_record",
]
