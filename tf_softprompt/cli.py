"""The `tf-softprompt` command line.

Subcommands:

- `train`: prompt-tune a keras-hub text classifier on a labelled file (by
  default the packaged MiniLM on the embedded sentiment set) and write the
  prompt artifact, head weights, checkpoints, `run.json` and `metrics.json`
  to `--out DIR` (TensorBoard logs in `DIR/logs`).
- `eval`: held-out accuracy of a trained `DIR`.
- `predict`: labels and probabilities for texts, one JSON line each.
- `info`: the metadata of a run directory or a prompt `.npz`, as JSON.

Example:
```
tf-softprompt train --out runs/default
tf-softprompt predict --out runs/default "What a lovely film." "Cold soup."
tf-softprompt info runs/default
```

Adding subcommands: every entry of `SUBCOMMAND_PROVIDERS` names a function
`add_parser(subparsers)` as `"module:function"` (or is the function itself).
It adds its subcommands to the `argparse` subparsers and gives each
`set_defaults(func=handler)`, where `handler(args)` returns an exit code.
Providers are imported only when the CLI runs, so a new one is one added
line, e.g. `"tf_softprompt.export.cli:add_export_parser",`.
"""

import argparse
import contextlib
import importlib
import json
import os
import sys

SUBCOMMAND_PROVIDERS = [
    "tf_softprompt.cli:add_builtin_parsers",
    "tf_softprompt.export.cli:add_export_parser",
    "tf_softprompt.serving.client:add_query_parser",
    "tf_softprompt.peft:add_import_parser",
]

STRATEGIES = ("none", "mirrored", "multi-worker", "tpu")


def _add_train_parser(subparsers):
    from tf_softprompt.training import config

    parser = subparsers.add_parser(
        "train",
        help="prompt-tune a text classifier",
        description=(
            "Prompt-tune a keras-hub text classifier. With no --model and no "
            "--data it trains the packaged all-MiniLM-L6-v2 on the embedded "
            "sentiment dataset. Re-running with the same --out resumes from "
            "the last checkpoint."
        ),
    )
    # One flag per ClassifierConfig field (training/config.py), plus how
    # to run: the strategy and the progress bars.
    config.add_arguments(parser)
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="none",
        help="tf.distribute strategy; multi-worker reads TF_CONFIG",
    )
    parser.add_argument(
        "--tpu", default="", help="TPU address or name for --strategy tpu"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_train)


def _add_eval_parser(subparsers):
    from tf_softprompt.training import config

    parser = subparsers.add_parser(
        "eval",
        help="held-out accuracy of a trained run",
        description="Accuracy of a `train --out DIR` run on a labelled file.",
    )
    parser.add_argument("--out", required=True, help="the train output directory")
    parser.add_argument(
        "--data",
        default=None,
        help="labelled file (default: the run's embedded test set)",
    )
    parser.add_argument("--text-column", default=None)
    parser.add_argument("--label-column", default=None)
    parser.add_argument("--batch-size", type=config.positive_int, default=64)
    parser.set_defaults(func=run_eval)


def _add_predict_parser(subparsers):
    from tf_softprompt.training import config

    parser = subparsers.add_parser(
        "predict",
        help="labels and probabilities for texts",
        description=(
            "Print one JSON line per text: the text, the predicted label and "
            "the probability of every label."
        ),
    )
    parser.add_argument("--out", required=True, help="the train output directory")
    parser.add_argument("texts", nargs="*", help="texts to classify")
    parser.add_argument(
        "--input",
        default=None,
        help="file of texts: .tsv/.csv/.jsonl (text column) or one per line",
    )
    parser.add_argument("--text-column", default=None)
    parser.add_argument("--batch-size", type=config.positive_int, default=64)
    parser.set_defaults(func=run_predict)


def _add_info_parser(subparsers):
    parser = subparsers.add_parser(
        "info",
        help="artifact metadata as JSON",
        description="Print the metadata of a run directory or a prompt .npz.",
    )
    parser.add_argument("path", help="a train output directory or a .npz prompt")
    parser.set_defaults(func=run_info)


def add_builtin_parsers(subparsers):
    """Add `train`, `eval`, `predict` and `info`."""
    for add in (
        _add_train_parser,
        _add_eval_parser,
        _add_predict_parser,
        _add_info_parser,
    ):
        add(subparsers)


def _load_provider(spec):
    if callable(spec):
        return spec
    module_name, _, function_name = spec.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


