"""Base models from Hugging Face checkpoint directories, computing what the
checkpoint's own implementation computes.

keras-hub converts Hugging Face directories (`from_preset(directory)`), but
where its converters drop a setting (BERT's exact GELU, its tokenizer's
accent stripping, Llama's norm epsilon, GPT-2's missing start token) the
converted model computes something else than transformers. This package
reads the checkpoint's files (`settings`), corrects what keras-hub gets
wrong (`keras_hub_fixes`, each correction saying what it corrects) and
refuses a setting keras-hub cannot express, naming it. `loading` is what
the CLI, the packaged model, `import-peft` and the Python API load through;
keras-hub presets load as keras-hub loads them.

Checked against transformers 5.23 and PEFT 0.21.2 on the packaged
all-MiniLM-L6-v2 and tiny GPT-2, Llama and Gemma checkpoints
(`tests/fixtures`, `tests/test_checkpoints.py`).

Example:
```python
from tf_softprompt import checkpoints

classifier = checkpoints.load_classifier("all-MiniLM-L6-v2/", num_classes=2)
preprocessor = checkpoints.load_classifier_preprocessor("all-MiniLM-L6-v2/", 64)
```
"""

from tf_softprompt.checkpoints.loading import (
    PresetError,
    causal_lm_class,
    check_causal_lm,
    checkpoint_of,
    default_pooling,
    load_backbone,
    load_causal_lm,
    load_causal_lm_preprocessor,
    load_classifier,
    load_classifier_preprocessor,
    resolve,
)
from tf_softprompt.checkpoints.settings import (
    CheckpointError,
    is_checkpoint_dir,
    read,
)

__all__ = [
    "CheckpointError",
    "PresetError",
    "causal_lm_class",
    "check_causal_lm",
    "checkpoint_of",
    "default_pooling",
    "is_checkpoint_dir",
    "load_backbone",
    "load_causal_lm",
    "load_causal_lm_preprocessor",
    "load_classifier",
    "load_classifier_preprocessor",
    "read",
    "resolve",
]
