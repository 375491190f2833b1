"""Import Hugging Face PEFT prompt adapters as tf-softprompt run directories.

A PEFT adapter directory holds `adapter_config.json` and
`adapter_model.safetensors`. `import_peft` reads it without PyTorch, places
the prompt exactly where PEFT puts it, and writes one of our run
directories (`tf_softprompt.training.run_dir`), which `tf-softprompt
export` then bakes into a TF Serving SavedModel.

PEFT's layout, reproduced (peft 0.21.2, `PeftModelForSequenceClassification`
and `PeftModelForCausalLM.forward`):

- **PROMPT_TUNING** and **P_TUNING**: `prompt_embeddings` `[P, token_dim]`
  is concatenated in front of the token embeddings (`inputs_embeds`), at
  offset 0: before BERT's `[CLS]` and before any BOS token. The prompt rows
  take positions `0..P-1` and the text `P..P+T-1`; BERT's token type
  (segment) of the prompt rows is 0, and BERT's pooler reads the first
  virtual token, not `[CLS]`. This is `tf_softprompt.hub` with
  `method="embedding"` and `offset=0`, which the import records.
- **SEQ_CLS** head (BERT): `base_model.classifier.weight` `[C, H]` (torch's
  `[out, in]` layout) and `.bias` `[C]`, applied to the pooled output; it
  becomes the keras-hub `output_dense` kernel `[H, C]` (transposed).
- **P_TUNING**: PEFT saves the prompt encoder's *output* (the MLP or LSTM
  is applied before saving, and PEFT's own inference never runs it again),
  so a P-tuning adapter imports as a plain prompt with exactly PEFT's
  inference outputs. A saved state that still holds encoder weights is
  refused.
- **PREFIX_TUNING** (CAUSAL_LM): `prompt_embeddings` `[P, L * 2 *
  token_dim]` (the collapsed output when `prefix_projection` was on); row
  block `2i` of layer i is its keys and `2i + 1` its values, head-major
  (`prefix_values`). PEFT passes them as `past_key_values`, so the text runs
  at positions `P..P+T-1` after them: `method="past_prefix"`, which the
  import records. PEFT's prefix tuning fails on BERT classifiers ("Model
  does not support past key values"), so a SEQ_CLS prefix adapter is
  refused.

Outputs equal PEFT's for right-padded batches (what tokenizers and the
exporter produce). PEFT's positions are a plain `arange` that ignores
padding, so PEFT itself gives other results for left-padded rows; ours
gives every row its unpadded result.

Refused with `PeftImportError` (a `ValueError`) naming the field or tensor
and its value: a `peft_type` other than PROMPT_TUNING / P_TUNING /
PREFIX_TUNING (CAUSAL_LM only), a
`task_type` other than SEQ_CLS (BERT) / CAUSAL_LM (GPT-2, Llama; see
`CAUSAL_LMS` for why not Gemma), `num_transformer_submodules` 2
(encoder-decoder), `token_dim`, `num_layers` or `num_attention_heads` that
differ from the base, a missing or extra tensor, a wrong shape, and NaN or
Inf values.

Example:
```python
from tf_softprompt import peft

run = peft.import_peft("my-bert-adapter", "hf://google-bert/bert-base-uncased",
                       "runs/from_peft", labels=["negative", "positive"])
# then: tf-softprompt export runs/from_peft --out models/demo --version 1
```
"""

import dataclasses
import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile

import numpy as np

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
TORCH_WEIGHTS_FILE = "adapter_model.bin"
PROMPT_TENSOR = "prompt_embeddings"
HEAD_WEIGHT = "base_model.classifier.weight"
HEAD_BIAS = "base_model.classifier.bias"

PROMPT_TYPES = ("PROMPT_TUNING", "P_TUNING")
PREFIX_TYPE = "PREFIX_TUNING"
TASK_TYPES = ("SEQ_CLS", "CAUSAL_LM")
# keras-hub CausalLMs whose HF peers treat `inputs_embeds` as keras-hub
# treats token embeddings (GPT-2: plus learned positions; Llama: RoPE inside
# attention, no scaling), and whether their HF tokenizer adds a start token
# (GPT-2's does not, so the served text gets none either). Not Gemma: recent
# transformers (5.23 read) scale by sqrt(H) inside the token embedding, so
# PEFT's prompt rows go in unscaled, while keras-hub (and older transformers)
# scale every row; an adapter does not record which one it was trained with.
CAUSAL_LMS = {"GPT2CausalLM": False, "LlamaCausalLM": True}
DEFAULT_SEQUENCE_LENGTH = 128

