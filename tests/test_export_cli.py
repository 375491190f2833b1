"""`tf-softprompt train` then `tf-softprompt export`, checked end to end.

Tiny runs (the CLI's random 2-layer BERT, one epoch) are trained
in-process with `--method embedding` and `--method prefix`, on a two-class
and a three-class data set, with different prompt lengths, sequence lengths
and seeds; they are exported alone, together, and as an ensemble. Every
signature of every export (warmup records included) runs in one fresh TF1
session-loader process and in one C-API (`c_loader.c`) process, and its
answers must equal the trained models' own predictions
(`training.load_trained(run).predict`, tokenised by the keras-hub
preprocessor, not by the exporter).
"""

import contextlib
import io

import numpy as np
import pytest
import tensorflow as tf
from tiny_models import embedded_texts, save_tiny_bert_preset

from tf_softprompt import cli, training
from tf_softprompt.export import read_info, read_warmup_requests
from tf_softprompt.export.cli import parse_ensembles
from tf_softprompt.serving import loaders
from tf_softprompt.training import evaluation, models

LONG = (
    "The doctor listened carefully and explained my options, and this jacket "
    "keeps me warm even on freezing mornings, so the puzzle was challenging."
)
TEXTS = ["What a lovely, warm film.", "Cold soup and rude staff.", "", LONG]
WARMUP = "a warmup request"  # the exporter's warmup texts: WARMUP and ""
PROVIDER = "tf_softprompt.export.cli:add_export_parser"
THREE = ["high", "low", "mid"]  # the three-class runs' labels
# name: (method, prompt length, sequence length, seed, three-class data)
RUNS = {
    "sst": ("embedding", 6, 16, 0, False),
    "short": ("embedding", 3, 12, 0, True),
    "sst_b": ("embedding", 6, 16, 1, False),
    "sst_c": ("embedding", 6, 16, 2, False),
    "prefix": ("prefix", 4, 16, 0, False),
    "prefix_short": ("prefix", 2, 12, 0, True),
}
# export: (RUN_DIRs, extra flags, {served task: the runs it averages})
EXPORTS = {
    "demo": (["sst"], [], {None: ["sst"]}),
    "prefix": (["prefix"], [], {None: ["prefix"]}),
    "multi": (
        ["sst", "short"],
        ["--task", "sst", "--task", "short"],
        {"sst": ["sst"], "short": ["short"]},
    ),
    "prefix_multi": (  # named by the runs' own tasks (their data sets)
        ["prefix", "prefix_short"],
        [],
        {"sentiment": ["prefix"], "three": ["prefix_short"]},
    ),
    "mixed": (
        ["short"],
        ["--task", "short", "--ensemble", "sst=RUN:sst,RUN:sst_b,RUN:sst_c"],
        {  # the first four are the mixed batch's tasks
            "short": ["short"],
            "sst": ["sst", "sst_b", "sst_c"],
            "sst/1": ["sst_b"],
            "sst/0": ["sst"],
            "sst/2": ["sst_c"],
        },
    ),
}
LOADERS = ["session", "c_api"]


def _text_sensitive_preset(directory):
    """The tiny BERT preset with every kernel scaled by 10.

    At its initial scale the random model's answers barely depend on the
    text (1e-6 between texts), so a tokenisation or truncation error would
    pass a 1e-5 comparison; scaled, texts differ by more than 1e-2.
    """
    import keras_hub

    preset = save_tiny_bert_preset(directory, embedded_texts())
    backbone = keras_hub.models.BertBackbone.from_preset(preset)
    for weight in backbone.weights:
        if "kernel" in weight.path:
            weight.assign(weight * 10.0)
    backbone.save_to_preset(preset)
    return preset


def _three_class_data(path):
    """The embedded texts with three labels (by word count), as a TSV."""
    rows = ["text\tlabel"]
    for i, text in enumerate(embedded_texts()[:120]):
        rows.append(f"{text}\t{['low', 'mid', 'high'][i % 3]}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")
    return str(path)


def _train(root, preset, three_class_data):
    dirs = {}
    for name, (method, length, sequence, seed, three) in RUNS.items():
        dirs[name] = str(root / name)
        argv = ["train", "--model", preset, "--out", dirs[name], "--epochs", "1"]
        argv += ["--method", method, "--prompt-length", str(length)]
        argv += ["--sequence-length", str(sequence), "--seed", str(seed)]
        argv += ["--no-baseline", "--quiet", "--learning-rate", "0.1"]
        if three:
            argv += ["--data", three_class_data]
        assert cli.main(argv) == 0, name
    return dirs


def _padded(probabilities, width=3):
    return np.pad(probabilities, [(0, 0), (0, width - probabilities.shape[1])])


