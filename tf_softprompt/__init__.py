"""tf_softprompt: soft-prompt tuning for TensorFlow, Keras 3, Keras 2 and
keras-hub, with an exporter for TF Serving.

The top level exposes the Keras 3 layers and the core helpers. Keras 2
(`tf_keras`) layers with the same names are in `tf_softprompt.keras2`.

Names are imported on first use, so `import tf_softprompt.cli` (the
command line) does not import TensorFlow before it has silenced its
start-up log lines.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "PrefixAttention": "tf_softprompt.layers",
    "PromptEmbedding": "tf_softprompt.layers",
    "PromptPrepend": "tf_softprompt.layers",
    "artifact": None,
    "extend_mask": "tf_softprompt.ops",
    "extend_sequence": "tf_softprompt.ops",
    "initializers": None,
    "load_prompt": "tf_softprompt.artifact",
    "methods": None,
    "ops": None,
    "save_prompt": "tf_softprompt.artifact",
    "vocab_fingerprint": "tf_softprompt.artifact",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tf_softprompt' has no attribute {name!r}")
    module = _EXPORTS[name]
    if module is None:
        value = importlib.import_module(f"tf_softprompt.{name}")
    else:
        value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
