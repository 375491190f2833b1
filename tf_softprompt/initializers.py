"""Prompt initialisers, in the spirit of google-research/prompt-tuning.

Each public function returns a `PromptInitializer`: a callable
`init(shape, dtype=None) -> [P, H] tensor` that Keras 3 and Keras 2 both
accept as `add_weight(initializer=...)`. It carries

- `description`, a short string recorded in the prompt artifact's metadata;
- `get_config()`, a JSON-able `{"name": ..., "args": {...}}` holding the
  function's name and arguments, which `get(config)` turns back into the
  same initialiser.

A layer's `get_config` stores `serialize(init)` and its `from_config` calls
`get(config, vocabulary=...)`. The `[V, H]` vocabulary is never stored:
`from_sample_of_embeddings`, `from_token_ids` and `from_label_words` record
their other arguments (label words together with their token-id groups, so
no tokenizer is needed), and whoever rebuilds them supplies the vocabulary.
`PromptEmbedding` supplies its own. A layer that holds no vocabulary
(`PromptPrepend`) refuses to save such an initialiser (`serialize(init,
vocabulary_available=False)` raises, naming the fix): a placeholder would
not do, because loading a saved model builds the layer, which runs the
initialiser, before the saved prompt values are restored. `from_array`
stores its `[P, H]` values.

`"uniform"` (the layers' default) is `uniform()`: U(-0.5, 0.5), as in
prompt-tuning. It is **not** Keras' `"uniform"`, which is U(-0.05, 0.05).

Example:
```python
vocab = np.random.normal(size=(100, 8)).astype("float32")
init = tf_softprompt.initializers.from_token_ids(vocab, [[5], [7, 9]])
init((4, 8))  # rows 0, 1 from the vocabulary; rows 2, 3 from the fallback
config = tf_softprompt.initializers.serialize(init)  # JSON-able, no [V, H]
again = tf_softprompt.initializers.get(config, vocabulary=vocab)
```
"""

import copy
import numbers
import sys

import numpy as np
import tensorflow as tf

from tf_softprompt.initializer_checks import (
    Vocabulary,
    as_numpy,
    cast_values,
    check_hidden,
    check_ids,
    check_population,
    check_seed,
    token_groups,
)
from tf_softprompt.ops import check_prompt_shape

_FUNCTIONS = (
    "uniform, from_sample_of_embeddings, from_token_ids, from_label_words, from_array"
)


class PromptInitializer:
    """An initialiser made by this module, with a JSON-able config.

    Made by `uniform`, `from_sample_of_embeddings`, `from_token_ids`,
    `from_label_words` and `from_array`; not meant to be built directly.

    Args:
        name: str, the function that made it (a name `get` knows).
        args: dict of that function's arguments, without the vocabulary.
            Values are JSON-able, or initialisers (a `fallback`), which
            `get_config` serialises in turn.
        fn: callable `(shape, dtype) -> [P, H]` values.
        description: str, or a callable returning it (when it depends on a
            vocabulary that is only read later).
        needs_vocabulary: bool, whether rebuilding it needs the `[V, H]`
            vocabulary (`get(config, vocabulary=...)`).

    Call arguments:
        shape: `(P, H)`.
        dtype: optional dtype (default float32).
    """

    def __init__(self, name, args, fn, description, needs_vocabulary=False):
        self.name = name
        self._args = args
        self._fn = fn
        self._description = description
        self.needs_vocabulary = needs_vocabulary or any(
            getattr(value, "needs_vocabulary", False) for value in args.values()
        )

    def __call__(self, shape, dtype=None, **kwargs):
        return self._fn(shape, dtype)

    @property
    def description(self):
        """A short string for the prompt artifact's metadata."""
        if callable(self._description):
            return self._description()
        return self._description

    def get_config(self):
        """`{"name": ..., "args": {...}}`, JSON-able; see `get`."""
        args = {
            key: serialize(value) if callable(value) else copy.deepcopy(value)
            for key, value in self._args.items()
        }
        return {"name": self.name, "args": args}

    @classmethod
    def from_config(cls, config, vocabulary=None):
        """The same as `get(config, vocabulary)`."""
        return get(config, vocabulary)

    def __repr__(self):
        return f"<PromptInitializer {self.description}>"


