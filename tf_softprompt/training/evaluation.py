"""Held-out evaluation of a classifier: probabilities and accuracy."""

import numpy as np
import tensorflow as tf

from tf_softprompt.training import pipeline


def predict_probabilities(model, preprocessor, texts, batch_size=64):
    """Softmax probabilities `[N, num_classes]` for `texts`.

    Example:
    ```python
    probabilities = predict_probabilities(model, preprocessor, ["a fine film"])
    ```
    """
    forward = tf.function(lambda features: model(features, training=False))
    dataset = pipeline.inference_dataset(texts, preprocessor, batch_size)
    outputs = [tf.nn.softmax(tf.cast(forward(batch), tf.float32)) for batch in dataset]
    return np.concatenate([o.numpy() for o in outputs], axis=0)


def accuracy(model, preprocessor, texts, label_ids, batch_size=64):
    """Held-out accuracy: the fraction of `texts` whose argmax is the label."""
    probabilities = predict_probabilities(model, preprocessor, texts, batch_size)
    return float(np.mean(np.argmax(probabilities, axis=-1) == np.asarray(label_ids)))