def build_parser():
    """The `argparse` parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="tf-softprompt",
        description="Soft-prompt tuning for TensorFlow and keras-hub models.",
        epilog="--verbose (anywhere): show TensorFlow's start-up log lines.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for spec in SUBCOMMAND_PROVIDERS:
        _load_provider(spec)(subparsers)
    return parser


def make_strategy(name, tpu=""):
    """A `tf.distribute` strategy from its CLI name (`None` for "none")."""
    import tensorflow as tf

    if name == "none":
        return None
    if name == "mirrored":
        # All GPUs; without GPUs, every logical CPU (one unless configured).
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus)
    if name == "multi-worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "--strategy multi-worker needs the TF_CONFIG environment "
                "variable describing the cluster and this worker's task."
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def run_train(args, callbacks=()):
    from tf_softprompt import training
    from tf_softprompt.training import config

    # The strategy must exist before any other TensorFlow op runs.
    strategy = make_strategy(args.strategy, args.tpu)
    metrics = training.train_classifier(
        config.from_arguments(args),
        strategy=strategy,
        callbacks=callbacks,
        verbose=0 if args.quiet else 1,
    )
    print(json.dumps(metrics, sort_keys=True))
    return 0


def _eval_examples(args, run):
    from tf_softprompt import data as data_lib

    text_column = args.text_column or run["text_column"]
    label_column = args.label_column or run["label_column"]
    if args.data is not None:
        return data_lib.read_examples(args.data, text_column, label_column)
    if run["data"].startswith("embedded:"):
        _, test_path = data_lib.default_dataset()
        return data_lib.read_examples(test_path)
    raise ValueError(
        "This run was trained on your own file; pass the held-out file with "
        "--data FILE."
    )


def run_eval(args):
    from tf_softprompt import data as data_lib
    from tf_softprompt.training import evaluation, run_dir

    trained = run_dir.load_trained(args.out)
    examples = _eval_examples(args, trained.run)
    labels = data_lib.LabelVocabulary(tuple(trained.labels))
    label_ids = labels.encode(examples.labels, examples.path)
    result = {
        "accuracy": evaluation.accuracy(
            trained.model,
            trained.preprocessor,
            examples.texts,
            label_ids,
            args.batch_size,
        ),
        "examples": len(examples),
        "data": os.path.abspath(examples.path),
    }
    print(json.dumps(result, sort_keys=True))
    return 0


def run_predict(args):
    from tf_softprompt import data as data_lib
    from tf_softprompt.training import run_dir

    texts = list(args.texts)
    trained = run_dir.load_trained(args.out)
    if args.input:
        column = args.text_column or trained.run["text_column"]
        texts += data_lib.read_texts(args.input, column)
    if not texts:
        raise ValueError("No texts to classify: pass TEXT arguments or --input FILE.")
    probabilities = trained.predict(texts, args.batch_size)
    for text, row in zip(texts, probabilities):
        record = {
            "text": text,
            "label": trained.labels[int(row.argmax())],
            "probabilities": {
                name: round(float(p), 6) for name, p in zip(trained.labels, row)
            },
        }
        print(json.dumps(record))
    return 0


def run_info(args):
    from tf_softprompt import artifact
    from tf_softprompt.training import run_dir

    path = args.path
    if os.path.isdir(path):
        run = run_dir.read_json(
            os.path.join(path, run_dir.RUN_FILE), "run record (run.json)"
        )
        info = {"run": run}
        info["prompt"] = artifact.read_metadata(os.path.join(path, run["prompt"]))
        metrics_path = os.path.join(path, run_dir.METRICS_FILE)
        if os.path.exists(metrics_path):
            info["metrics"] = run_dir.read_json(metrics_path, "metrics")
    else:
        info = {"prompt": artifact.read_metadata(path)}
    print(json.dumps(info, indent=2, sort_keys=True))
    return 0


@contextlib.contextmanager
def _silenced_stderr():
    """Send file descriptor 2 to /dev/null for the duration.

    TensorFlow's C++ start-up lines (absl, oneDNN, CUDA probing) are written
    before `TF_CPP_MIN_LOG_LEVEL` is read, straight to the process's stderr,
    so only the file descriptor itself can hold them back. Python errors
    raised inside are printed after it is restored.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _import_frameworks_quietly():
    with _silenced_stderr():
        for name in ("tensorflow", "tf_keras", "keras", "keras_hub"):
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
        # Device discovery (CUDA probing) prints too. Listing the physical
        # devices does it now and still lets a strategy configure logical
        # devices later.
        with contextlib.suppress(ImportError):
            importlib.import_module("tensorflow").config.list_physical_devices()


def main(argv=None):
    """Entry point of the `tf-softprompt` console script.

    TensorFlow's start-up lines are suppressed unless `--verbose` is given;
    progress bars and errors are printed as usual.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = "--verbose" in argv
    if not verbose:
        # Set before TensorFlow is imported; the user's own setting wins.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        _import_frameworks_quietly()
    argv = [a for a in argv if a != "--verbose"]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"tf-softprompt {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
