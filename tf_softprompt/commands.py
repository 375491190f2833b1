"""The commands that train and use run directories: `train`, `eval`,
`predict`, `generate` and `info`.

Each prints short human-readable lines and then one JSON line (the last,
for scripts; `--json` prints it alone). Nothing here imports TensorFlow
until a command runs.

Example:
```
tf-softprompt train --out runs/default
tf-softprompt eval --out runs/default
tf-softprompt predict --out runs/default "What a lovely film." "Cold soup."
tf-softprompt train --task causal-lm --model gpt2/ --data pairs.jsonl --out runs/lm
tf-softprompt generate --out runs/lm "The movie was"
```
"""

import os

from tf_softprompt import console, names

STRATEGIES = ("none", "mirrored", "multi-worker", "tpu")


def _positive_int(text):
    from tf_softprompt.training.config import positive_int

    return positive_int(text)


def _add_json_flag(parser):
    parser.add_argument(
        "--json", action="store_true", help="print the JSON line only (no summary)"
    )


def _add_inputs(parser, what, column):
    """`--out`, TEXT arguments, `--input FILE` and its column flag."""
    parser.add_argument("--out", required=True, help="the train output directory")
    parser.add_argument("texts", nargs="*", help=what)
    parser.add_argument(
        "--input",
        default=None,
        help=f"file of {what.split()[-1]}: .tsv/.csv/.jsonl ({column} column) or "
        "one per line; - reads standard input",
    )
    parser.add_argument(f"--{column}-column", default=None)


def add_train_parser(subparsers):
    from tf_softprompt.training import config

    parser = subparsers.add_parser(
        "train",
        help="prompt-tune a text classifier or a causal LM",
        description=(
            "Prompt-tune a keras-hub text classifier (the default task) or, with "
            "--task causal-lm, a GPT-2, Llama or Gemma causal LM on prompt/"
            "completion data. With no --model and no --data it trains the "
            "packaged all-MiniLM-L6-v2 on the embedded sentiment dataset. "
            "Re-running with the same --out resumes a killed run, continues a "
            "finished one given more --epochs, and leaves a finished one as it is."
        ),
    )
    # One flag per TrainConfig field (training/config.py), plus how to run:
    # the strategy and the output.
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
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    _add_json_flag(parser)
    parser.set_defaults(func=run_train)


def add_eval_parser(subparsers):
    parser = subparsers.add_parser(
        "eval",
        help="held-out figures of a trained run",
        description=(
            "A classifier run: accuracy, per-class precision/recall/F1 and the "
            "confusion matrix on a labelled file. A causal-LM run: completion "
            "loss, perplexity and exact match, and the same for the frozen model "
            "without a prompt (baseline_*)."
        ),
    )
    parser.add_argument("--out", required=True, help="the train output directory")
    parser.add_argument(
        "--data",
        default=None,
        help="held-out file (default: the run's embedded test set)",
    )
    parser.add_argument("--text-column", default=None)
    parser.add_argument("--label-column", default=None)
    parser.add_argument("--prompt-column", default=None)
    parser.add_argument("--completion-column", default=None)
    parser.add_argument(
        "--no-baseline",
        dest="baseline",
        action="store_false",
        help="causal LM: skip the frozen model's figures",
    )
    parser.add_argument("--batch-size", type=_positive_int, default=64)
    _add_json_flag(parser)
    parser.set_defaults(func=run_eval)


def add_predict_parser(subparsers):
    parser = subparsers.add_parser(
        "predict",
        help="labels and probabilities for texts",
        description=(
            "Print one JSON line per text: the text, the predicted label and "
            "the probability of every label."
        ),
    )
    _add_inputs(parser, "texts to classify", "text")
    parser.add_argument("--batch-size", type=_positive_int, default=64)
    parser.set_defaults(func=run_predict)


def add_generate_parser(subparsers):
    parser = subparsers.add_parser(
        "generate",
        help="continue texts with a causal-LM run",
        description=(
            "Print one JSON line per text: the prompt, the generated completion "
            "and the whole text (prompt and completion, as the served export "
            "returns it)."
        ),
    )
    _add_inputs(parser, "prompts", "prompt")
    parser.add_argument(
        "--max-length",
        type=_positive_int,
        default=None,
        help="positions of prompt plus completion (default: the run's sequence length)",
    )
    parser.add_argument("--sampler", choices=names.SAMPLERS, default="greedy")
    parser.add_argument("--seed", type=int, default=0, help="for top_k and top_p")
    parser.add_argument("--batch-size", type=_positive_int, default=16)
    parser.set_defaults(func=run_generate)


def add_info_parser(subparsers):
    parser = subparsers.add_parser(
        "info",
        help="artifact metadata as JSON",
        description="Print the metadata of a run directory or a prompt .npz.",
    )
    parser.add_argument("path", help="a train output directory or a .npz prompt")
    parser.set_defaults(func=run_info)


