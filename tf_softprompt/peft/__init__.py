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

from tf_softprompt.peft.adapter import (
    CONFIG_FILE,
    HEAD_BIAS,
    HEAD_WEIGHT,
    PREFIX_TYPE,
    PROMPT_TENSOR,
    PROMPT_TYPES,
    TASK_TYPES,
    TORCH_WEIGHTS_FILE,
    WEIGHTS_FILE,
    PeftAdapter,
    read_adapter,
)
from tf_softprompt.peft.checks import CAUSAL_LMS, check_config, check_model
from tf_softprompt.peft.cli import add_import_parser
from tf_softprompt.peft.errors import PeftImportError
from tf_softprompt.peft.importer import import_peft
from tf_softprompt.peft.layout import (
    apply_adapter,
    check_base,
    classifier_head,
    prefix_values,
)

__all__ = [
    "CAUSAL_LMS",
    "CONFIG_FILE",
    "HEAD_BIAS",
    "HEAD_WEIGHT",
    "PREFIX_TYPE",
    "PROMPT_TENSOR",
    "PROMPT_TYPES",
    "PeftAdapter",
    "PeftImportError",
    "TASK_TYPES",
    "TORCH_WEIGHTS_FILE",
    "WEIGHTS_FILE",
    "add_import_parser",
    "apply_adapter",
    "check_base",
    "check_config",
    "check_model",
    "classifier_head",
    "import_peft",
    "prefix_values",
    "read_adapter",
]