def _strings(values):
    return np.array([v.encode() for v in values], dtype=object)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    preset = _text_sensitive_preset(root / "base")
    assert PROVIDER in cli.SUBCOMMAND_PROVIDERS  # shipped, not patched in
    dirs = _train(root, preset, _three_class_data(root / "three.tsv"))
    trained = {name: training.load_trained(d) for name, d in dirs.items()}
    predictions = {name: t.predict([*TEXTS, WARMUP]) for name, t in trained.items()}
    labels = {name: t.labels for name, t in trained.items()}
    exports = {}
    for name, (members, flags, _) in EXPORTS.items():
        out = root / "models" / name
        flags = [f.replace("RUN:", str(root) + "/") for f in flags]
        argv = ["export", *[dirs[m] for m in members], *flags]
        argv += ["--out", str(out), "--version", "1"]
        assert cli.main(argv) == 0, name
        exports[name] = str(out / "1")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        again = cli.main(
            ["export", dirs["sst"], "--out", str(root / "models" / "demo")]
            + ["--version", "1"]
        )
        mismatched = cli.main(
            ["export", dirs["sst"], dirs["prefix"], "--out", str(root / "bad")]
            + ["--version", "1"]
        )
    jobs, expected = _jobs(exports, predictions, labels, preset)
    binary = loaders.build_c_loader(str(root / "c_loader"))
    job_list = list(jobs.values())
    return {
        "dirs": dirs,
        "exports": exports,
        "predictions": predictions,
        "labels": labels,
        "jobs": jobs,
        "expected": expected,
        **{
            loader: dict(zip(jobs, results))
            for loader, results in loaders.run_both_loaders(job_list, binary).items()
        },
        "errors": (again, mismatched, stderr.getvalue()),
    }


def _expectation(served, texts, tasks, predictions, labels):
    """`(probabilities [N, 3], label names)` the trained runs give."""
    probabilities, names = [], []
    known = [*TEXTS, WARMUP]
    for i, task in enumerate(tasks):
        members = served[task]
        rows = [_padded(predictions[m])[known.index(texts[i])] for m in members]
        p = np.mean(rows, axis=0)
        probabilities.append(p)
        names.append(labels[members[0]][int(np.argmax(p))].encode())
    return np.stack(probabilities), names


def _jobs(exports, predictions, labels, preset):
    jobs, expected = {}, {}
    for name, (_, _, served) in EXPORTS.items():
        directory = exports[name]
        info = read_info(directory)
        tasks = None if None in served else list(served)
        mixed = None if tasks is None else [tasks[i % len(tasks)] for i in range(4)]
        batches = {"text": mixed}
        if tasks is not None:
            batches.update({f"only-{t}": [t] * len(TEXTS) for t in tasks})
        # predict_tokens inputs from the keras-hub preprocessor (not the
        # exporter's encoder), at the export's text positions.
        preprocessor = models.load_preprocessor(preset, info["text_positions"])
        features = preprocessor(tf.constant(TEXTS))
        for label, batch_tasks in batches.items():
            inputs = {"text": _strings(TEXTS)}
            tokens = {
                "token_ids": features["token_ids"].numpy().astype(np.int32),
                "padding_mask": features["padding_mask"].numpy().astype(np.int32),
            }
            if batch_tasks is not None:
                inputs["task"] = _strings(batch_tasks)
                tokens["task_id"] = np.array(
                    [info["served_tasks"].index(t) for t in batch_tasks], np.int32
                )
            table = dict(served) if tasks is not None else {None: served[None]}
            exp = _expectation(
                table, TEXTS, batch_tasks or [None] * 4, predictions, labels
            )
            for signature, feed in (
                ("serving_default", inputs),
                ("predict_tokens", tokens),
            ):
                key = f"{name}/{label}/{signature}"
                jobs[key] = {
                    "export_dir": directory,
                    "signature": signature,
                    "inputs": feed,
                }
                expected[key] = exp
        for request in read_warmup_requests(directory):
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            signature = request.model_spec.signature_name
            if signature == "serving_default":
                texts = [t.decode() for t in inputs["text"]]
                warmup_tasks = [t.decode() for t in inputs.get("task", [])] or None
            else:
                ids = inputs.get("task_id")
                warmup_tasks = None
                if ids is not None:
                    warmup_tasks = [info["served_tasks"][i] for i in ids]
            key = f"{name}/warmup/{signature}"
            jobs[key] = {"export_dir": directory, "signature": signature}
            jobs[key]["inputs"] = inputs
            table = dict(served) if tasks is not None else {None: served[None]}
            expected[key] = _expectation(
                table,
                texts,
                warmup_tasks or [None] * len(texts),
                predictions,
                labels,
            )
    return jobs, expected


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("name", list(EXPORTS))
def test_every_signature_answers_like_the_trained_runs(runs, loader, name):
    keys = [k for k in runs["expected"] if k.startswith(f"{name}/")]
    assert keys
    for key in keys:
        result = runs[loader][key]
        assert "outputs" in result, (key, result)
        outputs = result["outputs"]
        probabilities, names = runs["expected"][key]
        got = outputs["probabilities"]
        np.testing.assert_allclose(
            got, probabilities[:, : got.shape[1]], atol=1e-5, err_msg=key
        )
        np.testing.assert_array_equal(outputs["label_ids"], probabilities.argmax(-1))
        if key.endswith("/predict_tokens"):
            assert set(outputs) == {"probabilities", "label_ids", "num_classes"}, key
            assert all(v.dtype.kind in "fiu" for v in outputs.values()), key
        else:
            assert list(outputs["label_names"]) == names, key