def uniform(scale=0.5, seed=None):
    """Uniform values in `[-scale, scale]` (prompt-tuning's "random uniform").

    The layers' default `"uniform"` is `uniform()`, U(-0.5, 0.5); Keras'
    own `"uniform"` is U(-0.05, 0.05).

    Args:
        scale: float, the half-width of the range.
        seed: optional int for reproducible values.

    Returns:
        A `PromptInitializer` `(shape, dtype) -> [P, H]`.
    """
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or scale <= 0:
        raise ValueError(f"`scale` must be positive. Received: scale={scale}.")
    scale = float(scale)
    seed = check_seed(seed)

    def init(shape, dtype=None):
        rng = np.random.default_rng(seed)
        return cast_values(rng.uniform(-scale, scale, size=tuple(shape)), dtype)

    return PromptInitializer(
        "uniform", {"scale": scale, "seed": seed}, init, f"uniform(scale={scale})"
    )


def from_sample_of_embeddings(vocabulary, population_size=None, seed=None):
    """Rows sampled without replacement from the `[V, H]` vocabulary matrix.

    Args:
        vocabulary: `[V, H]` array, tensor or variable (or a zero-argument
            callable returning it, read when the initialiser runs).
        population_size: optional int; sample only from the first N ids
            (often the most frequent ones in a sentencepiece vocabulary).
        seed: optional int for a reproducible sample.

    Returns:
        A `PromptInitializer`; its config records `population_size` and
        `seed`, not the vocabulary.
    """
    source = Vocabulary(vocabulary)
    if population_size is not None:
        population_size = int(population_size)
    seed = check_seed(seed)
    if source.given_size() is not None:
        check_population(population_size, source.given_size())

    def init(shape, dtype=None):
        matrix = source.matrix()
        population = check_population(population_size, matrix.shape[0])
        rows, _ = check_hidden(shape, matrix)
        rng = np.random.default_rng(seed)
        ids = rng.choice(population, size=rows, replace=rows > population)
        return cast_values(matrix[ids], dtype)

    def description():
        population = population_size
        if population is None:
            population = source.size()
        return f"from_sample_of_embeddings(population_size={population})"

    return PromptInitializer(
        "from_sample_of_embeddings",
        {"population_size": population_size, "seed": seed},
        init,
        description,
        needs_vocabulary=True,
    )


def _from_groups(name, args, source, groups, fallback, description, token_ids):
    """Rows i = the mean vocabulary row of `groups[i]`; the rest `fallback`."""
    if source.given_size() is not None:
        check_ids(groups, source.given_size(), token_ids)

    def init(shape, dtype=None):
        matrix = source.matrix()
        check_ids(groups, matrix.shape[0], token_ids)
        rows, _ = check_hidden(shape, matrix)
        if len(groups) > rows:
            raise ValueError(
                f"{len(groups)} token groups were given for a prompt of "
                f"{rows} rows. Pass at most num_prompt_tokens groups."
            )
        rest = fallback or from_sample_of_embeddings(source, seed=0)
        values = np.array(as_numpy(rest(shape, tf.float32)), np.float32)
        for row, group in enumerate(groups):
            values[row] = matrix[group].mean(axis=0)
        return cast_values(values, dtype)

    args = {**args, "fallback": fallback}
    return PromptInitializer(name, args, init, description, needs_vocabulary=True)


def from_token_ids(vocabulary, token_ids, fallback=None):
    """Rows from the embeddings of given tokens; leftovers from a fallback.

    Args:
        vocabulary: `[V, H]` array, tensor or variable (or a zero-argument
            callable returning it, read when the initialiser runs).
        token_ids: a list whose entries are an int (one token) or a list of
            ints (a multi-token word, whose embeddings are averaged into one
            row). Entry i initialises prompt row i.
        fallback: initialiser for rows beyond `len(token_ids)`. Defaults to
            `from_sample_of_embeddings(vocabulary, seed=0)`.

    Returns:
        A `PromptInitializer`; its config records the token-id groups and
        the fallback's config, not the vocabulary.
    """
    groups = token_groups(token_ids)
    return _from_groups(
        "from_token_ids",
        {"token_ids": groups},
        Vocabulary(vocabulary),
        groups,
        fallback,
        f"from_token_ids({groups})",
        token_ids,
    )


