"""What a new user meets at the command line: refusals before any work,
nothing recorded lost, one-line errors, readable progress and results.

Each case runs the real CLI (`cli.main`, or the installed script where the
process's own stderr matters) and asserts the exit code, that no
`Traceback` is printed, the line count and the message, and for the
lost-work cases the files before and after. The runs use a tiny random
BERT preset (`tiny_models.save_tiny_bert_preset`) on the embedded
sentiment texts.
"""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import tensorflow as tf
from tiny_models import embedded_texts, save_tiny_bert_preset

from tf_softprompt import cli, data

# Subprocesses start outside the repository, so that `python -c` and `-m`
# import the installed package (as CI does), not the source tree.
ELSEWHERE = tempfile.gettempdir()

TRAIN_ROWS, EVAL_ROWS = 48, 16


def run_cli(argv, stdin=None):
    """`(exit code, stdout, stderr)` of an in-process CLI call."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(argv)
    finally:
        sys.stdin = saved
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code, stderr, command, *fragments):
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"tf-softprompt {command}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def snapshot(directory):
    """`{relative path: (bytes, mtime_ns)}` of every file under `directory`."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, directory)] = (
                    f.read(),
                    os.stat(path).st_mtime_ns,
                )
    return files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ux-data")
    paths = []
    for path, count in zip(data.default_dataset(), (TRAIN_ROWS, EVAL_ROWS)):
        examples = data.read_examples(path)
        target = directory / os.path.basename(path)
        with open(target, "w", encoding="utf-8") as f:
            f.write("text\tlabel\n")
            for text, label in list(zip(examples.texts, examples.labels))[:count]:
                f.write(f"{text}\t{label}\n")
        paths.append(str(target))
    return paths


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ux-preset") / "base"
    return save_tiny_bert_preset(directory, embedded_texts())


def train_args(out, preset, files, *extra):
    return [
        "train",
        "--out",
        str(out),
        "--model",
        preset,
        "--data",
        files[0],
        "--eval-data",
        files[1],
        "--method",
        "prefix",
        "--prompt-length",
        "3",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--sequence-length",
        "16",
        *extra,
    ]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, preset, files):
    """A finished one-epoch run (with its baseline), and what train printed."""
    out = tmp_path_factory.mktemp("ux-run") / "run"
    code, stdout, stderr = run_cli(train_args(out, preset, files))
    assert code == 0, stderr
    return out, stdout, stderr


# --- refused before any work --------------------------------------------------


def test_sequence_length_beyond_the_position_limit_is_refused_before_training(
    tmp_path, preset, files
):
    out = tmp_path / "run"
    for method in ("prefix", "embedding"):
        argv = train_args(out, preset, files, "--method", method)
        argv[argv.index("--sequence-length") + 1] = "100000"
        code, stdout, stderr = run_cli(argv)
        assert_one_line_error(code, stderr, "train", "100000", "max_sequence_length=96")
        assert "Epoch" not in stdout
        assert not out.exists()  # nothing written: the corrected run starts clean
    code, _, stderr = run_cli(train_args(out, preset, files, "--no-baseline"))
    assert code == 0, stderr


def test_corrected_command_is_accepted_where_a_refused_run_left_files(
    tmp_path, preset, files
):
    # An earlier version left checkpoints/run-config.json behind; without a
    # checkpoint it belongs to no run, and the corrected command goes on.
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "run-config.json").write_text('{"sequence_length": 1}')
    code, _, stderr = run_cli(train_args(out, preset, files, "--no-baseline"))
    assert code == 0, stderr


def test_unknown_preset_offline_is_one_line_naming_local_directories(tmp_path):
    started = time.perf_counter()
    code, _, stderr = run_cli(
        ["train", "--out", str(tmp_path / "o"), "--model", "bert_tiny_en_uncased"]
    )
    assert_one_line_error(
        code, stderr, "train", "'bert_tiny_en_uncased'", "--model DIR"
    )
    assert not (tmp_path / "o").exists()
    assert time.perf_counter() - started < 120


def test_missing_model_directory_is_one_line(tmp_path):
    code, _, stderr = run_cli(
        ["train", "--out", str(tmp_path / "o"), "--model", str(tmp_path / "nope")]
    )
    assert_one_line_error(code, stderr, "train", "does not exist")


# --- nothing recorded is lost -------------------------------------------------


