"""tf_softprompt: soft-prompt tuning for TensorFlow, Keras 3, Keras 2 and
keras-hub, with an exporter for TF Serving.

The top level exposes the Keras 3 layers and the core helpers. Keras 2
(`tf_keras`) layers with the same names are in `tf_softprompt.keras2`.

Names are imported on first use, so `import tf_softprompt.cli` (the
command line) does not import TensorFlow before it has silenced its
start-up log lines.
"""

from tf_softprompt import lazy

__version__ = "0.1.0"

_EXPORTS = {
    "PrefixAttention": "layers",
    "PromptEmbedding": "layers",
    "PromptPrepend": "layers",
    "artifact": None,
    "extend_mask": "ops",
    "extend_sequence": "ops",
    "initializers": None,
    "load_prompt": "artifact",
    "methods": None,
    "ops": None,
    "save_prompt": "artifact",
    "vocab_fingerprint": "artifact",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy.attributes(__name__, _EXPORTS)
