"""tf_softprompt: soft-prompt tuning for TensorFlow, Keras 3, Keras 2 and
keras-hub, with an exporter for TF Serving.

The top level exposes the Keras 3 layers and the core helpers. Keras 2
(`tf_keras`) layers with the same names are in `tf_softprompt.keras2`.
"""

from tf_softprompt import artifact, initializers, ops
from tf_softprompt.artifact import load_prompt, save_prompt, vocab_fingerprint
from tf_softprompt.layers import PromptEmbedding, PromptPrepend
from tf_softprompt.ops import extend_mask, extend_sequence

__version__ = "0.1.0"

__all__ = [
    "PromptEmbedding",
    "PromptPrepend",
    "artifact",
    "extend_mask",
    "extend_sequence",
    "initializers",
    "load_prompt",
    "ops",
    "save_prompt",
    "vocab_fingerprint",
]
