"""Held-out evaluation of a classifier: probabilities, accuracy, loss and
the per-class report (precision, recall, F1, confusion matrix)."""

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


def loss_and_accuracy(probabilities, label_ids):
    """`{"loss", "accuracy"}`: mean cross-entropy (nats) and accuracy."""
    label_ids = np.asarray(label_ids)
    chosen = probabilities[np.arange(len(label_ids)), label_ids]
    return {
        "loss": float(-np.mean(np.log(np.maximum(chosen, 1e-12)))),
        "accuracy": float(np.mean(probabilities.argmax(-1) == label_ids)),
    }


def classification_report(label_ids, predicted_ids, names):
    """Per-class precision, recall and F1, and the confusion matrix.

    Args:
        label_ids: `[N]` true class ids.
        predicted_ids: `[N]` predicted class ids.
        names: the class names, in id order.

    Returns:
        `{"per_class": {name: {"precision", "recall", "f1", "support"}},
        "macro_f1": float, "confusion_matrix": [[count]]}`, the matrix's
        rows the true classes and its columns the predicted ones. A class
        never predicted has precision 0 (and F1 0), as scikit-learn's
        `zero_division=0`.

    Example:
    ```python
    classification_report([0, 1, 1], [0, 1, 0], ["neg", "pos"])["macro_f1"]
    ```
    """
    k = len(names)
    matrix = np.zeros((k, k), np.int64)
    np.add.at(matrix, (np.asarray(label_ids), np.asarray(predicted_ids)), 1)
    per_class = {}
    for i, name in enumerate(names):
        true_positive = matrix[i, i]
        predicted, support = matrix[:, i].sum(), matrix[i, :].sum()
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / support if support else 0.0
        total = precision + recall
        per_class[name] = {
            "precision": round(float(precision), 4),
            "recall": round(float(recall), 4),
            "f1": round(float(2 * precision * recall / total if total else 0.0), 4),
            "support": int(support),
        }
    return {
        "per_class": per_class,
        "macro_f1": round(float(np.mean([c["f1"] for c in per_class.values()])), 4),
        "confusion_matrix": matrix.tolist(),
    }
