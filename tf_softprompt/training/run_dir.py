"""A run directory: its files, the run record, head weights, and reloading.

Layout of `tf-softprompt train --out DIR`:

- `prompt.npz`: the prompt artifact (`tf_softprompt.artifact`).
- `head.weights.npz`: the trained head, `{variable path: array}`.
- `run.json`: what is needed to rebuild the model: base model, task class,
  labels, sequence length, method, prompt length, offset, precision.
- `metrics.json`: held-out `accuracy` and `baseline_accuracy`, and more.
- `checkpoints/`: the prompt run's `tf.train.CheckpointManager` files.
- `logs/prompt`, `logs/baseline`: TensorBoard logs.

`tf-softprompt import-peft` writes the same `prompt.npz`, `head.weights.npz`
and `run.json` (with the adapter's provenance and placement). A causal-LM
run (`"kind": "causal_lm"`) has no head; `load_trained_causal_lm` rebuilds
it.

Example:
```python
trained = load_trained("runs/sst2")
trained.predict(["a fine film"])  # [[p_negative, p_positive]]
```
"""

import dataclasses
import os

import keras
import numpy as np

from tf_softprompt import methods
from tf_softprompt.fileio import atomic_write
from tf_softprompt.training import evaluation, models
from tf_softprompt.training.run_record import (
    CAUSAL_LM_KIND,
    CLASSIFIER_KIND,
    HEAD_FILE,
    PROMPT_FILE,
    RUN_FILE,
    RUN_FORMAT,
    TRAINING_KEYS,
    RunRecord,
    read_json,
    write_json,
)

METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"


def read_run(out):
    """The checked `RunRecord` of a run directory."""
    return RunRecord.read(out)


def is_causal_lm_run(run):
    """Whether a run record describes a causal-LM run (no head)."""
    return run.get("kind") == CAUSAL_LM_KIND


def prompt_path(out, run):
    """The run's prompt artifact."""
    return os.path.join(os.path.abspath(os.fspath(out)), run["prompt"])


def head_arrays(out, run):
    """The run's head as `{variable path: array}` (classifier runs).

    Raises:
        ValueError: for a causal-LM run, which has no head.
    """
    if is_causal_lm_run(run):
        raise ValueError(f"{out} is a causal-LM run; it has no classifier head.")
    path = os.path.join(os.path.abspath(os.fspath(out)), run["head"])
    with np.load(path, allow_pickle=False) as saved:
        return {key: saved[key] for key in saved.files}


def _variable_id(variable):
    value = getattr(variable, "value", variable)
    return id(getattr(value, "handle", value))


def head_variables(model, handle):
    """The trainable variables other than the prompt: the task head."""
    prompt = {_variable_id(v) for v in handle.table.trainable_variables}
    return [v for v in model.trainable_variables if _variable_id(v) not in prompt]


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


def run_record(config, model_path, model, handle, names, splits):
    """The `RunRecord` of a trained classifier: everything that rebuilds it."""
    return RunRecord(
        kind=CLASSIFIER_KIND,
        model=config.model or "default",
        model_path=model_path,
        task_class=type(model).__name__,
        backbone_class=type(getattr(model, "backbone", model)).__name__,
        labels=list(names),
        sequence_length=config.sequence_length,
        method=handle.method.name,
        prompt_length=int(handle.num_prompt_tokens),
        offset=int(handle.offset),
        pooling=model.pooling.mode,
        normalize=model.pooling.normalize,
        head_variables=[v.path for v in head_variables(model, handle)],
        columns={"text": config.text_column, "label": config.label_column},
        data=splits.source,
        training=training_settings(config),
    )


def training_settings(config):
    """How a run was trained, as `RunRecord.training` keeps it."""
    return {key: getattr(config, key) for key in TRAINING_KEYS}


@dataclasses.dataclass
class TrainedClassifier:
    """A tuned model rebuilt from an output directory.

    Attributes:
        model: the keras-hub `TextClassifier` (base + prompt + head).
        preprocessor: its `TextClassifierPreprocessor`.
        handle: the `PromptTuning` handle.
        run: the `run.json` dict.
    """

    model: object
    preprocessor: object
    handle: object
    run: dict

    @property
    def labels(self):
        return list(self.run["labels"])

    def predict(self, texts, batch_size=64):
        """Probabilities `[N, num_classes]`."""
        return evaluation.predict_probabilities(
            self.model, self.preprocessor, texts, batch_size
        )


