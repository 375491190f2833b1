"""Parts of keras-hub models that training and export read or set: a
classifier's head and pooled output, and the backbone's dropout.

Example:
```python
kernel, bias = classifier_head(classifier)
set_dropout(classifier, 0.0)  # the frozen base without dropout
```
"""

import keras

from tf_softprompt.hub.inspection import split


def classifier_head(model):
    """`(kernel, bias)` variables of a `TextClassifier`'s output dense layer.

    Raises:
        ValueError: if the model has no linear `output_dense` head.
    """
    dense = getattr(model, "output_dense", None)
    if dense is None:
        raise ValueError(
            "Per-task heads need a keras-hub TextClassifier (with "
            f"`output_dense`). Received: {type(model).__name__}."
        )
    activation = getattr(dense, "activation", None)
    if activation not in (None, keras.activations.linear):
        raise ValueError(
            "Per-task heads are applied as linear layers; the model's "
            f"`output_dense` has activation {activation}."
        )
    return dense.kernel, dense.bias


def pooled_output(outputs):
    """The backbone output a classifier head reads ([CLS] pooled)."""
    return outputs["pooled_output"]


def set_dropout(model, rate):
    """Set every dropout rate inside a keras-hub backbone (in place).

    Covers `keras.layers.Dropout` layers and the attention-probability
    dropout of Keras' `MultiHeadAttention`. A Task's own layers (e.g. a
    classifier head's dropout) are left alone.

    Args:
        model: a keras-hub Backbone, or a Task with a `backbone`.
        rate: float in `[0, 1)`.

    Returns:
        The number of layers changed.
    """
    if not 0 <= rate < 1:
        raise ValueError(f"`rate` must be in [0, 1). Received: rate={rate}.")
    backbone, _ = split(model)
    changed = 0
    for layer in backbone._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = float(rate)
            changed += 1
        elif isinstance(layer, keras.layers.MultiHeadAttention):
            layer._dropout = float(rate)
            changed += 1
    return changed


__all__ = ["classifier_head", "pooled_output", "set_dropout"]