_FLOAT_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64}


class PeftImportError(ValueError):
    """A PEFT adapter that cannot be imported exactly (names what and why)."""


@dataclasses.dataclass
class PeftAdapter:
    """A PEFT adapter directory, read without PyTorch.

    Attributes:
        path: the absolute directory.
        config: the `adapter_config.json` dict (unknown keys kept, ignored).
        tensors: `{name: float32 array}` from `adapter_model.safetensors`.
        dtypes: `{name: safetensors dtype}` as saved (`"F32"`, `"BF16"`, ...).
        sha256: the SHA-256 of the safetensors file.
    """

    path: str
    config: dict
    tensors: dict
    dtypes: dict
    sha256: str

    @property
    def peft_type(self):
        return self.config.get("peft_type")

    @property
    def task_type(self):
        return self.config.get("task_type")

    @property
    def num_virtual_tokens(self):
        return self.config.get("num_virtual_tokens")


def _error(adapter_dir, message):
    return PeftImportError(f"PEFT adapter {adapter_dir}: {message}")


def _read_safetensors(path):
    """`({name: float32 array}, {name: dtype}, metadata)` of a safetensors file.

    Parsed directly (an 8-byte header length, a JSON header, the raw
    little-endian data), so BF16 tensors need no framework either.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])
    except (struct.error, ValueError) as e:
        raise PeftImportError(
            f"{path} is not a safetensors file ({e}). Save the adapter with "
            "`model.save_pretrained(dir)` (safe_serialization=True, the default)."
        ) from None
    body = data[8 + length :]
    metadata = header.pop("__metadata__", None) or {}
    tensors, dtypes = {}, {}
    for name, entry in header.items():
        dtype, shape = entry["dtype"], tuple(entry["shape"])
        start, end = entry["data_offsets"]
        raw = body[start:end]
        if dtype == "BF16":
            bits = np.frombuffer(raw, "<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif dtype in _FLOAT_DTYPES:
            array = np.frombuffer(raw, np.dtype(_FLOAT_DTYPES[dtype]).newbyteorder("<"))
        else:
            raise PeftImportError(
                f"{path}: tensor {name!r} has dtype {dtype}; a prompt adapter's "
                "tensors are floating point (F16, BF16, F32 or F64)."
            )
        tensors[name] = array.reshape(shape).astype(np.float32)
        dtypes[name] = dtype
    return tensors, dtypes, metadata


def read_adapter(adapter_dir):
    """Read a PEFT adapter directory (config and tensors) without PyTorch.

    Args:
        adapter_dir: a directory written by PEFT's `save_pretrained` (for a
            named adapter other than "default", its subdirectory).

    Returns:
        A `PeftAdapter`.

    Raises:
        FileNotFoundError: if the directory or its files are missing.
        PeftImportError: for unreadable files, or NaN/Inf values.

    Example:
    ```python
    adapter = read_adapter("my-adapter")
    adapter.config["peft_type"], adapter.tensors["prompt_embeddings"].shape
    ```
    """
    adapter_dir = os.path.abspath(os.fspath(adapter_dir))
    config_path = os.path.join(adapter_dir, CONFIG_FILE)
    weights_path = os.path.join(adapter_dir, WEIGHTS_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"{config_path} does not exist. Pass the directory PEFT's "
            "`save_pretrained` wrote (it holds adapter_config.json and "
            "adapter_model.safetensors)."
        )
    if not os.path.isfile(weights_path):
        if os.path.isfile(os.path.join(adapter_dir, TORCH_WEIGHTS_FILE)):
            raise PeftImportError(
                f"{adapter_dir} holds {TORCH_WEIGHTS_FILE} (a PyTorch pickle), "
                f"not {WEIGHTS_FILE}. Re-save it with PEFT's "
                "`model.save_pretrained(dir, safe_serialization=True)`; tf-softprompt "
                "reads safetensors only (no PyTorch)."
            )
        raise FileNotFoundError(
            f"{weights_path} does not exist. Pass the directory PEFT's "
            "`save_pretrained` wrote."
        )
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except ValueError as e:
        raise _error(adapter_dir, f"{CONFIG_FILE} is not valid JSON ({e}).") from None
    if not isinstance(config, dict):
        raise _error(adapter_dir, f"{CONFIG_FILE} must hold a JSON object.")
    tensors, dtypes, _ = _read_safetensors(weights_path)
    for name, array in tensors.items():
        bad = int(np.size(array) - np.isfinite(array).sum())
        if bad:
            raise _error(
                adapter_dir,
                f"tensor {name!r} has {bad} NaN or Inf values; an adapter "
                "that diverged in training cannot be served.",
            )
    with open(weights_path, "rb") as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()
    return PeftAdapter(adapter_dir, config, tensors, dtypes, sha256)


def _positive_int(adapter, field, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _error(
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
        raise _error(
            adapter.path,
            f"peft_type={peft_type!r} is not supported. Supported: "
            f"{', '.join(PROMPT_TYPES)} (soft prompts in the input embeddings) "
            f"and {PREFIX_TYPE} (CAUSAL_LM)." + hint,
        )
    task_type = config.get("task_type")
    if task_type not in TASK_TYPES:
        raise _error(
            adapter.path,
            f"task_type={task_type!r} is not supported. Supported: SEQ_CLS "
            "(a BERT classifier) and CAUSAL_LM.",
        )
    if peft_type == PREFIX_TYPE and task_type != "CAUSAL_LM":
        raise _error(
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
        raise _error(
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
        raise _error(
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
        raise _error(
            adapter.path,
            f"{WEIGHTS_FILE} has tensor(s) {extra} beyond what a {peft_type} "
            f"{task_type} adapter holds ({sorted(expected)}); importing only part "
            "of an adapter would not reproduce its outputs (e.g. extra "
            "`modules_to_save`)." + hint,
        )


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
        heads, head_dim = _key_value_dims(backbone)
        base.update(token_dim=heads * head_dim, num_attention_heads=heads)
    name = type(backbone).__name__
    for field, value in base.items():
        recorded = adapter.config.get(field)
        if recorded is not None and value is not None and recorded != value:
            raise _error(
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
        raise _error(
            adapter.path,
            f"tensor {PROMPT_TENSOR!r} has shape {list(prompt.shape)}, but "
            f"num_virtual_tokens={adapter.num_virtual_tokens} and the base's "
            f"hidden size {hidden} need {list(expected)}.",
        )


def _key_value_dims(backbone):
    """`(kv_heads, head_dim)` of the base's self-attention layers."""
    from tf_softprompt import hub, methods

    prefix = methods.get("past_prefix")
    shape = prefix.prompt_shape(hub.inspection.inspect(backbone).dims, 1)
    return shape[3], shape[4]


