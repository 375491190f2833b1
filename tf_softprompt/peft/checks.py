"""What an adapter must be to import exactly: its config on its own, its
tensors, and the base model it was trained on.

Each check raises `PeftImportError` naming the field or tensor, its value,
and the way out.

Example:
```python
peft_type, task_type, num_tokens = check_config(adapter)
check_model(adapter, model)
check_base(adapter, model)
```
"""

from tf_softprompt.peft.adapter import (
    CONFIG_FILE,
    HEAD_BIAS,
    HEAD_WEIGHT,
    PREFIX_TYPE,
    PROMPT_TENSOR,
    PROMPT_TYPES,
    TASK_TYPES,
    WEIGHTS_FILE,
)
from tf_softprompt.peft.errors import PeftImportError, error

# keras-hub CausalLMs whose HF peers treat `inputs_embeds` as keras-hub
# treats token embeddings (GPT-2: plus learned positions; Llama: RoPE inside
# attention, no scaling), and whether their HF tokenizer adds a start token
# (GPT-2's does not, so the served text gets none either). Not Gemma: recent
# transformers (5.23 read) scale by sqrt(H) inside the token embedding, so
# PEFT's prompt rows go in unscaled, while keras-hub (and older transformers)
# scale every row; an adapter does not record which one it was trained with.
CAUSAL_LMS = {"GPT2CausalLM": False, "LlamaCausalLM": True}