def test_rerunning_a_finished_run_changes_no_file(finished, preset, files):
    out, first_stdout, _ = finished
    before = snapshot(out)
    code, stdout, stderr = run_cli(train_args(out, preset, files))
    assert code == 0, stderr
    assert snapshot(out) == before  # contents and modification times
    assert "Baseline" not in stdout and "Epoch" not in stdout
    metrics = json.loads(stdout.strip().splitlines()[-1])
    assert metrics == json.loads(first_stdout.strip().splitlines()[-1])
    assert metrics["final_loss"] is not None
    assert metrics["baseline_accuracy"] is not None


def test_more_epochs_continue_a_finished_run_as_one_longer_run(
    finished, tmp_path, preset, files
):
    out, _, _ = finished
    continued = tmp_path / "continued"
    shutil.copytree(out, continued)
    code, stdout, stderr = run_cli(
        train_args(continued, preset, files, "--epochs", "2")
    )
    assert code == 0, stderr
    metrics = json.loads(stdout.strip().splitlines()[-1])
    assert (metrics["epochs"], metrics["steps"]) == (2, 12)
    assert metrics["resumed_from_step"] == 6
    straight = tmp_path / "straight"
    code, _, stderr = run_cli(train_args(straight, preset, files, "--epochs", "2"))
    assert code == 0, stderr
    with np.load(continued / "prompt.npz") as a, np.load(straight / "prompt.npz") as b:
        np.testing.assert_allclose(a["prompt"], b["prompt"], rtol=0, atol=1e-6)
    with open(straight / "metrics.json") as f:
        assert json.load(f)["baseline_accuracy"] == metrics["baseline_accuracy"]


def test_fewer_epochs_than_trained_are_refused(finished, tmp_path, preset, files):
    out, _, _ = finished
    longer = tmp_path / "longer"
    shutil.copytree(out, longer)
    with open(longer / "metrics.json") as f:
        metrics = json.load(f)
    metrics["epochs"] = 3
    (longer / "metrics.json").write_text(json.dumps(metrics))
    before = snapshot(longer)
    code, _, stderr = run_cli(train_args(longer, preset, files))
    assert_one_line_error(code, stderr, "train", "trained for 3 epochs", "--epochs 3")
    assert snapshot(longer) == before


def test_other_settings_are_still_refused(finished, tmp_path, preset, files):
    out, _, _ = finished
    other = tmp_path / "other"
    shutil.copytree(out, other)
    code, _, stderr = run_cli(train_args(other, preset, files, "--seed", "7"))
    assert_one_line_error(code, stderr, "train", "different settings (seed)")


# --- readable progress and results --------------------------------------------


def test_train_shows_plain_epoch_lines_a_summary_and_the_json_last(finished):
    out, stdout, _ = finished
    assert "\r" not in stdout and "\x1b" not in stdout  # not a terminal
    lines = stdout.strip().splitlines()
    epoch = [line for line in lines if line.startswith("Epoch 1/1: ")]
    assert len(epoch) == 2  # the prompt run and the baseline
    for name in ("loss", "learning_rate 0.0100", "val_loss", "val_accuracy"):
        assert name in epoch[0]
    text = "\n".join(lines[:-1])
    assert "precision" in text and "recall" in text and "f1" in text
    assert "Confusion matrix" in text
    assert f"Run written to {out}" in text
    assert "Next: tf-softprompt predict --out" in text
    metrics = json.loads(lines[-1])
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.sum() == EVAL_ROWS
    assert np.trace(matrix) / EVAL_ROWS == pytest.approx(metrics["accuracy"])


def test_tensorboard_has_validation_figures_and_the_learning_rate(finished):
    out, _, _ = finished
    tags = {}
    log_dir = out / "logs" / "prompt"
    for name in os.listdir(log_dir):
        for event in tf.compat.v1.train.summary_iterator(str(log_dir / name)):
            for value in event.summary.value:
                tags[value.tag] = float(tf.make_ndarray(value.tensor))
    for tag in ("loss", "epoch_loss", "val_loss", "val_accuracy", "learning_rate"):
        assert tag in tags, sorted(tags)
    assert tags["learning_rate"] == pytest.approx(0.01)
    with open(out / "metrics.json") as f:
        assert tags["val_accuracy"] == pytest.approx(json.load(f)["accuracy"])