def classifier_head(adapter, hidden_dim):
    """`(kernel [H, C], bias [C])` from PEFT's torch-layout BERT head."""
    weight = adapter.tensors[HEAD_WEIGHT]
    bias = adapter.tensors[HEAD_BIAS]
    if weight.ndim != 2 or weight.shape[1] != hidden_dim:
        raise _error(
            adapter.path,
            f"tensor {HEAD_WEIGHT!r} has shape {list(weight.shape)}; a classifier "
            f"over hidden size {hidden_dim} is [num_labels, {hidden_dim}].",
        )
    if bias.shape != (weight.shape[0],):
        raise _error(
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
        raise _error(
            adapter.path,
            f"tensor {PROMPT_TENSOR!r} has shape {list(prompt.shape)}, but a prefix "
            f"of num_virtual_tokens={num_tokens} over {num_layers} layers x 2 x "
            f"{num_heads} heads x {head_dim} needs {[num_tokens, width]}.",
        )
    values = prompt.reshape(num_tokens, num_layers, 2, num_heads, head_dim)
    return np.ascontiguousarray(values.transpose(1, 2, 0, 3, 4))


def _load_causal_lm(model_path):
    from tf_softprompt import checkpoints

    backbone = checkpoints.load_backbone(model_path)
    return checkpoints.causal_lm_class(backbone)(backbone=backbone, preprocessor=None)


def _load_classifier(adapter, model_path):
    from tf_softprompt.training import models

    # PEFT's SEQ_CLS head reads BERT's pooler, whatever the checkpoint's
    # sentence-transformers pooling says.
    return models.load_classifier(
        model_path, int(adapter.tensors[HEAD_WEIGHT].shape[0]), pooling="pooler"
    )


def _causal_lm_kind(model):
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
    elif _causal_lm_kind(model) is None:
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


def _sequence_length(model, sequence_length, num_tokens):
    backbone = getattr(model, "backbone", model)
    limit = backbone.get_config().get("max_sequence_length")
    if sequence_length is None:
        sequence_length = DEFAULT_SEQUENCE_LENGTH
        if limit is not None:
            sequence_length = min(sequence_length, int(limit) - num_tokens)
    if isinstance(sequence_length, bool) or not isinstance(sequence_length, int):
        raise ValueError(
            f"`sequence_length` must be a positive integer. Received: "
            f"sequence_length={sequence_length!r}."
        )
    if sequence_length < 2 or (
        limit is not None and sequence_length + num_tokens > int(limit)
    ):
        raise ValueError(
            f"sequence_length={sequence_length} text positions plus the "
            f"{num_tokens} prompt positions must fit the base's "
            f"max_sequence_length={limit} (and be at least 2). Pass "
            f"--sequence-length {int(limit) - num_tokens if limit else 128} or less."
        )
    return sequence_length


def _source(adapter):
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


def _placement(peft_type, task_type, num_tokens):
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
        heads, head_dim = _key_value_dims(model.backbone)
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


def _check_new_directory(out):
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise FileExistsError(
            f"{out} already exists and is not empty. Pass a new --out directory."
        )


def _write_run(out, write):
    """Write a new run directory through a temporary sibling, then rename."""
    _check_new_directory(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-import-")
    try:
        write(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def import_peft(
    adapter_dir, model, out, *, labels=None, sequence_length=None, task=None
):
    """Convert a PEFT prompt adapter into a tf-softprompt run directory.

    Args:
        adapter_dir: the PEFT adapter directory (`adapter_config.json`,
            `adapter_model.safetensors`).
        model: the base model the adapter was trained on, as a keras-hub
            preset name or directory (a Hugging Face model directory or
            `hf://` handle loads through keras-hub's converters).
        out: the new run directory (must not exist, or be empty).
        labels: SEQ_CLS only: the class names, one per row of the head
            (default `LABEL_0`, `LABEL_1`, ..., as transformers names them).
        sequence_length: text positions (for a causal LM: input text plus
            generated tokens); the P prompt positions come on top. Default:
            128, or what the base's position limit leaves.
        task: the task name in the artifact (the exporter's task name);
            default the adapter directory's name.

    Returns:
        The run record (`run.json`) dict.

    Raises:
        PeftImportError: for adapters that cannot be reproduced exactly
            (see the module docstring).
        FileExistsError: if `out` holds files.

    Example:
    ```python
    import_peft("adapters/sst2", "models/bert-base-uncased", "runs/sst2",
                labels=["negative", "positive"])
    ```
    """
    from tf_softprompt.training import models, run_dir

    adapter = read_adapter(adapter_dir)
    peft_type, task_type, num_tokens = check_config(adapter)
    model_path = models.resolve_model(model)
    out_path = os.path.abspath(os.fspath(out))
    _check_new_directory(out_path)  # before the (slow) model load
    if task_type == "SEQ_CLS":
        classes = int(adapter.tensors[HEAD_WEIGHT].shape[0])
        if labels is None:
            labels = [f"LABEL_{i}" for i in range(classes)]
        labels = [str(name) for name in labels]
        if len(labels) != classes:
            raise ValueError(
                f"The adapter's head has {classes} labels "
                f"({HEAD_WEIGHT} is [{classes}, H]); received {len(labels)} label "
                f"names {labels}."
            )
        keras_model = _load_classifier(adapter, model_path)
    else:
        if labels is not None:
            raise ValueError("`labels` is for SEQ_CLS adapters; this is CAUSAL_LM.")
        keras_model = _load_causal_lm(model_path)
    sequence_length = _sequence_length(keras_model, sequence_length, num_tokens)
    handle = apply_adapter(adapter, keras_model)
    task = task or os.path.basename(adapter.path.rstrip(os.sep)) or "default"
    backbone = keras_model.backbone
    record = {
        "format": run_dir.RUN_FORMAT,
        "model": model,
        "model_path": model_path,
        "task_class": type(keras_model).__name__,
        "backbone_class": type(backbone).__name__,
        "sequence_length": sequence_length,
        "method": handle.method.name,
        "prompt_length": num_tokens,
        "offset": handle.offset,
        "reparameterize": None,
        "init": "peft",
        "prompt": run_dir.PROMPT_FILE,
        "data": f"peft:{adapter.path}",
        "precision": "float32",
        "source": _source(adapter),
        "placement": _placement(peft_type, task_type, num_tokens),
    }
    if task_type == "SEQ_CLS":
        head = run_dir.head_variables(keras_model, handle)
        record.update(
            labels=labels,
            num_classes=len(labels),
            head=run_dir.HEAD_FILE,
            head_variables=[v.path for v in head],
            text_column="text",
            label_column="label",
            dropout=None,
        )
    else:
        record.update(
            kind=run_dir.CAUSAL_LM_KIND,
            preprocessor={"add_start_token": CAUSAL_LMS[_causal_lm_kind(keras_model)]},
        )

    def write(directory):
        handle.save_prompt(
            os.path.join(directory, run_dir.PROMPT_FILE),
            task=task,
            source="peft",
            peft_type=peft_type,
        )
        if task_type == "SEQ_CLS":
            run_dir.save_head(os.path.join(directory, run_dir.HEAD_FILE), head)
        run_dir.write_json(os.path.join(directory, run_dir.RUN_FILE), record)

    _write_run(out_path, write)
    return record


# --- the `tf-softprompt import-peft` subcommand --------------------------------


def add_import_parser(subparsers):
    """Register `import-peft` on the `tf-softprompt` subparsers."""
    parser = subparsers.add_parser(
        "import-peft",
        help="convert a PEFT prompt or prefix adapter into a run directory",
        description=(
            "Read a PEFT PROMPT_TUNING or P_TUNING adapter (SEQ_CLS on BERT, or "
            "CAUSAL_LM) or a PREFIX_TUNING adapter (CAUSAL_LM) from its "
            "adapter_config.json and adapter_model.safetensors, without PyTorch, "
            "and write a run directory with PEFT's exact layout (a prompt before "
            "[CLS]/BOS at offset 0; a prefix as past keys/values, the text at "
            "positions P..) that `tf-softprompt export` serves."
        ),
    )
    parser.add_argument("adapter_dir", metavar="ADAPTER_DIR")
    parser.add_argument(
        "--model",
        required=True,
        help="the base model: keras-hub preset, or a (Hugging Face) model directory",
    )
    parser.add_argument("--out", required=True, help="the new run directory")
    parser.add_argument(
        "--label",
        action="append",
        default=None,
        help="SEQ_CLS: class name, once per class in order (default LABEL_0, ...)",
    )
    parser.add_argument(
        "--sequence-length",
        type=int,
        default=None,
        help="text positions, prompt excluded (default 128, or what the base allows)",
    )
    parser.add_argument(
        "--task", default=None, help="task name (default: the adapter's directory)"
    )
    parser.set_defaults(func=run_import)


def run_import(args):
    try:
        record = import_peft(
            args.adapter_dir,
            args.model,
            args.out,
            labels=args.label,
            sequence_length=args.sequence_length,
            task=args.task,
        )
    except FileExistsError as e:
        print(f"tf-softprompt import-peft: error: {e}", file=sys.stderr)
        return 2
    summary = {
        "imported": os.path.abspath(args.out),
        "peft_type": record["source"]["peft_type"],
        "task_type": record["source"]["task_type"],
        "prompt_length": record["prompt_length"],
        "method": record["method"],
        "offset": record["offset"],
        "sequence_length": record["sequence_length"],
    }
    print(json.dumps(summary, sort_keys=True))
    return 0
