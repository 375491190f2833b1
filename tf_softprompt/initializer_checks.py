"""The checks and the vocabulary view that prompt initialisers share
(`tf_softprompt.initializers`): a `[V, H]` matrix given now or read later,
seeds, token-id groups, and shapes, each failing with a message that names
the value and the fix.

Example:
```python
vocabulary = Vocabulary(embedding.embeddings)
rows, hidden = check_hidden((4, 16), vocabulary.matrix())
```
"""

import numbers

import numpy as np
import tensorflow as tf


class Vocabulary:
    """The `[V, H]` matrix: given now (copied once), or read when needed.

    A zero-argument callable is read each time the initialiser runs: a layer
    being rebuilt from its config has no built embedding yet.
    """

    def __init__(self, vocabulary):
        if isinstance(vocabulary, Vocabulary):
            self._read, self._matrix = vocabulary._read, vocabulary._matrix
        elif callable(vocabulary) and not hasattr(vocabulary, "shape"):
            self._read, self._matrix = vocabulary, None
        else:
            self._read, self._matrix = None, as_numpy(vocabulary)
            if self._matrix.ndim != 2:
                raise ValueError(
                    "`vocabulary` must be the [vocab_size, hidden_dim] "
                    f"embedding matrix. Received: shape={list(self._matrix.shape)}."
                )

    def matrix(self):
        if self._matrix is not None:
            return self._matrix
        return as_numpy(self._read())

    def given_size(self):
        """V of a vocabulary given now; None for one read later."""
        return None if self._matrix is None else int(self._matrix.shape[0])

    def size(self):
        """V, or None while a lazily read vocabulary does not exist yet."""
        if self._matrix is not None:
            return int(self._matrix.shape[0])
        try:
            return int(self._read().shape[0])
        except (AttributeError, ValueError):
            return None


def as_numpy(matrix):
    if isinstance(matrix, tf.Variable):
        matrix = matrix.value()
    if hasattr(matrix, "numpy"):
        return matrix.numpy()
    return np.asarray(matrix)


def cast_values(values, dtype):
    return tf.cast(tf.convert_to_tensor(values), dtype or tf.float32)


def check_hidden(shape, matrix):
    rows, hidden = (int(d) for d in shape)
    if hidden != matrix.shape[1]:
        raise ValueError(
            f"The prompt has shape {[rows, hidden]} but the vocabulary has "
            f"shape {list(matrix.shape)}: hidden sizes must match."
        )
    return rows, hidden


def check_seed(seed):
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"`seed` must be an int or None. Received: seed={seed!r}.")
    return int(seed)


def check_population(population_size, vocabulary_size):
    population = vocabulary_size if population_size is None else population_size
    if not 0 < population <= vocabulary_size:
        raise ValueError(
            "`population_size` must be in [1, vocabulary_size]. Received: "
            f"population_size={population_size}, "
            f"vocabulary_size={vocabulary_size}."
        )
    return population


def token_groups(token_ids):
    groups = [[int(t)] if np.isscalar(t) else [int(i) for i in t] for t in token_ids]
    for group in groups:
        if not group:
            raise ValueError(
                "Each entry of `token_ids` needs at least one id. Received an "
                f"empty entry in token_ids={token_ids}."
            )
    return groups


def check_ids(groups, vocabulary_size, token_ids):
    bad = [i for group in groups for i in group if not 0 <= i < vocabulary_size]
    if bad:
        raise ValueError(
            f"Token ids {bad} are outside the vocabulary [0, "
            f"{vocabulary_size}). Received: token_ids={token_ids}."
        )
