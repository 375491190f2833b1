"""A keras-hub text classifier whose head reads the representation a
checkpoint was trained to give.

keras-hub's `BertTextClassifier` always reads BERT's pooler over `[CLS]`.
A sentence-transformers checkpoint (all-MiniLM-L6-v2 among them) was
trained to give the *mean* of its token outputs instead, and its pooler
was never trained (its bias is all zeros). `PooledTextClassifier` reads
what `pooling` names:

- `"mean"`: the mean over the text's tokens (the padding mask's positions,
  `[CLS]` and `[SEP]` included, as sentence-transformers averages them);
- `"cls"`: the first token's output;
- `"max"`: the maximum over the text's tokens;
- `"pooler"`: the backbone's `pooled_output` (keras-hub's and transformers'
  `*ForSequenceClassification` head).

With `normalize`, the representation is divided by its L2 norm, as a
sentence-transformers `Normalize` module does. A prompt never enters the
mean or the maximum: prompt-tuned backbones return their outputs at the
text positions only.

Example:
```python
backbone = tf_softprompt.checkpoints.load_backbone("all-MiniLM-L6-v2")
classifier = PooledTextClassifier(backbone, num_classes=2, pooling="mean")
```
"""

import keras
import keras_hub
import tensorflow as tf

from tf_softprompt import names

MODES = names.POOLINGS


def pool(outputs, padding_mask, mode, normalize=False):
    """The `[B, H]` representation `mode` names (see the module docstring).

    Args:
        outputs: a backbone's outputs: a `[B, T, H]` sequence, or a dict
            with `sequence_output` (and `pooled_output`).
        padding_mask: `[B, T]`, true at the text's tokens.
        mode: one of `MODES`.
        normalize: bool, divide by the L2 norm.

    Returns:
        `[B, H]` in the sequence's dtype (means and norms are computed in
        float32).
    """
    if mode not in MODES:
        raise ValueError(f"`pooling` must be one of {list(MODES)}. Received: {mode!r}.")
    if mode == "pooler":
        if not isinstance(outputs, dict) or "pooled_output" not in outputs:
            raise ValueError(
                "pooling='pooler' reads the backbone's `pooled_output`, which this "
                "backbone does not have. Use pooling='mean', 'cls' or 'max'."
            )
        pooled = outputs["pooled_output"]
    else:
        sequence = outputs["sequence_output"] if isinstance(outputs, dict) else outputs
        dtype = sequence.dtype
        values = tf.cast(sequence, tf.float32)
        mask = tf.cast(padding_mask, tf.float32)[..., None]
        if mode == "cls":
            pooled = values[:, 0]
        elif mode == "mean":
            total = tf.reduce_sum(values * mask, axis=1)
            pooled = total / tf.maximum(tf.reduce_sum(mask, axis=1), 1e-9)
        else:
            pooled = tf.reduce_max(tf.where(mask > 0, values, -1e9), axis=1)
        pooled = tf.cast(pooled, dtype)
    if normalize:
        norm = tf.norm(tf.cast(pooled, tf.float32), axis=-1, keepdims=True)
        pooled = tf.cast(
            tf.cast(pooled, tf.float32) / tf.maximum(norm, 1e-12), pooled.dtype
        )
    return pooled


@keras.saving.register_keras_serializable(package="tf_softprompt")
class TextPooling(keras.layers.Layer):
    """`pool` as a layer: a backbone's outputs and padding mask to `[B, H]`.

    Args:
        mode: one of `MODES`.
        normalize: bool, divide by the L2 norm.

    Call arguments:
        outputs: the backbone's outputs.
        padding_mask: `[B, T]`.
    """

    def __init__(self, mode="mean", normalize=False, **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(
                f"`pooling` must be one of {list(MODES)}. Received: {mode!r}."
            )
        self.mode = mode
        self.normalize = bool(normalize)

    def call(self, outputs, padding_mask):
        return pool(outputs, padding_mask, self.mode, self.normalize)

    def compute_output_shape(self, outputs_shape, padding_mask_shape=None):
        if isinstance(outputs_shape, dict):
            outputs_shape = outputs_shape["sequence_output"]
        return (outputs_shape[0], outputs_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode, normalize=self.normalize)
        return config


@keras.saving.register_keras_serializable(package="tf_softprompt")
class PooledTextClassifier(keras_hub.models.TextClassifier):
    """A linear classifier over a keras-hub backbone's pooled outputs.

    Args:
        backbone: a keras-hub text backbone (`token_ids`, `padding_mask`,
            optionally `segment_ids` inputs).
        num_classes: int.
        pooling: one of `MODES` (module docstring).
        normalize: bool, L2-normalise the representation first.
        preprocessor: a `TextClassifierPreprocessor`, or `None`.
        activation: the head's activation (`None`: logits).
        dropout: float, the head's input dropout.

    Example:
    ```python
    classifier = PooledTextClassifier(backbone, 2, pooling="mean")
    classifier({"token_ids": ids, "padding_mask": mask, "segment_ids": 0 * ids})
    ```
    """

    def __init__(
        self,
        backbone,
        num_classes,
        pooling="mean",
        normalize=False,
        preprocessor=None,
        activation=None,
        dropout=0.1,
        **kwargs,
    ):
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        policy = backbone.dtype_policy
        self.pooling = TextPooling(pooling, normalize, dtype=policy, name="pooling")
        self.output_dropout = keras.layers.Dropout(
            dropout, dtype=policy, name="output_dropout"
        )
        self.output_dense = keras.layers.Dense(
            num_classes,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            activation=activation,
            dtype=policy,
            name="logits",
        )

        # === Functional Model ===
        inputs = backbone.input
        x = self.pooling(backbone(inputs), inputs["padding_mask"])
        outputs = self.output_dense(self.output_dropout(x))
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.num_classes = int(num_classes)
        self.activation = keras.activations.get(activation)
        self.dropout = float(dropout)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            pooling=self.pooling.mode,
            normalize=self.pooling.normalize,
            activation=keras.activations.serialize(self.activation),
            dropout=self.dropout,
        )
        return config


__all__ = ["MODES", "PooledTextClassifier", "TextPooling", "pool"]
