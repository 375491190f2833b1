"""Prompt initialisers, in the spirit of google-research/prompt-tuning.

Each public function returns an initialiser: a callable
`init(shape, dtype=None) -> [P, H] array` that Keras 3 and Keras 2 both accept
as `add_weight(initializer=...)`. Each carries a short `description` string,
recorded in the prompt artifact's metadata.

Example:
```python
vocab = np.random.normal(size=(100, 8)).astype("float32")
init = tf_softprompt.initializers.from_token_ids(vocab, [[5], [7, 9]])
init((4, 8))  # rows 0, 1 from the vocabulary; rows 2, 3 from the fallback
```
"""

import numpy as np
import tensorflow as tf

from tf_softprompt.ops import check_prompt_shape


def _as_numpy(matrix):
    if isinstance(matrix, tf.Variable):
        matrix = matrix.value()
    if hasattr(matrix, "numpy"):
        return matrix.numpy()
    return np.asarray(matrix)


def _named(fn, description):
    fn.description = description
    return fn


def _cast(values, dtype):
    return tf.cast(tf.convert_to_tensor(values), dtype or tf.float32)


def _check_hidden(shape, matrix):
    rows, hidden = (int(d) for d in shape)
    if hidden != matrix.shape[1]:
        raise ValueError(
            f"The prompt has shape {[rows, hidden]} but the vocabulary has "
            f"shape {list(matrix.shape)}: hidden sizes must match."
        )
    return rows, hidden


def uniform(scale=0.5, seed=None):
    """Uniform values in `[-scale, scale]` (prompt-tuning's "random uniform").

    Args:
        scale: float, the half-width of the range.
        seed: optional int for reproducible values.

    Returns:
        An initialiser `(shape, dtype) -> [P, H]`.
    """
    if scale <= 0:
        raise ValueError(f"`scale` must be positive. Received: scale={scale}.")

    def init(shape, dtype=None):
        rng = np.random.default_rng(seed)
        return _cast(rng.uniform(-scale, scale, size=tuple(shape)), dtype)

    return _named(init, f"uniform(scale={scale})")


def from_sample_of_embeddings(vocabulary, population_size=None, seed=None):
    """Rows sampled without replacement from the `[V, H]` vocabulary matrix.

    Args:
        vocabulary: `[V, H]` array, tensor or variable.
        population_size: optional int; sample only from the first N ids
            (often the most frequent ones in a sentencepiece vocabulary).
        seed: optional int for a reproducible sample.

    Returns:
        An initialiser `(shape, dtype) -> [P, H]`.
    """
    matrix = _as_numpy(vocabulary)
    population = matrix.shape[0] if population_size is None else population_size
    if not 0 < population <= matrix.shape[0]:
        raise ValueError(
            "`population_size` must be in [1, vocabulary_size]. Received: "
            f"population_size={population_size}, "
            f"vocabulary_size={matrix.shape[0]}."
        )

    def init(shape, dtype=None):
        rows, _ = _check_hidden(shape, matrix)
        rng = np.random.default_rng(seed)
        replace = rows > population
        ids = rng.choice(population, size=rows, replace=replace)
        return _cast(matrix[ids], dtype)

    return _named(init, f"from_sample_of_embeddings(population_size={population})")


def from_token_ids(vocabulary, token_ids, fallback=None):
    """Rows from the embeddings of given tokens; leftovers from a fallback.

    Args:
        vocabulary: `[V, H]` array, tensor or variable.
        token_ids: a list whose entries are an int (one token) or a list of
            ints (a multi-token word, whose embeddings are averaged into one
            row). Entry i initialises prompt row i.
        fallback: initialiser for rows beyond `len(token_ids)`. Defaults to
            `from_sample_of_embeddings(vocabulary, seed=0)`.

    Returns:
        An initialiser `(shape, dtype) -> [P, H]`.
    """
    matrix = _as_numpy(vocabulary)
    groups = [[int(t)] if np.isscalar(t) else [int(i) for i in t] for t in token_ids]
    for group in groups:
        if not group:
            raise ValueError(
                "Each entry of `token_ids` needs at least one id. Received an "
                f"empty entry in token_ids={token_ids}."
            )
        bad = [i for i in group if not 0 <= i < matrix.shape[0]]
        if bad:
            raise ValueError(
                f"Token ids {bad} are outside the vocabulary [0, "
                f"{matrix.shape[0]}). Received: token_ids={token_ids}."
            )
    fallback = fallback or from_sample_of_embeddings(matrix, seed=0)

    def init(shape, dtype=None):
        rows, _ = _check_hidden(shape, matrix)
        if len(groups) > rows:
            raise ValueError(
                f"{len(groups)} token groups were given for a prompt of "
                f"{rows} rows. Pass at most num_prompt_tokens groups."
            )
        values = np.array(_as_numpy(fallback(shape, tf.float32)), np.float32)
        for row, group in enumerate(groups):
            values[row] = matrix[group].mean(axis=0)
        return _cast(values, dtype)

    return _named(init, f"from_token_ids({groups})")


def from_label_words(vocabulary, words, tokenize, fallback=None):
    """Rows from the (averaged) embeddings of label words, e.g. "positive".

    Args:
        vocabulary: `[V, H]` array, tensor or variable.
        words: list of str; word i initialises prompt row i.
        tokenize: callable `str -> list[int]`, without special tokens.
        fallback: initialiser for the remaining rows, as in `from_token_ids`.

    Returns:
        An initialiser `(shape, dtype) -> [P, H]`.
    """
    groups = []
    for word in words:
        ids = [int(i) for i in np.asarray(tokenize(word)).reshape(-1)]
        if not ids:
            raise ValueError(
                f"The label word {word!r} tokenised to no ids. Use a word the "
                "tokenizer knows."
            )
        groups.append(ids)
    init = from_token_ids(vocabulary, groups, fallback)
    return _named(init, f"from_label_words({list(words)})")


def from_array(array):
    """Values copied from an array (`[P, H]`, or a prefix's
    `[L, 2, P, kv_heads, head_dim]`); the shape is checked on use."""
    values = np.asarray(_as_numpy(array), dtype=np.float32)
    if values.ndim < 2:
        raise ValueError(
            "`array` must be [num_prompt_tokens, hidden_dim] or a prefix's "
            f"[L, 2, P, kv_heads, head_dim]. Received: shape={list(values.shape)}."
        )

    def init(shape, dtype=None):
        check_prompt_shape(values, shape)
        return _cast(values, dtype)

    return _named(init, f"from_array(shape={list(values.shape)})")


def get(identifier):
    """Resolve a string (`"uniform"`) or a callable initialiser."""
    if identifier is None or identifier == "uniform":
        return uniform()
    if callable(identifier):
        return identifier
    raise ValueError(
        f"Unknown prompt initializer {identifier!r}. Use 'uniform' or one of "
        "tf_softprompt.initializers' functions (from_sample_of_embeddings, "
        "from_token_ids, from_label_words, from_array)."
    )


def describe(initializer):
    """A short string for artifact metadata."""
    if isinstance(initializer, str):
        return initializer
    return getattr(initializer, "description", type(initializer).__name__)