def load_trained(out, precision="float32"):
    """Rebuild base + prompt + head from a `train` output directory.

    Args:
        out: the run directory.
        precision: the compute precision to rebuild in (`"float32"` or
            `"mixed_bfloat16"`), whatever the run trained in: weights are
            float32 either way.

    Returns:
        A `TrainedClassifier`; the prompt and head are loaded and checked.
    """
    from tf_softprompt import hub
    from tf_softprompt.training import precision as precision_lib

    out = os.path.abspath(out)
    run = read_run(out)
    if is_causal_lm_run(run):
        raise ValueError(
            f"{out} is a causal-LM run (kind={CAUSAL_LM_KIND!r}), not a "
            "classifier; load it with `load_trained_causal_lm`."
        )
    preprocessor = models.load_preprocessor(run["model_path"], run["sequence_length"])
    with precision_lib.policy(precision):
        # Runs written before `pooling` was recorded read BERT's pooler.
        model = models.load_classifier(
            run["model_path"],
            run["num_classes"],
            run.get("dropout"),
            pooling=run.get("pooling", "pooler"),
            normalize=run.get("normalize", False),
        )
    method = run.get("method", "embedding")
    kwargs = {"offset": run["offset"]} if methods.get(method).sequence_slots(1) else {}
    if run.get("reparameterize"):
        kwargs["reparameterization"] = {"hidden_dim": run["reparameterize"]}
    with precision_lib.policy(precision):
        handle = hub.enable_prompt_tuning(
            model, run["prompt_length"], method=method, **kwargs
        )
    handle.load_prompt(prompt_path(out, run))
    load_head(os.path.join(out, run["head"]), head_variables(model, handle))
    return TrainedClassifier(model, preprocessor, handle, run)


@dataclasses.dataclass
class TrainedCausalLM:
    """A prompt-tuned keras-hub `CausalLM` rebuilt from a run directory.

    Attributes:
        model: the `CausalLM` (base + prompt), with its preprocessor.
        preprocessor: its `CausalLMPreprocessor` (the run's settings).
        handle: the `PromptTuning` handle.
        run: the `run.json` dict.
    """

    model: object
    preprocessor: object
    handle: object
    run: dict


def load_causal_lm(run, sequence_length=None):
    """The run's base `CausalLM` and preprocessor, without a prompt.

    The base loads through `tf_softprompt.checkpoints` (a Hugging Face
    directory as its own implementation computes it); the preprocessor
    takes the run record's `preprocessor` settings (e.g. `add_start_token`)
    and cuts texts to `sequence_length` (default the run's).
    """
    from tf_softprompt import checkpoints

    length = sequence_length or run["sequence_length"]
    preprocessor = checkpoints.load_causal_lm_preprocessor(run["model_path"], length)
    for name, value in (run.get("preprocessor") or {}).items():
        if name != "add_start_token":
            raise ValueError(
                f"run.json has an unknown preprocessor setting {name!r}. "
                "Known: ['add_start_token']."
            )
        if not value:
            checkpoints.keras_hub_fixes.without_start_token(preprocessor)
    return checkpoints.load_causal_lm(run["model_path"], length, preprocessor)


def load_trained_causal_lm(out):
    """Rebuild base + prompt of a causal-LM run directory.

    Example:
    ```python
    trained = load_trained_causal_lm("runs/from_peft")
    trained.model.generate("The movie was", max_length=30)
    ```
    """
    from tf_softprompt import hub

    out = os.path.abspath(out)
    run = read_run(out)
    if not is_causal_lm_run(run):
        raise ValueError(
            f"{out} is a classifier run, not a causal-LM one; load it with "
            "`load_trained`."
        )
    model, preprocessor = load_causal_lm(run)
    method = run.get("method", "embedding")
    kwargs = {"offset": run["offset"]} if methods.get(method).sequence_slots(1) else {}
    handle = hub.enable_prompt_tuning(
        model, run["prompt_length"], method=method, **kwargs
    )
    handle.load_prompt(os.path.join(out, run["prompt"]))
    return TrainedCausalLM(model, preprocessor, handle, run)


__all__ = [
    "CAUSAL_LM_KIND",
    "CHECKPOINT_DIR",
    "CLASSIFIER_KIND",
    "HEAD_FILE",
    "LOG_DIR",
    "METRICS_FILE",
    "PROMPT_FILE",
    "RUN_FILE",
    "RUN_FORMAT",
    "RunRecord",
    "TrainedCausalLM",
    "TrainedClassifier",
    "head_arrays",
    "head_variables",
    "is_causal_lm_run",
    "load_causal_lm",
    "load_head",
    "load_trained",
    "load_trained_causal_lm",
    "prompt_path",
    "read_json",
    "read_run",
    "run_record",
    "save_head",
    "training_settings",
    "write_json",
]
