"""The `tf-softprompt` CLI: train, eval, predict, info, errors, the registry,
and one run of the real embedded default (packaged MiniLM + sentiment set).

Most tests share one `train` run of a tiny random BERT preset
(`tiny_models.save_tiny_bert_preset`, passed as `--model DIR`) on JSONL
files with custom columns.
"""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tiny_models import embedded_texts, save_tiny_bert_preset

from tf_softprompt import cli, data, packaged_model

TRAIN_ROWS, EVAL_ROWS = 64, 16


def run_cli(argv):
    """`(exit code, stdout, stderr)` of an in-process CLI call."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """JSONL train/eval files with `review`/`sentiment` keys, good/bad labels."""
    directory = tmp_path_factory.mktemp("cli-data")
    names = {"positive": "good", "negative": "bad"}
    paths = []
    for path, count in zip(data.default_dataset(), (TRAIN_ROWS, EVAL_ROWS)):
        examples = data.read_examples(path)
        target = directory / (os.path.basename(path)[:-4] + ".jsonl")
        with open(target, "w", encoding="utf-8") as f:
            for text, label in list(zip(examples.texts, examples.labels))[:count]:
                f.write(json.dumps({"review": text, "sentiment": names[label]}))
                f.write("\n")
        paths.append(str(target))
    return paths


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cli-preset") / "base"
    return save_tiny_bert_preset(directory, embedded_texts())


@pytest.fixture(scope="module")
def run(tmp_path_factory, files, preset):
    out = str(tmp_path_factory.mktemp("cli-run") / "run")
    code, stdout, stderr = run_cli(
        [
            "train",
            "--out",
            out,
            "--model",
            preset,
            "--data",
            files[0],
            "--eval-data",
            files[1],
            "--text-column",
            "review",
            "--label-column",
            "sentiment",
            "--method",
            "embedding",
            "--prompt-length",
            "3",
            "--init",
            "label-words",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--learning-rate",
            "0.05",
            "--sequence-length",
            "16",
            "--quiet",
        ]
    )
    assert code == 0, stderr
    return out, json.loads(stdout.strip().splitlines()[-1])


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_train_writes_prompt_head_checkpoints_logs_run_and_metrics(run, preset):
    out, printed = run
    metrics = read_json(os.path.join(out, "metrics.json"))
    assert metrics == printed
    assert metrics["train_examples"] == TRAIN_ROWS
    assert metrics["eval_examples"] == EVAL_ROWS
    assert metrics["labels"] == ["bad", "good"]
    assert metrics["steps"] == TRAIN_ROWS // 8
    for key in ("accuracy", "baseline_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
        # Accuracy over 16 examples is a multiple of 1/16.
        assert (metrics[key] * EVAL_ROWS) == pytest.approx(
            round(metrics[key] * EVAL_ROWS)
        )

    record = read_json(os.path.join(out, "run.json"))
    assert record["model"] == record["model_path"] == preset
    assert record["task_class"] == "PooledTextClassifier"
    assert (record["pooling"], record["normalize"]) == (
        "pooler",
        False,
    )  # a keras-hub preset
    assert record["labels"] == ["bad", "good"]
    assert (record["sequence_length"], record["prompt_length"]) == (16, 3)
    assert record["offset"] == 1  # after [CLS], which the pooler reads
    assert record["head_variables"] == ["logits/kernel", "logits/bias"]

    with np.load(os.path.join(out, "prompt.npz")) as f:
        assert f["prompt"].shape == (3, 16)
        meta = json.loads(str(f["metadata"]))
    assert "from_label_words(['bad', 'good'])" in meta["initializer"]
    with np.load(os.path.join(out, "head.weights.npz")) as f:
        assert f["logits/kernel"].shape == (16, 2)

    latest = tf.train.latest_checkpoint(os.path.join(out, "checkpoints"))
    assert latest.endswith("ckpt-8")

    losses = []
    log_dir = os.path.join(out, "logs", "prompt")
    for name in os.listdir(log_dir):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(log_dir, name)):
            for value in event.summary.value:
                if value.tag == "loss":
                    losses.append(float(tf.make_ndarray(value.tensor)))
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert os.listdir(os.path.join(out, "logs", "baseline"))


def test_eval_reloads_prompt_and_head_and_reproduces_train_accuracy(run, files):
    out, metrics = run
    code, stdout, _ = run_cli(["eval", "--out", out, "--data", files[1], "--json"])
    assert code == 0
    result = json.loads(stdout)  # --json: the JSON line alone
    assert result["eval_examples"] == EVAL_ROWS
    assert result["accuracy"] == metrics["accuracy"]
    assert result["confusion_matrix"] == metrics["confusion_matrix"]
    assert result["per_class"] == metrics["per_class"]


def test_predict_prints_labels_and_probabilities_per_text(run, files):
    out, metrics = run
    code, stdout, _ = run_cli(
        ["predict", "--out", out, "A lovely day.", "--input", files[1]]
    )
    assert code == 0
    lines = [json.loads(line) for line in stdout.strip().splitlines()]
    assert len(lines) == 1 + EVAL_ROWS
    assert lines[0]["text"] == "A lovely day."
    for line in lines:
        probabilities = line["probabilities"]
        assert sorted(probabilities) == ["bad", "good"]
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert line["label"] == max(probabilities, key=probabilities.get)
    with open(files[1], encoding="utf-8") as f:
        truth = [json.loads(x)["sentiment"] for x in f]
    hits = [p["label"] == t for p, t in zip(lines[1:], truth)]
    assert np.mean(hits) == metrics["accuracy"]


def test_info_prints_run_prompt_and_metrics_as_json(run):
    out, metrics = run
    code, stdout, _ = run_cli(["info", out])
    assert code == 0
    info = json.loads(stdout)
    assert info["metrics"] == metrics
    assert info["run"]["labels"] == ["bad", "good"]
    prompt = info["prompt"]
    assert (prompt["num_prompt_tokens"], prompt["hidden_dim"]) == (3, 16)
    assert prompt["offset"] == 1 and prompt["format"] == "tf-softprompt/2"
    code, stdout, _ = run_cli(["info", os.path.join(out, "prompt.npz")])
    assert json.loads(stdout) == {"prompt": prompt}


def test_malformed_row_exits_2_naming_file_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("text,label\nfine,pos\nbroken,neg,extra\n", encoding="utf-8")
    code, _, stderr = run_cli(
        ["train", "--out", str(tmp_path / "o"), "--data", str(path)]
    )
    assert code == 2
    assert f"{path}, line 3: expected 2 fields" in stderr
    assert not (tmp_path / "o").exists()


def test_eval_without_a_run_is_explained(tmp_path):
    code, _, stderr = run_cli(["eval", "--out", str(tmp_path)])
    assert code == 2
    assert "run.json does not exist" in stderr


def test_registry_adds_a_provider_subcommand(monkeypatch):
    def add_hello(subparsers):
        parser = subparsers.add_parser("hello")
        parser.add_argument("--name", default="world")
        parser.set_defaults(func=lambda args: print(f"hello {args.name}") or 7)

    monkeypatch.setattr(
        cli, "SUBCOMMAND_PROVIDERS", [*cli.SUBCOMMAND_PROVIDERS, add_hello]
    )
    assert run_cli(["hello", "--name", "tpu"]) == (7, "hello tpu\n", "")
    commands = cli.build_parser()._subparsers._group_actions[0].choices
    assert {"train", "eval", "predict", "info", "hello"} <= set(commands)


def test_embedded_default_trains_minilm_on_the_packaged_dataset(tmp_path):
    """Exactly `tf-softprompt train --out DIR` (about 1m30s on 2 CPU cores).

    The default method is prefix tuning over the checkpoint's mean pooling.
    Measured here: accuracy 0.9054 (67/74 held-out sentences) vs baseline
    0.8919 (66/74); with the BERT pooler it was 0.919 vs 0.838.
    """
    command = shutil.which("tf-softprompt")
    command = [command] if command else [sys.executable, "-m", "tf_softprompt"]
    out = tmp_path / "default"
    result = subprocess.run(
        [*command, "train", "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_json(out / "metrics.json")
    record = read_json(out / "run.json")
    assert record["model"] == "default"
    assert record["model_path"] == packaged_model.model_dir()
    assert (record["prompt_length"], record["sequence_length"]) == (20, 24)
    assert metrics["data"] == "embedded:sentiment"
    assert (metrics["train_examples"], metrics["eval_examples"]) == (224, 74)
    assert metrics["labels"] == ["negative", "positive"]
    # Held-out accuracy: well above chance (0.5) and at least the no-prompt
    # baseline's (same frozen model, head, seed, steps and learning rate).
    assert metrics["accuracy"] >= 0.85
    assert metrics["baseline_accuracy"] > 0.6
    assert metrics["accuracy"] >= metrics["baseline_accuracy"]
    assert metrics["steps"] == 12 * (224 // 16)
    assert record["method"] == "prefix"
    with np.load(out / "prompt.npz") as f:
        # L x 2 x P x kv_heads x head_dim of all-MiniLM-L6-v2.
        assert f["prompt"].shape == (6, 2, 20, 12, 32)
    assert metrics["trainable_parameters"] == 6 * 2 * 20 * 12 * 32 + 384 * 2 + 2


def _startup_lines():
    """What importing TensorFlow prints on stderr in a bare process here."""
    bare = subprocess.run(
        [sys.executable, "-c", "import tensorflow, keras_hub"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
    )
    return [line for line in bare.stderr.splitlines() if line.strip()]


def _digitless(line):
    return "".join(c for c in line if not c.isdigit())


def test_cli_is_quiet_unless_verbose(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    command = [shutil.which("tf-softprompt"), "train", "--help"]
    quiet = subprocess.run(command, capture_output=True, text=True, env=env)
    assert quiet.returncode == 0
    assert quiet.stdout.startswith("usage: tf-softprompt train")
    assert quiet.stderr == ""
    startup = _startup_lines()
    if startup:  # this TensorFlow build prints start-up lines: --verbose shows them
        # (`--help` imports no TensorFlow; `eval` does, then fails.)
        verbose = subprocess.run(
            [shutil.which("tf-softprompt"), "eval", "--out", str(tmp_path)]
            + ["--verbose"],
            capture_output=True,
            text=True,
            env=env,
        )
        assert verbose.returncode == 2
        shown = {_digitless(line) for line in verbose.stderr.splitlines()}
        assert {_digitless(line) for line in startup} <= shown
    # Errors still reach stderr.
    failed = subprocess.run(
        [shutil.which("tf-softprompt"), "info", str(tmp_path / "missing.npz")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert failed.returncode == 2
    assert failed.stderr.startswith("tf-softprompt info: error: Could not read")


def test_predict_reloads_exactly_the_trained_prompt_and_head(run, files, preset):
    # The reference is rebuilt here from the preset and the two saved arrays
    # (numpy), not through load_trained; a reload that dropped the prompt or
    # the head would differ from it.
    import keras_hub

    from tf_softprompt import hub
    from tf_softprompt.training import run_dir

    out, _ = run
    texts = data.read_examples(files[1], "review", "sentiment").texts
    code, stdout, _ = run_cli(["predict", "--out", out, *texts])
    assert code == 0
    served = np.array(
        [
            [json.loads(line)["probabilities"][k] for k in ("bad", "good")]
            for line in stdout.strip().splitlines()
        ]
    )
    with np.load(os.path.join(out, "prompt.npz")) as saved:
        prompt = saved["prompt"]
    with np.load(os.path.join(out, "head.weights.npz")) as saved:
        kernel, bias = saved["logits/kernel"], saved["logits/bias"]
    preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
        preset, sequence_length=16
    )
    model = keras_hub.models.TextClassifier.from_preset(
        preset, num_classes=2, preprocessor=None
    )
    handle = hub.enable_prompt_tuning(model, 3, offset=1)
    features = preprocessor(tf.constant(texts))

    def logits(prompt_values, head):
        handle.prompt.assign(prompt_values)
        model.output_dense.kernel.assign(head[0])
        model.output_dense.bias.assign(head[1])
        return model(features).numpy()

    want = logits(prompt, (kernel, bias))
    np.testing.assert_allclose(served, tf.nn.softmax(want).numpy(), atol=2e-6)
    reloaded = run_dir.load_trained(out)
    got = reloaded.model(features).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
    # This tiny random BERT's logits move little with the prompt, but far
    # more than the tolerance: the comparison sees a dropped prompt or head.
    assert np.abs(got - logits(0 * prompt, (kernel, bias))).max() > 1e-5
    assert np.abs(got - logits(prompt, (0 * kernel, bias))).max() > 1e-5


def test_predict_prints_no_tensorflow_start_up_lines(run):
    # predict runs the model: device discovery and graph building included.
    out, _ = run
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(
        [shutil.which("tf-softprompt"), "predict", "--out", out, "a good film"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["text"] == "a good film"
    # Nothing at all: neither start-up lines nor the ones ops print while
    # running (oneDNN's "supports DT_INT64 only on platforms with AVX-512").
    assert done.stderr == ""
