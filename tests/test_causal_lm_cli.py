"""Causal-LM prompt tuning from the command line (`train --task causal-lm`,
`eval`, `generate`, `export`), on tiny GPT-2 and Llama checkpoints written
here in the Hugging Face layout (`hf_checkpoints`).

The completion-only loss is checked against references computed apart
from the code under test: numpy cross-entropy over logits of the base
model called directly, at the positions whose next token is a completion
token (the prompt's tokens found with the tokenizer on the prompt alone),
and, with a prompt, over the logits `handle.call` returns.
"""

import contextlib
import io
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from hf_checkpoints import write_gpt2, write_llama

from tf_softprompt import checkpoints, cli, hub, packaged_model
from tf_softprompt.serving import loaders
from tf_softprompt.training import completion, config, workflow
from tf_softprompt.training.completion_data import (
    encode_pairs,
    scaled_weights,
    special_tokens,
)

WORDS = "good bad great film movie story the a was is not very".split()
T = 32


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def pairs(count, seed):
    """Review/sentiment pairs: the completion is " great" or " bad"."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        words = list(rng.choice(WORDS, rng.integers(2, 5)))
        positive = bool(rng.integers(2))
        words.append("good" if positive else "bad")
        rows.append(
            {
                "prompt": "Review: " + " ".join(words) + ". Sentiment:",
                "completion": " great" if positive else " bad",
            }
        )
    return rows


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("causal")
    write_gpt2(root / "gpt2", seed=0)
    write_llama(root / "llama", seed=0)
    write_jsonl(root / "train.jsonl", pairs(32, 0))
    write_jsonl(root / "held.jsonl", pairs(8, 1))
    return root


def numpy_loss(logits, targets_per_row):
    """Mean cross-entropy of `targets_per_row[i] = [(position, token)]`."""
    total, count = 0.0, 0
    for row, targets in zip(logits, targets_per_row):
        row = row.astype(np.float64)
        shifted = row - row.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        for position, token in targets:
            total -= log_probs[position, token]
            count += 1
    return total / count


def reference_rows(preprocessor, rows):
    """Token rows and loss targets found without `encode_pairs`: the prompt
    is the start token and the prompt's tokens; every later token, end
    token included, is a target of the position before it."""
    tokenizer = preprocessor.tokenizer
    start, end, pad = special_tokens(preprocessor)
    sequences, targets = [], []
    for row in rows:
        prompt = start + [int(t) for t in tokenizer(row["prompt"])]
        answer = [int(t) for t in tokenizer(row["completion"])] + end
        sequence = prompt + answer
        sequences.append(sequence)
        targets.append([(len(prompt) + k - 1, token) for k, token in enumerate(answer)])
    width = max(len(s) for s in sequences) - 1
    token_ids = np.full((len(rows), width), pad, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, sequence in enumerate(sequences):
        token_ids[i, : len(sequence) - 1] = sequence[:-1]
        mask[i, : len(sequence) - 1] = True
    return {"token_ids": token_ids, "padding_mask": mask}, targets


@pytest.fixture(scope="module")
def gpt2(root):
    preprocessor = checkpoints.load_causal_lm_preprocessor(str(root / "gpt2"), T)
    return preprocessor, pairs(8, 3)


def trainer_loss(model, encoded, batch):
    """The loss `Trainer` differentiates for one global batch."""
    weights = scaled_weights(encoded.weights[:batch], batch)
    labels = {"targets": encoded.targets[:batch], "weights": weights}
    features = {
        "token_ids": encoded.token_ids[:batch],
        "padding_mask": encoded.padding_mask[:batch],
    }
    per_example = completion.completion_loss(labels, model(features))
    return float(tf.reduce_sum(per_example)) / batch


def test_completion_loss_of_the_base_equals_numpy_at_completion_positions(root, gpt2):
    preprocessor, rows = gpt2
    lm, _ = checkpoints.load_causal_lm(str(root / "gpt2"), T, preprocessor)
    features, targets = reference_rows(preprocessor, rows)
    want = numpy_loss(np.asarray(lm(features)), targets)
    encoded = encode_pairs(
        preprocessor, [r["prompt"] for r in rows], [r["completion"] for r in rows], T
    )
    assert trainer_loss(lm, encoded, len(rows)) == pytest.approx(want, rel=1e-5)
    total, count = completion.token_loss(lm, encoded, 3)
    assert total / count == pytest.approx(want, rel=1e-5)
    assert count == sum(len(t) for t in targets)
    # The loss one position off (each target read one position earlier) is
    # far from it: the comparison sees a shift.
    shifted = [[(p - 1, t) for p, t in row] for row in targets]
    assert abs(numpy_loss(np.asarray(lm(features)), shifted) - want) > 0.05


@pytest.mark.parametrize("method", ["prefix", "embedding"])
def test_completion_loss_with_a_prompt_equals_numpy_over_handle_call(
    root, gpt2, method
):
    preprocessor, rows = gpt2
    lm, _ = checkpoints.load_causal_lm(str(root / "gpt2"), T, preprocessor)
    handle = hub.enable_prompt_tuning(lm, 4, method=method)
    handle.assign_prompt(
        np.random.default_rng(0).normal(0, 1.0, handle.table.shape).astype("float32")
    )
    features, targets = reference_rows(preprocessor, rows)
    logits = np.asarray(handle.call(features))
    assert logits.shape[:2] == features["token_ids"].shape  # the caller's layout
    want = numpy_loss(logits, targets)
    encoded = encode_pairs(
        preprocessor, [r["prompt"] for r in rows], [r["completion"] for r in rows], T
    )
    assert trainer_loss(lm, encoded, len(rows)) == pytest.approx(want, rel=1e-5)
    hub.disable_prompt_tuning(lm)
    base = numpy_loss(np.asarray(lm(features)), targets)
    assert abs(base - want) > 1e-3  # the prompt moves the loss (tolerance ~7e-5)


def test_global_batch_mean_is_over_tokens_not_examples(gpt2):
    preprocessor, _ = gpt2
    rows = [
        {"prompt": "Review: good.", "completion": " great"},
        {"prompt": "Review: bad.", "completion": " a bad bad film"},
    ]
    encoded = encode_pairs(
        preprocessor, [r["prompt"] for r in rows], [r["completion"] for r in rows], T
    )
    weights = scaled_weights(encoded.weights, 2)
    counts = encoded.weights.sum(axis=1)
    assert counts[0] < counts[1]
    # Per token 2 / (all tokens): the longer completion weighs more.
    np.testing.assert_allclose(weights.sum(axis=1), 2 * counts / counts.sum())


def train_argv(root, family, out, *extra):
    return [
        "train",
        "--task",
        "causal-lm",
        "--model",
        str(root / family),
        "--data",
        str(root / "train.jsonl"),
        "--eval-data",
        str(root / "held.jsonl"),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--sequence-length",
        str(T),
        "--prompt-length",
        "4",
        "--learning-rate",
        "0.05",
        "--quiet",
        *extra,
    ]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def trained(request, root):
    """A causal-LM run killed after 3 steps and resumed from the CLI, and
    the same run uninterrupted."""
    family = request.param
    killed = root / f"{family}-killed"
    argv = train_argv(root, family, killed, "--checkpoint-every", "2")

    def kill(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    parser = cli.build_parser()
    with pytest.raises(KeyboardInterrupt):
        workflow.train(
            config.from_arguments(parser.parse_args(argv)), callbacks=[kill], verbose=0
        )
    assert not (killed / "metrics.json").exists()
    code, stdout, stderr = run_cli(argv)
    assert code == 0, stderr
    resumed = json.loads(stdout.strip().splitlines()[-1])
    straight = root / f"{family}-straight"
    code, stdout, stderr = run_cli(train_argv(root, family, straight, "--no-baseline"))
    assert code == 0, stderr
    return family, killed, resumed, straight, json.loads(stdout.splitlines()[-1])


def test_killed_run_resumes_to_the_uninterrupted_prompt(trained):
    _, killed, resumed, straight, metrics = trained
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == 8
    with np.load(killed / "prompt.npz") as a, np.load(straight / "prompt.npz") as b:
        np.testing.assert_allclose(a["prompt"], b["prompt"], rtol=0, atol=1e-6)
    assert resumed["completion_loss"] == pytest.approx(metrics["completion_loss"])


def test_metrics_and_eval_report_completion_figures_and_the_baseline(trained, root):
    family, killed, resumed, _, _ = trained
    for key in ("completion_loss", "perplexity", "exact_match"):
        assert f"baseline_{key}" in resumed
    assert resumed["perplexity"] == pytest.approx(np.exp(resumed["completion_loss"]))
    # The prompt learned something about the completions.
    assert resumed["completion_loss"] < resumed["baseline_completion_loss"] - 0.5
    with open(killed / "run.json") as f:
        record = json.load(f)
    assert record["kind"] == "causal_lm" and record["task_class"].endswith("CausalLM")
    assert (record["prompt_column"], record["completion_column"]) == (
        "prompt",
        "completion",
    )
    code, stdout, stderr = run_cli(
        ["eval", "--out", str(killed), "--data", str(root / "held.jsonl")]
    )
    assert code == 0, stderr
    lines = stdout.strip().splitlines()
    assert lines[0].startswith("On 8 held-out rows: completion loss")
    evaluated = json.loads(lines[-1])
    for key in ("completion_loss", "exact_match", "baseline_completion_loss"):
        assert evaluated[key] == pytest.approx(resumed[key], rel=1e-5)


def test_generate_prints_one_line_per_prompt_and_predict_points_to_it(trained):
    family, killed, *_ = trained
    prompts = ["Review: good film good. Sentiment:", "Review: café 2024"]
    code, stdout, stderr = run_cli(["generate", "--out", str(killed), *prompts])
    assert code == 0, stderr
    records = [json.loads(line) for line in stdout.splitlines()]
    assert [r["prompt"] for r in records] == prompts
    for record in records:
        assert record["text"].startswith(record["prompt"][:10])
        assert record["completion"] and record["text"].endswith(record["completion"])
    code, _, stderr = run_cli(["predict", "--out", str(killed), "a text"])
    assert code == 2 and "tf-softprompt generate --out" in stderr


def test_served_text_equals_generate(trained, tmp_path):
    family, killed, *_ = trained
    prompts = ["Review: good film good. Sentiment:", "Review: bad movie. Sentiment:"]
    code, stdout, stderr = run_cli(["generate", "--out", str(killed), *prompts])
    assert code == 0, stderr
    generated = [json.loads(line)["text"] for line in stdout.splitlines()]
    code, _, stderr = run_cli(
        ["export", str(killed), "--out", str(tmp_path / "models"), "--version", "1"]
    )
    assert code == 0, stderr
    (served,) = loaders.run_session_loader(
        [
            {
                "export_dir": str(tmp_path / "models" / "1"),
                "signature": "serving_default",
                "inputs": {"text": np.array([p.encode() for p in prompts], object)},
            }
        ]
    )
    texts = [t.decode("utf-8", "replace") for t in served["outputs"]["text"]]
    assert texts == generated


# --- bad input ------------------------------------------------------------------


def assert_refused(argv, out, *fragments):
    code, stdout, stderr = run_cli(argv)
    assert code == 2, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    for fragment in fragments:
        assert fragment in stderr, stderr
    assert not os.path.exists(out)


def test_rows_without_or_with_an_empty_completion_name_file_and_line(root, tmp_path):
    out = tmp_path / "o"
    bad = write_jsonl(
        tmp_path / "missing.jsonl", [*pairs(3, 0), {"prompt": "Review: fine."}]
    )
    argv = train_argv(root, "gpt2", out)
    argv[argv.index("--data") + 1] = bad
    assert_refused(argv, out, f"{bad}, line 4", "'completion'")
    empty = write_jsonl(
        tmp_path / "empty.jsonl", [{"prompt": "Review: x.", "completion": " "}]
    )
    argv[argv.index("--data") + 1] = empty
    assert_refused(argv, out, f"{empty}, line 1", "'completion' value is empty")


def test_too_long_rows_are_counted_and_truncation_is_offered(root, tmp_path):
    out = tmp_path / "o"
    rows = pairs(16, 0)
    rows[2]["prompt"] = "Review: " + "very " * 40 + "good. Sentiment:"
    rows[5]["prompt"] = "Review: " + "not " * 40 + "bad. Sentiment:"
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    argv = train_argv(root, "gpt2", out, "--epochs", "1", "--no-baseline")
    argv[argv.index("--data") + 1] = path
    assert_refused(argv, out, f"{path}, line 3", "2 of 16 rows", "--truncate-prompt")
    code, _, stderr = run_cli([*argv, "--truncate-prompt"])
    assert code == 0, stderr


def test_a_classifier_checkpoint_is_refused_for_causal_lm(root, tmp_path):
    out = tmp_path / "o"
    argv = train_argv(root, "gpt2", out)
    argv[argv.index("--model") + 1] = packaged_model.model_dir()
    assert_refused(argv, out, "'bert' checkpoint, not a causal LM")


def test_a_checkpoint_without_its_tokenizer_file_is_refused(root, tmp_path):
    out = tmp_path / "o"
    broken = tmp_path / "gpt2"
    shutil.copytree(root / "gpt2", broken)
    os.remove(broken / "merges.txt")
    argv = train_argv(root, "gpt2", out)
    argv[argv.index("--model") + 1] = str(broken)
    assert_refused(argv, out, "has no merges.txt")


def test_classifier_flags_are_refused_for_causal_lm(root, tmp_path):
    out = tmp_path / "o"
    assert_refused(
        [*train_argv(root, "gpt2", out), "--pooling", "mean"], out, "--pooling"
    )
