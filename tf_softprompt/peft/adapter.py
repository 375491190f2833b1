"""A PEFT adapter directory, read without PyTorch.

Example:
```python
adapter = read_adapter("my-adapter")
adapter.config["peft_type"], adapter.tensors["prompt_embeddings"].shape
```
"""

import dataclasses
import hashlib
import json
import os

import numpy as np

from tf_softprompt.peft.errors import PeftImportError, error
from tf_softprompt.peft.safetensors_reader import read_safetensors

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
TORCH_WEIGHTS_FILE = "adapter_model.bin"
PROMPT_TENSOR = "prompt_embeddings"
HEAD_WEIGHT = "base_model.classifier.weight"
HEAD_BIAS = "base_model.classifier.bias"

PROMPT_TYPES = ("PROMPT_TUNING", "P_TUNING")
PREFIX_TYPE = "PREFIX_TUNING"
TASK_TYPES = ("SEQ_CLS", "CAUSAL_LM")


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
        raise error(adapter_dir, f"{CONFIG_FILE} is not valid JSON ({e}).") from None
    if not isinstance(config, dict):
        raise error(adapter_dir, f"{CONFIG_FILE} must hold a JSON object.")
    tensors, dtypes, _ = read_safetensors(weights_path)
    for name, array in tensors.items():
        bad = int(np.size(array) - np.isfinite(array).sum())
        if bad:
            raise error(
                adapter_dir,
                f"tensor {name!r} has {bad} NaN or Inf values; an adapter "
                "that diverged in training cannot be served.",
            )
    with open(weights_path, "rb") as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()
    return PeftAdapter(adapter_dir, config, tensors, dtypes, sha256)


__all__ = [
    "CONFIG_FILE",
    "HEAD_BIAS",
    "HEAD_WEIGHT",
    "PREFIX_TYPE",
    "PROMPT_TENSOR",
    "PROMPT_TYPES",
    "PeftAdapter",
    "TASK_TYPES",
    "TORCH_WEIGHTS_FILE",
    "WEIGHTS_FILE",
    "read_adapter",
]
