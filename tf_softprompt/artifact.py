"""The prompt artifact: a trained prompt and its metadata, in one `.npz` file.

Format `tf-softprompt/2` (readable with numpy alone, `np.load(path)`):

- `prompt`: float32 array, the trained values, of the method's shape:
  `[P, H]` for `"embedding"`/`"prepend"`, `[L, 2, P, kv_heads, head_dim]`
  for `"prefix"` (`tf_softprompt.methods`).
- `metadata`: a 0-d unicode array holding a JSON object with `format`,
  `method`, `num_prompt_tokens` (P), `shape`, `dtype`, `initializer`,
  `task`, `offset`, the method's dims (`hidden_dim` and `vocab_size`; for a
  prefix also `num_layers`, `num_key_value_heads`, `head_dim`) and the
  fingerprint of the frozen base the prompt belongs to, plus any extra keys
  the caller adds:
  - `vocab_fingerprint` (forms 1 and 2, which only read the vocabulary):
    see `vocab_fingerprint`;
  - `base_fingerprint` (prefix, whose meaning depends on every layer): see
    `weights_fingerprint`.
- `extra/<name>`: optional further arrays (e.g. a prefix's
  reparameterisation weights, to resume training).

Files of the earlier format `tf-softprompt/1` (`[P, H]` prompts only) load
unchanged.

Example:
```python
meta = artifact.save_prompt("sst2.prompt.npz", prompt, vocabulary, task="sst2")
values, meta = artifact.load_prompt("sst2.prompt.npz", vocabulary=vocabulary)
```
"""

import dataclasses
import hashlib
import json
import os
import zipfile

import numpy as np

from tf_softprompt.fileio import atomic_write

FORMAT = "tf-softprompt/2"
FORMATS = ("tf-softprompt/1", FORMAT)
SUFFIX = ".npz"
EXTRA_PREFIX = "extra/"
_REQUIRED_KEYS = ("method", "num_prompt_tokens", "shape")
_VOCAB_METHODS = ("embedding", "prepend")


def _as_numpy(x):
    if hasattr(x, "numpy"):
        return x.numpy()
    return np.asarray(x)


def vocab_fingerprint(vocabulary):
    """The fingerprint of a `[V, H]` vocabulary matrix.

    Defined as `"sha256:"` followed by the hex SHA-256 of two byte strings
    in turn: the JSON of the shape as a list (`json.dumps([V, H])`, e.g.
    `b"[97, 16]"`), then the matrix as C-ordered little-endian float32
    bytes. Two bases with the same frozen embedding matrix give the same
    fingerprint; a prompt trained on one is meaningless on another.
    """
    matrix = np.ascontiguousarray(_as_numpy(vocabulary), dtype="<f4")
    digest = hashlib.sha256()
    digest.update(json.dumps(list(matrix.shape)).encode())
    digest.update(matrix.tobytes())
    return "sha256:" + digest.hexdigest()


def weights_fingerprint(named_weights):
    """The fingerprint of a whole frozen base, for prefixes.

    Defined as `"sha256:"` followed by the hex SHA-256 of, for each weight
    in order of its path: the UTF-8 path, a zero byte, the JSON of its
    shape, a zero byte, and its C-ordered little-endian float32 bytes.

    Args:
        named_weights: iterable of `(path, array)`.
    """
    digest = hashlib.sha256()
    for path, value in sorted(named_weights, key=lambda item: item[0]):
        array = np.ascontiguousarray(_as_numpy(value), dtype="<f4")
        digest.update(str(path).encode() + b"\0")
        digest.update(json.dumps(list(array.shape)).encode() + b"\0")
        digest.update(array.tobytes())
    return "sha256:" + digest.hexdigest()


