"""Compute precision of a run: float32, or mixed bfloat16.

`"mixed_bfloat16"` builds the model under Keras' `mixed_bfloat16` dtype
policy: every layer of the frozen base computes in bfloat16 while its
variables stay float32; the prompt table (`tf_softprompt.hub.PromptTable`)
and the classifier head keep float32 weights (the prompt is cast to the
compute dtype where it is used, as Keras' `enable_lora` keeps adapter
weights in float32), and the loss is computed in float32
(`trainer.sparse_classification_loss`). The policy is the mechanism that
works on every device: CPU (AVX-512 BF16/AMX), GPU and TPU (where bfloat16
is native and XLA compiles the step). Measured against TF's oneDNN
auto-mixed-precision graph rewrite in `bench/train_step.py`.

Example:
```python
with policy("mixed_bfloat16"):
    model = keras_hub.models.TextClassifier.from_preset(path, num_classes=2)
```
"""

import contextlib

import keras

POLICIES = {"float32": "float32", "mixed_bfloat16": "mixed_bfloat16"}


def check(precision):
    """`precision` if known, else a clear error."""
    if precision not in POLICIES:
        raise ValueError(
            f"Unknown precision {precision!r}. Use one of {sorted(POLICIES)}."
        )
    return precision


@contextlib.contextmanager
def policy(precision):
    """Build models under the Keras dtype policy of `precision`.

    The global policy is restored afterwards, so other models are not
    affected.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(POLICIES[check(precision)])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