def test_json_flag_prints_the_json_line_only(finished, preset, files):
    out, _, _ = finished
    code, stdout, _ = run_cli(["eval", "--out", str(out), "--data", files[1], "--json"])
    assert code == 0
    assert len(stdout.strip().splitlines()) == 1
    json.loads(stdout)


def test_predict_warns_about_truncated_texts_and_keeps_non_ascii(finished):
    out, _, _ = finished
    long_text = " ".join(["good"] * 30)
    code, stdout, stderr = run_cli(
        ["predict", "--out", str(out), "Ce film était génial 🎬", long_text]
    )
    assert code == 0
    assert stderr.strip() == (
        "tf-softprompt predict: warning: 1 of 2 texts are longer than the 14 "
        "tokens this run keeps; their ends were cut (train with a larger "
        "--sequence-length to keep more)."
    )
    assert '"Ce film était génial 🎬"' in stdout  # not \\u-escaped


def test_predict_reads_standard_input(finished):
    out, _, _ = finished
    code, stdout, _ = run_cli(
        ["predict", "--out", str(out), "--input", "-"],
        stdin=b"a good film\nsoup\n",
    )
    assert code == 0
    assert [json.loads(x)["text"] for x in stdout.splitlines()] == [
        "a good film",
        "soup",
    ]


def test_non_utf8_input_names_the_file_and_line(finished, tmp_path):
    out, _, _ = finished
    path = tmp_path / "texts.txt"
    path.write_bytes(b"fine\nca\xff va\n")
    code, _, stderr = run_cli(["predict", "--out", str(out), "--input", str(path)])
    assert_one_line_error(code, stderr, "predict", f"{path}, line 2", "not UTF-8")


def test_argparse_errors_are_one_line_and_a_help_hint():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--epochs", "zero"])
    code, stderr = exit_info.value.code, err.getvalue()
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 2, stderr
    assert lines[0].startswith("tf-softprompt train: error: argument --epochs")
    assert lines[1] == "Run `tf-softprompt train --help` for the options."


def test_refused_connection_is_one_line(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for transport in ("--rest", "--grpc"):
        address = (
            f"http://127.0.0.1:{port}" if transport == "--rest" else f"127.0.0.1:{port}"
        )
        code, _, stderr = run_cli(
            ["query", "a good film", "--model", "demo", transport, address]
        )
        assert_one_line_error(code, stderr, "query", "Could not reach TF Serving")


def test_verbose_shows_the_traceback(tmp_path):
    code, _, stderr = run_cli(["eval", "--out", str(tmp_path), "--verbose"])
    assert code == 2
    assert "Traceback" in stderr
    assert stderr.strip().splitlines()[-1].startswith("tf-softprompt eval: error:")


# --- conveniences -----------------------------------------------------------


def _installed(*argv):
    command = shutil.which("tf-softprompt")
    return subprocess.run(
        [command, *argv], capture_output=True, text=True, timeout=120, cwd=ELSEWHERE
    )


def test_version_and_python_dash_m():
    import tf_softprompt

    done = _installed("--version")
    assert done.stdout.strip() == f"tf-softprompt {tf_softprompt.__version__}"
    module = subprocess.run(
        [sys.executable, "-m", "tf_softprompt", "--version"],
        capture_output=True,
        text=True,
        cwd=ELSEWHERE,  # the installed package, not the source tree
    )
    assert module.stdout == done.stdout and module.returncode == 0


def test_help_does_not_import_tensorflow():
    probe = (
        "import sys, time; t = time.perf_counter(); from tf_softprompt import cli; "
        "cli.build_parser(); print(sorted(m for m in ('tensorflow', 'keras', "
        "'keras_hub') if m in sys.modules), time.perf_counter() - t)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=ELSEWHERE,
    )
    imported, seconds = done.stdout.split("]")
    assert imported == "["  # none of them
    # Measured here: 0.03 s to build the parser, 0.6 s for `--help` with
    # the interpreter's start.
    assert float(seconds) < 1.0
    started = time.perf_counter()
    assert _installed("train", "--help").returncode == 0
    print(f"tf-softprompt train --help: {time.perf_counter() - started:.2f} s")


def test_no_tensorflow_log_line_reaches_stderr(finished, files):
    out, _, _ = finished
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(
        [shutil.which("tf-softprompt"), "eval", "--out", str(out), "--data", files[1]],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == ""