def _check_finite(values, path, what="prompt"):
    if not np.all(np.isfinite(values)):
        count = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        raise ValueError(
            f"The {what} holds {count} NaN or Inf values, so it was refused. "
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


@dataclasses.dataclass
class Artifact:
    """A loaded artifact.

    Attributes:
        values: float32 array, the trained prompt.
        metadata: dict.
        arrays: dict of extra float32 arrays (`extra/<name>` in the file).
        path: where it was read from.
    """

    values: np.ndarray
    metadata: dict
    arrays: dict
    path: str

    @property
    def method(self):
        return self.metadata["method"]


def save_artifact(
    path,
    values,
    *,
    method,
    dims_metadata,
    fingerprint_key,
    fingerprint,
    num_prompt_tokens,
    initializer="unknown",
    task="default",
    offset=0,
    arrays=None,
    **extra,
):
    """Write an artifact of any method atomically (temporary file, rename).

    Args:
        path: destination, ending in `.npz`.
        values: the trained array (array, tensor or variable).
        method: str, the method's name.
        dims_metadata: dict of the model dims the method records.
        fingerprint_key, fingerprint: the base's fingerprint and its key.
        num_prompt_tokens: int, P.
        initializer: str describing how the prompt was initialised.
        task: str, the task's name (used by multi-task export).
        offset: int, where the prompt sits in the sequence.
        arrays: optional dict of further arrays to store.
        **extra: more JSON-serialisable metadata.

    Returns:
        The metadata dict that was written.
    """
    path = _check_path(path)
    values = np.asarray(_as_numpy(values), np.float32)
    _check_finite(values, path)
    arrays = {
        k: np.asarray(_as_numpy(v), np.float32) for k, v in (arrays or {}).items()
    }
    for name, array in arrays.items():
        _check_finite(array, path, f"array {name!r}")
    metadata = {
        "format": FORMAT,
        "method": str(method),
        "num_prompt_tokens": int(num_prompt_tokens),
        "shape": [int(d) for d in values.shape],
        "dtype": "float32",
        "initializer": str(initializer),
        "task": str(task),
        "offset": int(offset),
        **dims_metadata,
        fingerprint_key: fingerprint,
        **extra,
    }
    payload = {"prompt": values, "metadata": np.array(json.dumps(metadata))}
    payload.update({EXTRA_PREFIX + k: v for k, v in arrays.items()})
    atomic_write(path, lambda f: np.savez(f, **payload), suffix=SUFFIX)
    return metadata


def load_artifact(path):
    """Read an artifact of any method and check its format and contents.

    Returns:
        An `Artifact`.

    Raises:
        ValueError: if the file is missing, truncated, of another format,
            lacks metadata, or holds a prompt whose shape differs from its
            metadata or values that are NaN/Inf.
    """
    path = _check_path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            values = np.array(data["prompt"])
            metadata = json.loads(str(data["metadata"]))
            arrays = {
                key[len(EXTRA_PREFIX) :]: np.array(data[key], np.float32)
                for key in data.files
                if key.startswith(EXTRA_PREFIX)
            }
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(
            f"Could not read a prompt artifact from {path!r}: {e}. The file is "
            "missing, truncated or not written by tf_softprompt."
        ) from e
    if not isinstance(metadata, dict) or metadata.get("format") not in FORMATS:
        raise ValueError(
            f"{path!r} is not a tf-softprompt prompt artifact. Received metadata "
            f"format={getattr(metadata, 'get', lambda k: None)('format')!r}; "
            f"expected one of {list(FORMATS)}."
        )
    if metadata["format"] == "tf-softprompt/1":
        metadata.setdefault("method", "embedding")
        if "num_prompt_tokens" in metadata and "hidden_dim" in metadata:
            metadata.setdefault(
                "shape", [metadata["num_prompt_tokens"], metadata["hidden_dim"]]
            )
    missing = sorted(set(_REQUIRED_KEYS) - set(metadata))
    if missing:
        raise ValueError(
            f"{path!r} is corrupt: its metadata lacks {missing}. Re-save the "
            "prompt with tf_softprompt."
        )
    if list(values.shape) != list(metadata["shape"]):
        raise ValueError(
            f"{path!r} is corrupt: the prompt has shape {list(values.shape)} "
            f"but its metadata says {list(metadata['shape'])}."
        )
    _check_finite(values, path)
    for name, array in arrays.items():
        _check_finite(array, path, f"array {name!r}")
    return Artifact(values.astype(np.float32), metadata, arrays, path)


def check_artifact(loaded, method, dims_metadata, fingerprint_key, fingerprint):
    """Check that an artifact fits a model: method, dims and base.

    Args:
        loaded: an `Artifact`.
        method: str, the model's method.
        dims_metadata: dict of the model's dims (`method.shape_metadata`).
        fingerprint_key, fingerprint: the model's base fingerprint; a
            `None` fingerprint is not checked.

    Raises:
        ValueError: naming the key, both values and the fix.
    """
    path, metadata = loaded.path, loaded.metadata
    if metadata["method"] != method:
        raise ValueError(
            f"The prompt in {path!r} was trained with method="
            f"{metadata['method']!r}, but the model uses method={method!r}. "
            f"Enable prompt tuning with method={metadata['method']!r} to use it."
        )
    for key, expected in dims_metadata.items():
        if key in metadata and metadata[key] != expected:
            raise ValueError(
                f"The prompt in {path!r} was trained for {key}="
                f"{metadata[key]}, but the model has {key}={expected}. Load "
                "it into the base model it was trained on."
            )
    if fingerprint is None:
        return
    recorded = metadata.get(fingerprint_key)
    if recorded is None:
        raise ValueError(
            f"{path!r} is corrupt: its metadata lacks {fingerprint_key!r}, "
            "which identifies the base it was trained on."
        )
    if recorded != fingerprint:
        what = "vocabulary" if fingerprint_key == "vocab_fingerprint" else "weights"
        raise ValueError(
            f"The prompt in {path!r} was trained on a base with {what} "
            f"fingerprint {recorded} ({fingerprint_key}), but this model's is "
            f"{fingerprint}. Load it into the base model it was trained on."
        )


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
    """Write a `[P, H]` prompt (forms 1 and 2) atomically.

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
    return save_artifact(
        path,
        values,
        method=method,
        dims_metadata={
            "hidden_dim": int(values.shape[1]),
            "vocab_size": int(vocab.shape[0]),
        },
        fingerprint_key="vocab_fingerprint",
        fingerprint=vocab_fingerprint(vocab),
        num_prompt_tokens=int(values.shape[0]),
        initializer=initializer,
        task=task,
        offset=offset,
        **extra,
    )


def read_metadata(path):
    """The metadata dict of an artifact of any method, checked for format."""
    return load_artifact(path).metadata


def load_prompt(path, vocabulary=None, *, hidden_dim=None, vocab_size=None):
    """Read and check a `[P, H]` prompt artifact (forms 1 and 2).

    Args:
        path: an artifact written by `save_prompt`.
        vocabulary: optional `[V, H]` matrix of the model the prompt will be
            loaded into; H, V and the fingerprint must then match.
        hidden_dim, vocab_size: optional expected H and V, checked when no
            vocabulary is given.

    Returns:
        `(values, metadata)`: the `[P, H]` float32 array and the metadata dict.
    """
    loaded = load_artifact(path)
    metadata = loaded.metadata
    if metadata["method"] not in _VOCAB_METHODS:
        raise ValueError(
            f"{loaded.path!r} holds a method={metadata['method']!r} prompt of shape "
            f"{metadata['shape']}, not a [num_prompt_tokens, hidden_dim] prompt. "
            "Load it with `tf_softprompt.hub` (`handle.load_prompt`) into a model "
            f"with method={metadata['method']!r}."
        )
    for key in ("hidden_dim", "vocab_size", "vocab_fingerprint"):
        if key not in metadata:
            raise ValueError(
                f"{loaded.path!r} is corrupt: its metadata lacks {[key]}. Re-save "
                "the prompt with tf_softprompt.save_prompt."
            )
    expected = {}
    fingerprint = None
    if vocabulary is not None:
        vocab = _as_numpy(vocabulary)
        vocab_size, hidden_dim = vocab.shape
        fingerprint = vocab_fingerprint(vocab)
    if hidden_dim is not None:
        expected["hidden_dim"] = int(hidden_dim)
    if vocab_size is not None:
        expected["vocab_size"] = int(vocab_size)
    check_artifact(
        loaded, metadata["method"], expected, "vocab_fingerprint", fingerprint
    )
    return loaded.values, metadata
