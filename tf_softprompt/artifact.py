"""The prompt artifact: a trained prompt and its metadata, in one `.npz` file.

Format (readable with numpy alone, `np.load(path)`):

- `prompt`: float array `[P, H]`, the prompt table.
- `metadata`: a 0-d unicode array holding a JSON object with the keys
  `format` (`"tf-softprompt/1"`), `method` (`"embedding"` or `"prepend"`),
  `num_prompt_tokens` (P), `hidden_dim` (H), `vocab_size` (V), `dtype`,
  `initializer`, `task`, `offset` and `vocab_fingerprint` (see
  `vocab_fingerprint`), plus any extra keys the caller adds.

Example:
```python
meta = artifact.save_prompt("sst2.prompt.npz", prompt, vocabulary, task="sst2")
values, meta = artifact.load_prompt("sst2.prompt.npz", vocabulary=vocabulary)
```
"""

import hashlib
import json
import os
import zipfile

import numpy as np

from tf_softprompt.fileio import atomic_write

FORMAT = "tf-softprompt/1"
SUFFIX = ".npz"
_REQUIRED_KEYS = ("num_prompt_tokens", "hidden_dim", "vocab_size", "vocab_fingerprint")


def _as_numpy(x):
    if hasattr(x, "numpy"):
        return x.numpy()
    return np.asarray(x)


def vocab_fingerprint(vocabulary):
    """`sha256:<hex>` of the `[V, H]` matrix's float32 bytes and its shape.

    Two bases with the same frozen embedding matrix give the same
    fingerprint; a prompt trained on one is meaningless on another.
    """
    matrix = np.ascontiguousarray(_as_numpy(vocabulary), dtype=np.float32)
    digest = hashlib.sha256()
    digest.update(json.dumps(list(matrix.shape)).encode())
    digest.update(matrix.tobytes())
    return "sha256:" + digest.hexdigest()


def _check_finite(values, path):
    if not np.all(np.isfinite(values)):
        count = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        raise ValueError(
            f"The prompt holds {count} NaN or Inf values, so it was refused. "
            f"Received: path={path!r}. Re-train with a lower learning rate or "
            "restore an earlier checkpoint."
        )


def _check_path(path):
    path = os.fspath(path)
    if not path.endswith(SUFFIX):
        raise ValueError(
            f"The prompt filename must end in {SUFFIX}. Received: filepath={path}"
        )
    return path


def save_prompt(
    path,
    prompt,
    vocabulary,
    *,
    method="embedding",
    initializer="unknown",
    task="default",
    offset=0,
    **extra,
):
    """Write a prompt artifact atomically (temporary file, then rename).

    Args:
        path: destination, ending in `.npz`.
        prompt: `[P, H]` array, tensor or variable.
        vocabulary: `[V, H]` frozen embedding matrix, for V and the
            fingerprint.
        method: `"embedding"` (virtual ids) or `"prepend"`.
        initializer: str describing how the prompt was initialised.
        task: str, the task's name (used by multi-task export).
        offset: int, where the prompt sits in the sequence.
        **extra: more JSON-serialisable metadata.

    Returns:
        The metadata dict that was written.
    """
    path = _check_path(path)
    values = _as_numpy(prompt)
    vocab = _as_numpy(vocabulary)
    if values.ndim != 2 or values.shape[0] <= 0:
        raise ValueError(
            "The prompt must be [num_prompt_tokens, hidden_dim] with at least "
            f"one row. Received: shape={list(values.shape)}."
        )
    if values.shape[1] != vocab.shape[1]:
        raise ValueError(
            f"The prompt's hidden size {values.shape[1]} differs from the "
            f"vocabulary's {vocab.shape[1]}. Both must match."
        )
    _check_finite(values, path)
    metadata = {
        "format": FORMAT,
        "method": method,
        "num_prompt_tokens": int(values.shape[0]),
        "hidden_dim": int(values.shape[1]),
        "vocab_size": int(vocab.shape[0]),
        "dtype": str(values.dtype),
        "initializer": str(initializer),
        "task": str(task),
        "offset": int(offset),
        "vocab_fingerprint": vocab_fingerprint(vocab),
        **extra,
    }
    payload = {"prompt": values, "metadata": np.array(json.dumps(metadata))}
    atomic_write(path, lambda f: np.savez(f, **payload), suffix=SUFFIX)
    return metadata


def read_metadata(path):
    """The metadata dict of an artifact, checked for format."""
    return load_prompt(path)[1]


def load_prompt(path, vocabulary=None, *, hidden_dim=None, vocab_size=None):
    """Read and check a prompt artifact.

    Args:
        path: an artifact written by `save_prompt`.
        vocabulary: optional `[V, H]` matrix of the model the prompt will be
            loaded into; H, V and the fingerprint must then match.
        hidden_dim, vocab_size: optional expected H and V, checked when no
            vocabulary is given.

    Returns:
        `(values, metadata)`: the `[P, H]` float32 array and the metadata dict.
    """
    path = _check_path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            values = np.array(data["prompt"])
            metadata = json.loads(str(data["metadata"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(
            f"Could not read a prompt artifact from {path!r}: {e}. The file is "
            "missing, truncated or not written by tf_softprompt.save_prompt."
        ) from e
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ValueError(
            f"{path!r} is not a {FORMAT} prompt artifact. Received metadata "
            f"format={getattr(metadata, 'get', lambda k: None)('format')!r}."
        )
    missing = sorted(set(_REQUIRED_KEYS) - set(metadata))
    if missing:
        raise ValueError(
            f"{path!r} is corrupt: its metadata lacks {missing}. Re-save the "
            "prompt with tf_softprompt.save_prompt."
        )
    if values.ndim != 2 or list(values.shape) != [
        metadata["num_prompt_tokens"],
        metadata["hidden_dim"],
    ]:
        raise ValueError(
            f"{path!r} is corrupt: the prompt has shape {list(values.shape)} "
            f"but its metadata says [{metadata['num_prompt_tokens']}, "
            f"{metadata['hidden_dim']}]."
        )
    _check_finite(values, path)
    if vocabulary is not None:
        vocab = _as_numpy(vocabulary)
        vocab_size, hidden_dim = vocab.shape
    for key, expected in (("hidden_dim", hidden_dim), ("vocab_size", vocab_size)):
        if expected is not None and metadata[key] != expected:
            raise ValueError(
                f"The prompt in {path!r} was trained for {key}="
                f"{metadata[key]}, but the model has {key}={expected}. Load "
                "it into the base model it was trained on."
            )
    if vocabulary is not None:
        fingerprint = vocab_fingerprint(vocab)
        if metadata["vocab_fingerprint"] != fingerprint:
            raise ValueError(
                f"The prompt in {path!r} was trained on a base with vocabulary "
                f"fingerprint {metadata['vocab_fingerprint']}, but this model's "
                f"is {fingerprint}. Load it into the base model it was "
                "trained on."
            )
    return values.astype(np.float32), metadata