def test_warmup_records_cover_both_signatures_and_every_task(runs):
    for name, (_, _, served) in EXPORTS.items():
        keys = [k for k in runs["expected"] if k.startswith(f"{name}/warmup/")]
        assert sorted(keys) == [
            f"{name}/warmup/predict_tokens",
            f"{name}/warmup/serving_default",
        ]
        inputs = runs["jobs"][f"{name}/warmup/serving_default"]["inputs"]
        if None not in served:
            assert {t.decode() for t in inputs["task"]} == set(
                read_info(runs["exports"][name])["served_tasks"]
            )


def test_runs_really_differ(runs):
    # A swapped prompt, head or member would show.
    p = runs["predictions"]
    for first, second in (("sst", "sst_b"), ("prefix", "sst"), ("sst", "sst_c")):
        assert np.abs(p[first] - p[second]).max() > 1e-4, (first, second)
    assert np.abs(p["short"] - p["prefix_short"]).max() > 1e-4
    # The long text is cut at 12 positions for the short runs: reading 16
    # would give another answer.
    trained = training.load_trained(runs["dirs"]["short"])
    longer = models.load_preprocessor(trained.run["model_path"], 16)
    at_16 = evaluation.predict_probabilities(trained.model, longer, [LONG])
    assert np.abs(at_16 - p["short"][3:4]).max() > 1e-3
    # And the answers depend on the text, by ten times the tolerance of the
    # comparisons above (a tokenisation error would show).
    for name in RUNS:
        assert np.ptp(p[name][: len(TEXTS)], axis=0).max() > 1e-4, name


def test_padded_classes_get_probability_zero(runs):
    outputs = runs["session"]["multi/only-sst/serving_default"]["outputs"]
    assert outputs["probabilities"].shape == (len(TEXTS), 3)
    assert (outputs["probabilities"][:, 2] == 0).all()
    assert set(outputs["label_names"]) <= {b"negative", b"positive"}
    three = runs["session"]["multi/only-short/serving_default"]["outputs"]
    assert set(three["label_names"]) <= {n.encode() for n in THREE}


def test_export_records_what_serving_needs(runs):
    info = read_info(runs["exports"]["multi"])
    assert info["tasks"] == ["sst", "short"]
    assert info["prompt_lengths"] == [6, 3]
    assert info["text_positions"] == 16  # the longest run's sequence_length
    assert info["text_positions_per_task"] == {"sst": 16, "short": 12}
    assert info["labels"] is None
    assert info["labels_per_task"] == {
        "sst": ["negative", "positive"],
        "short": THREE,
    }
    prefix = read_info(runs["exports"]["prefix"])
    # A prefix takes no positions: every one of the run's 16 is text.
    assert prefix["prompt_method"] == "prefix"
    assert prefix["sequence_length"] == prefix["text_positions"] == 16
    assert prefix["max_prompt_length"] == 4
    mixed = read_info(runs["exports"]["mixed"])
    assert mixed["tasks"] == ["short", "sst/0", "sst/1", "sst/2"]
    assert mixed["served_tasks"] == ["short", "sst/0", "sst/1", "sst/2", "sst"]
    assert mixed["ensembles"] == {"sst": ["sst/0", "sst/1", "sst/2"]}


def test_export_errors_are_clean(runs):
    again, mismatched, message = runs["errors"]
    assert again == 2
    assert "already exists" in message and "--version 2" in message
    assert mismatched == 2
    assert "method='prefix'" in message and "must share the" in message


def test_ensemble_flags_parse():
    assert parse_ensembles(["e=a,b"], ["c"]) == (["c"], {"e": ["a", "b"]})
    assert parse_ensembles(["e"], ["a", "b"]) == ([], {"e": ["a", "b"]})
    assert parse_ensembles(None, ["a"]) == (["a"], {})
    for values, given in ((["e", "f=a,b"], ["c"]), (["e"], [])):
        with pytest.raises(ValueError, match="must be the only --ensemble"):
            parse_ensembles(values, given)
    with pytest.raises(ValueError, match="its own non-empty NAME"):
        parse_ensembles(["=a,b"], [])