def add_parsers(subparsers):
    """Add `train`, `eval`, `predict`, `generate` and `info`."""
    for add in (
        add_train_parser,
        add_eval_parser,
        add_predict_parser,
        add_generate_parser,
        add_info_parser,
    ):
        add(subparsers)


# --- train -----------------------------------------------------------------


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


def _next_steps(out, metrics):
    shown = os.path.relpath(out) if not os.path.relpath(out).startswith("..") else out
    if metrics.get("task") == "causal-lm":
        use = f'tf-softprompt generate --out {shown} "A prompt"'
    else:
        use = f'tf-softprompt predict --out {shown} "A text to classify"'
    return [
        f"Run written to {out}",
        f"Next: {use}",
        f"      tf-softprompt export {shown} --out models/NAME --version 1",
    ]


def run_train(args, callbacks=()):
    from tf_softprompt.training import config, tasks, workflow

    train_config = config.from_arguments(args)
    # The strategy must exist before any other TensorFlow op runs.
    strategy = make_strategy(args.strategy, args.tpu)
    quiet = args.quiet or args.json
    metrics = workflow.train(
        train_config,
        strategy=strategy,
        callbacks=callbacks,
        verbose=0 if quiet else 1,
        report=None if quiet else print,
    )
    out = os.path.abspath(train_config.out)
    task = tasks.task_class(train_config.task)
    loss = metrics["final_loss"]
    lines = [
        f"Trained a {metrics['method']} prompt (P={train_config.prompt_length}) "
        f"for {metrics['epochs']} epochs, {metrics['steps']} steps "
        f"({metrics['train_seconds']} s); last epoch's loss "
        + ("n/a" if loss is None else f"{loss:.4f}"),
        *task.summary_of(metrics),
        *_next_steps(out, metrics),
    ]
    console.print_result(lines, metrics, args.json)
    return 0


# --- eval --------------------------------------------------------------------


def run_eval(args):
    from tf_softprompt.training import run_dir, tasks

    run = run_dir.read_run(args.out)
    metrics = tasks.for_run(run).evaluate_run_dir(args)
    lines = tasks.for_run(run).summary_of(metrics)
    console.print_result(lines, metrics, args.json)
    return 0


# --- predict -----------------------------------------------------------------


def _read_inputs(args, column):
    from tf_softprompt import data as data_lib

    texts = list(args.texts)
    if args.input:
        texts += data_lib.read_texts(args.input, column)
    return texts


def run_predict(args):
    from tf_softprompt.training import classification, run_dir

    run = run_dir.read_run(args.out)
    if run.is_causal_lm:
        raise ValueError(
            f"{args.out} is a causal-LM run: it generates text rather than "
            f'labels. Use `tf-softprompt generate --out {args.out} "A prompt"`.'
        )
    trained = run_dir.load_trained(args.out)
    texts = _read_inputs(args, args.text_column or run["text_column"])
    if not texts:
        raise ValueError("No texts to classify: pass TEXT arguments or --input FILE.")
    cut, kept = classification.truncated(trained.preprocessor, texts)
    if cut:
        console.warn(
            "predict",
            f"{cut} of {len(texts)} texts are longer than the {kept} tokens this "
            "run keeps; their ends were cut (train with a larger "
            "--sequence-length to keep more).",
        )
    probabilities = trained.predict(texts, args.batch_size)
    for text, row in zip(texts, probabilities):
        console.print_json(
            {
                "text": text,
                "label": trained.labels[int(row.argmax())],
                "probabilities": {
                    name: round(float(p), 6) for name, p in zip(trained.labels, row)
                },
            }
        )
    return 0


# --- generate ----------------------------------------------------------------


def run_generate(args):
    from tf_softprompt.training import generation, run_dir

    run = run_dir.read_run(args.out)
    if not run.is_causal_lm:
        raise ValueError(
            f"{args.out} is a classifier run; it has no text to generate. Use "
            f'`tf-softprompt predict --out {args.out} "A text"`.'
        )
    column = args.prompt_column or run.columns.get("prompt") or run.columns.get("text")
    texts = _read_inputs(args, column or "prompt")
    if not texts:
        raise ValueError("No prompts: pass TEXT arguments or --input FILE.")
    trained = run_dir.load_trained_causal_lm(args.out)
    max_length = args.max_length or int(run["sequence_length"])
    full = generation.prompts_filling(trained.preprocessor, texts, max_length)
    if full:
        console.warn(
            "generate",
            f"{full} of {len(texts)} prompts fill all {max_length} positions "
            "(their ends were cut) and leave none to generate; pass a larger "
            "--max-length.",
        )
    for record in generation.generate_texts(
        trained, texts, max_length, args.sampler, args.seed, args.batch_size
    ):
        console.print_json(record)
    return 0


# --- info ----------------------------------------------------------------------


def run_info(args):
    import json

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
    print(json.dumps(info, indent=2, sort_keys=True, ensure_ascii=False))
    return 0