def _positive_int(adapter, field, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise error(
            adapter.path,
            f"{CONFIG_FILE} has {field}={value!r}; it must be a positive integer.",
        )
    return value


def check_config(adapter):
    """Check the adapter's config on its own (no base model needed).

    Returns:
        `(peft_type, task_type, P)`.

    Raises:
        PeftImportError: naming the field and value that cannot be imported.
    """
    config = adapter.config
    peft_type = config.get("peft_type")
    if peft_type not in (*PROMPT_TYPES, PREFIX_TYPE):
        hint = ""
        if isinstance(peft_type, str) and "LORA" in peft_type.upper():
            hint = (
                " LoRA changes the base model's weights; merge it into the base "
                "(`merge_and_unload()`), convert the merged model, and use it as "
                "--model instead."
            )
        raise error(
            adapter.path,
            f"peft_type={peft_type!r} is not supported. Supported: "
            f"{', '.join(PROMPT_TYPES)} (soft prompts in the input embeddings) "
            f"and {PREFIX_TYPE} (CAUSAL_LM)." + hint,
        )
    task_type = config.get("task_type")
    if task_type not in TASK_TYPES:
        raise error(
            adapter.path,
            f"task_type={task_type!r} is not supported. Supported: SEQ_CLS "
            "(a BERT classifier) and CAUSAL_LM.",
        )
    if peft_type == PREFIX_TYPE and task_type != "CAUSAL_LM":
        raise error(
            adapter.path,
            f"peft_type={PREFIX_TYPE!r} with task_type={task_type!r} is not "
            "supported: PEFT's prefix tuning runs only on models that take past "
            "key values (it fails on BertForSequenceClassification with 'Model "
            "does not support past key values'), so only CAUSAL_LM prefix "
            "adapters are imported.",
        )
    submodules = config.get("num_transformer_submodules")
    if submodules is None:
        submodules = 1  # PEFT's default for every task type but SEQ_2_SEQ_LM
    if submodules != 1:
        raise error(
            adapter.path,
            f"num_transformer_submodules={submodules!r}: the prompt has one part "
            "per transformer stack (2 = encoder-decoder); only decoder-only and "
            "encoder-only models (1) are supported.",
        )
    num_tokens = _positive_int(
        adapter, "num_virtual_tokens", config.get("num_virtual_tokens")
    )
    _check_tensor_names(adapter, peft_type, task_type)
    return peft_type, task_type, num_tokens


def _check_tensor_names(adapter, peft_type, task_type):
    expected = {PROMPT_TENSOR}
    if task_type == "SEQ_CLS":
        expected |= {HEAD_WEIGHT, HEAD_BIAS}
    names = set(adapter.tensors)
    missing = sorted(expected - names)
    extra = sorted(names - expected)
    if missing:
        hint = ""
        if any(n.startswith("base_model.score.") for n in names):
            hint = (
                " The head is `score` (a decoder's last-token classifier, e.g. "
                "GPT-2 or Llama for sequence classification), which has no "
                "keras-hub task; SEQ_CLS imports BERT-style classifiers "
                "(pooler -> `classifier`)."
            )
        elif any(n.startswith("base_model.classifier.") for n in names):
            hint = (
                " The head has other parts (e.g. RoBERTa's classifier.dense and "
                "classifier.out_proj); SEQ_CLS imports BERT's single linear "
                "`classifier`."
            )
        raise error(
            adapter.path,
            f"{WEIGHTS_FILE} is missing the tensor(s) {missing} that a "
            f"{peft_type} {task_type} adapter holds. Tensors found: "
            f"{sorted(names)}." + hint,
        )
    if extra:
        hint = ""
        if any(("mlp_head" in n) or ("lstm_head" in n) for n in extra):
            hint = (
                " They are P-tuning's prompt encoder: PEFT saves the encoder's "
                "output as prompt_embeddings and never needs the encoder at "
                "inference; save the adapter with PEFT's save_pretrained, which "
                "keeps only prompt_embeddings."
            )
        elif any("lora_" in n for n in extra):
            hint = " They are LoRA weights, which change the base model."
        raise error(
            adapter.path,
            f"{WEIGHTS_FILE} has tensor(s) {extra} beyond what a {peft_type} "
            f"{task_type} adapter holds ({sorted(expected)}); importing only part "
            "of an adapter would not reproduce its outputs (e.g. extra "
            "`modules_to_save`)." + hint,
        )


def key_value_dims(backbone):
    """`(kv_heads, head_dim)` of the base's self-attention layers."""
    from tf_softprompt import hub, methods

    prefix = methods.get("past_prefix")
    shape = prefix.prompt_shape(hub.inspection.inspect(backbone).dims, 1)
    return shape[3], shape[4]


def causal_lm_kind(model):
    """The `CAUSAL_LMS` name `model` is an instance of, or `None`."""
    import keras_hub

    for name in CAUSAL_LMS:
        if isinstance(model, getattr(keras_hub.models, name)):
            return name
    return None


def check_model(adapter, model):
    """Refuse a keras-hub model whose forward is not PEFT's peer for the task.

    SEQ_CLS needs a BERT classifier reading the pooler (pooler -> linear
    `classifier`, as `BertForSequenceClassification`); CAUSAL_LM one of
    `CAUSAL_LMS` (or a subclass, e.g. `Llama3CausalLM`).
    """
    import keras_hub

    name = type(model).__name__
    if adapter.task_type == "SEQ_CLS":
        backbone = getattr(model, "backbone", None)
        pooling = getattr(getattr(model, "pooling", None), "mode", "pooler")
        is_bert = isinstance(backbone, keras_hub.models.BertBackbone)
        if not is_bert or pooling != "pooler":
            raise PeftImportError(
                "task_type='SEQ_CLS' adapters import into BERT classifiers "
                "(pooler -> `classifier`, as BertForSequenceClassification); the "
                f"base model is a `{name}`."
            )
    elif causal_lm_kind(model) is None:
        reason = ""
        if "Gemma" in name:
            reason = (
                " Gemma is refused because recent transformers scale by sqrt(H) "
                "inside the token embedding, so PEFT's prompt rows go in unscaled, "
                "while older releases (and keras-hub) scale every row, and an "
                "adapter does not record which it was trained with."
            )
        raise PeftImportError(
            f"task_type='CAUSAL_LM' adapters import into {sorted(CAUSAL_LMS)}; the "
            f"base model is a `{name}`." + reason
        )


__all__ = [
    "CAUSAL_LMS",
    "causal_lm_kind",
    "check_config",
    "check_model",
    "key_value_dims",
]
