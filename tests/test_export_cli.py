"""`tf-softprompt train` then `tf-softprompt export`, checked end to end.

Two tiny runs (the CLI's random 2-layer BERT, one epoch) are trained
in-process, exported alone and together, and every export runs in one
fresh TF1 session-loader process; its answers must equal the trained
models' own predictions (`training.load_trained(run).predict`).
"""

import contextlib
import io
import json
import os

import numpy as np
import pytest
from tiny_models import embedded_texts, save_tiny_bert_preset

from tf_softprompt import cli, training
from tf_softprompt.serving import loaders

TEXTS = ["What a lovely, warm film.", "Cold soup and rude staff.", ""]
PROVIDER = "tf_softprompt.export.cli:add_export_parser"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    preset = save_tiny_bert_preset(root / "base", embedded_texts())
    assert PROVIDER in cli.SUBCOMMAND_PROVIDERS  # shipped, not patched in
    dirs = {}
    for name, length in (("sst", 6), ("short", 3)):
        dirs[name] = str(root / name)
        argv = ["train", "--model", preset, "--out", dirs[name]]
        argv += ["--epochs", "1", "--prompt-length", str(length)]
        argv += ["--sequence-length", "16", "--no-baseline", "--quiet"]
        argv += ["--learning-rate", "0.1"]
        assert cli.main(argv) == 0
    single = root / "models" / "demo"
    argv = ["export", dirs["sst"], "--out", str(single), "--version", "1"]
    assert cli.main(argv) == 0
    multi = root / "models" / "multi"
    argv = ["export", dirs["sst"], dirs["short"], "--out", str(multi)]
    argv += ["--version", "1", "--task", "sst", "--task", "short"]
    assert cli.main(argv) == 0
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        again = cli.main(
            ["export", dirs["sst"], "--out", str(single), "--version", "1"]
        )
    expected = {n: training.load_trained(d).predict(TEXTS) for n, d in dirs.items()}
    text = np.array([t.encode() for t in TEXTS], dtype=object)
    jobs = [
        {
            "export_dir": str(single / "1"),
            "signature": "serving_default",
            "inputs": {"text": text},
        },
    ]
    for task in ("sst", "short"):
        jobs.append(
            {
                "export_dir": str(multi / "1"),
                "signature": "serving_default",
                "inputs": {
                    "text": text,
                    "task": np.array([task.encode()] * 3, dtype=object),
                },
            }
        )
    mixed = np.array([b"sst", b"short", b"short"], dtype=object)
    jobs.append(
        {
            "export_dir": str(multi / "1"),
            "signature": "serving_default",
            "inputs": {"text": text, "task": mixed},
        }
    )
    return {
        "dirs": dirs,
        "single": str(single / "1"),
        "multi": str(multi / "1"),
        "expected": expected,
        "results": loaders.run_session_loader(jobs),
        "again": (again, stderr.getvalue()),
    }


def _probabilities(result):
    assert "outputs" in result, result
    return result["outputs"]["probabilities"]


def test_single_run_export_answers_like_the_trained_model(runs):
    np.testing.assert_allclose(
        _probabilities(runs["results"][0]), runs["expected"]["sst"], atol=1e-5
    )


def test_multi_run_export_gives_each_task_its_prompt_and_head(runs):
    for i, task in enumerate(("sst", "short")):
        np.testing.assert_allclose(
            _probabilities(runs["results"][1 + i]), runs["expected"][task], atol=1e-5
        )
    # The two runs really differ, so a swapped prompt or head would show.
    assert np.abs(runs["expected"]["sst"] - runs["expected"]["short"]).max() > 1e-4
    mixed = _probabilities(runs["results"][3])
    np.testing.assert_allclose(mixed[0], runs["expected"]["sst"][0], atol=1e-5)
    np.testing.assert_allclose(mixed[1:], runs["expected"]["short"][1:], atol=1e-5)


def test_export_records_what_serving_needs(runs):
    with open(os.path.join(runs["multi"], "assets.extra", "tf_softprompt.json")) as f:
        info = json.load(f)
    assert info["tasks"] == ["sst", "short"]
    assert info["prompt_lengths"] == [6, 3]
    assert info["text_positions"] == 16  # the runs' sequence_length
    assert info["labels"] == ["negative", "positive"]


def test_exporting_an_existing_version_fails_cleanly(runs):
    code, message = runs["again"]
    assert code == 2
    assert "already exists" in message and "--version 2" in message