def from_label_words(vocabulary, words, tokenize, fallback=None):
    """Rows from the (averaged) embeddings of label words, e.g. "positive".

    Args:
        vocabulary: `[V, H]` array, tensor or variable (or a zero-argument
            callable returning it, read when the initialiser runs).
        words: list of str; word i initialises prompt row i.
        tokenize: callable `str -> list[int]`, without special tokens.
        fallback: initialiser for the remaining rows, as in `from_token_ids`.

    Returns:
        A `PromptInitializer`; its config records the words, their token-id
        groups (so rebuilding needs no tokenizer) and the fallback's config.
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
    return _label_words(vocabulary, words, groups, fallback)


def _label_words(vocabulary, words, token_ids, fallback):
    words = [str(word) for word in words]
    groups = token_groups(token_ids)
    if len(groups) != len(words):
        raise ValueError(
            f"Each label word needs its token-id group. Received {len(words)} "
            f"words ({words}) and {len(groups)} groups ({groups})."
        )
    return _from_groups(
        "from_label_words",
        {"words": words, "token_ids": groups},
        Vocabulary(vocabulary),
        groups,
        fallback,
        f"from_label_words({words})",
        token_ids,
    )


def from_array(array, description=None):
    """Values copied from an array; the shape is checked on use.

    Args:
        array: `[P, H]` array or tensor (a prefix: `[L, 2, P, kv_heads,
            head_dim]`).
        description: optional str for the artifact (how the values were
            made); default `from_array(shape=...)`.

    Returns:
        A `PromptInitializer`; its config stores the values (float32).
    """
    values = np.asarray(as_numpy(array), dtype=np.float32)
    if values.ndim < 2:
        raise ValueError(
            "`array` must be [num_prompt_tokens, hidden_dim] or a prefix's "
            f"[L, 2, P, kv_heads, head_dim]. Received: shape={list(values.shape)}."
        )

    def init(shape, dtype=None):
        check_prompt_shape(values, shape)
        return cast_values(values, dtype)

    # float32 -> Python float -> float32 is exact, so the config is lossless.
    return PromptInitializer(
        "from_array",
        {"array": values.tolist()},
        init,
        description or f"from_array(shape={list(values.shape)})",
    )


def _keras_flavour(initializer):
    """The flavour ("keras" or "tf_keras") of a Keras initializer, else None."""
    for flavour in ("keras", "tf_keras"):
        module = sys.modules.get(flavour)
        if module is not None and isinstance(
            initializer, module.initializers.Initializer
        ):
            return flavour
    return None


def _needs(vocabulary, name):
    if vocabulary is None:
        raise ValueError(
            f"The prompt initializer config {name!r} reads the [V, H] "
            "vocabulary, which is not stored in the config. Pass it: "
            "`initializers.get(config, vocabulary=embedding_matrix)`."
        )
    return vocabulary


def _fallback(args, vocabulary):
    config = args.get("fallback")
    return None if config is None else get(config, vocabulary)


def _build_keras(args, vocabulary):
    import keras

    return keras.initializers.deserialize(args["config"])


def _build_tf_keras(args, vocabulary):
    import tf_keras

    return tf_keras.initializers.deserialize(args["config"])


_BUILDERS = {
    "uniform": lambda args, vocabulary: uniform(**args),
    "from_sample_of_embeddings": lambda args, vocabulary: from_sample_of_embeddings(
        _needs(vocabulary, "from_sample_of_embeddings"), **args
    ),
    "from_token_ids": lambda args, vocabulary: from_token_ids(
        _needs(vocabulary, "from_token_ids"),
        args["token_ids"],
        _fallback(args, vocabulary),
    ),
    "from_label_words": lambda args, vocabulary: _label_words(
        _needs(vocabulary, "from_label_words"),
        args["words"],
        args["token_ids"],
        _fallback(args, vocabulary),
    ),
    "from_array": lambda args, vocabulary: from_array(args["array"]),
    "keras": _build_keras,
    "tf_keras": _build_tf_keras,
}


def serialize(initializer, vocabulary_available=True):
    """The JSON-able config of a prompt initialiser, for a layer's `get_config`.

    Args:
        initializer: `"uniform"`, `None`, a `PromptInitializer` from this
            module, or a Keras 3 or tf-keras initializer object.
        vocabulary_available: bool, whether the code that rebuilds from this
            config can pass `vocabulary=` to `get` (`PromptEmbedding` can;
            `PromptPrepend` and other layers without a vocabulary cannot).

    Returns:
        `{"name": ..., "args": {...}}`, which `get` turns back into the same
        initialiser. A Keras initializer is stored as
        `{"name": "keras" or "tf_keras", "args": {"config": ...}}`.

    Raises:
        ValueError: for a callable this module did not make (its arguments
            are unknown), or, with `vocabulary_available=False`, for an
            initialiser that reads the vocabulary. The message names the
            initialiser and the fix.

    Example:
    ```python
    init = initializers.uniform(scale=0.1, seed=3)
    initializers.serialize(init)
    # {"name": "uniform", "args": {"scale": 0.1, "seed": 3}}
    ```
    """
    if initializer is None or isinstance(initializer, str):
        initializer = get(initializer)
    if isinstance(initializer, PromptInitializer):
        if initializer.needs_vocabulary and not vocabulary_available:
            raise ValueError(
                f"The prompt initializer {initializer.description} reads the "
                "[V, H] vocabulary, which this layer does not hold, so it "
                "cannot be rebuilt from the layer's config. Build the layer "
                "with `prompt_initializer=tf_softprompt.initializers."
                "from_array(init((num_prompt_tokens, hidden_dim)))`: the same "
                "values, stored in the config. (The trained prompt itself is "
                "saved with the weights either way.)"
            )
        return initializer.get_config()
    flavour = _keras_flavour(initializer)
    if flavour is not None:
        module = sys.modules[flavour]
        return {
            "name": flavour,
            "args": {"config": module.initializers.serialize(initializer)},
        }
    raise ValueError(
        f"The prompt initializer {initializer!r} cannot be saved in a config: "
        f"only tf_softprompt.initializers' initialisers ({_FUNCTIONS}) and "
        "Keras initializers record their arguments. Build the layer with one "
        "of them, e.g. `prompt_initializer=tf_softprompt.initializers."
        "from_array(values)` with the [P, H] values your callable gives."
    )


def get(identifier, vocabulary=None):
    """Resolve `"uniform"`, `None`, a config or a callable to an initialiser.

    Args:
        identifier: `"uniform"` or `None` (both `uniform()`), a config from
            `serialize` (`{"name": ..., "args": {...}}`), or a callable
            initialiser (returned as is).
        vocabulary: the `[V, H]` matrix (array, tensor, variable, or a
            zero-argument callable returning it, read when the initialiser
            runs), for configs of `from_sample_of_embeddings`,
            `from_token_ids` and `from_label_words`.

    Returns:
        A callable initialiser.

    Raises:
        ValueError: for an unknown name, a malformed config, or a config
            that needs the vocabulary when none is given.

    Example:
    ```python
    init = initializers.get({"name": "from_token_ids",
                             "args": {"token_ids": [[5]], "fallback": None}},
                            vocabulary=vocab)
    ```
    """
    if identifier is None or identifier == "uniform":
        return uniform()
    if isinstance(identifier, dict):
        name, args = identifier.get("name"), identifier.get("args")
        if name not in _BUILDERS or not isinstance(args, dict):
            raise ValueError(
                "A prompt initializer config is {'name': ..., 'args': {...}} "
                f"with a name among {sorted(_BUILDERS)}. Received: {identifier!r}."
            )
        return _BUILDERS[name](args, vocabulary)
    if callable(identifier):
        return identifier
    raise ValueError(
        f"Unknown prompt initializer {identifier!r}. Use 'uniform', a config "
        f"from `initializers.serialize`, or one of tf_softprompt.initializers' "
        f"functions ({_FUNCTIONS})."
    )


def describe(initializer):
    """A short string for artifact metadata."""
    if isinstance(initializer, str):
        return initializer
    return getattr(initializer, "description", type(initializer).__name__)
