"""`import_peft`: an adapter directory in, a run directory out.

The run directory is written through `training.run_record.RunRecord`, the
record type `tf-softprompt train` writes, into a temporary sibling that is
renamed into place when complete.

Example:
```python
import_peft("adapters/sst2", "models/bert-base-uncased", "runs/sst2",
            labels=["negative", "positive"])
```
"""

import os
import shutil
import tempfile

from tf_softprompt.peft.adapter import HEAD_WEIGHT, read_adapter
from tf_softprompt.peft.checks import CAUSAL_LMS, causal_lm_kind, check_config
from tf_softprompt.peft.layout import apply_adapter, placement, source_record

DEFAULT_SEQUENCE_LENGTH = 128


def _load_causal_lm(model_path):
    from tf_softprompt import checkpoints

    backbone = checkpoints.load_backbone(model_path)
    return checkpoints.causal_lm_class(backbone)(backbone=backbone, preprocessor=None)


def _load_classifier(adapter, model_path):
    from tf_softprompt.training import models

    # PEFT's SEQ_CLS head reads BERT's pooler, whatever the checkpoint's
    # sentence-transformers pooling says.
    return models.load_classifier(
        model_path, int(adapter.tensors[HEAD_WEIGHT].shape[0]), pooling="pooler"
    )


def _sequence_length(model, sequence_length, num_tokens):
    backbone = getattr(model, "backbone", model)
    limit = backbone.get_config().get("max_sequence_length")
    if sequence_length is None:
        sequence_length = DEFAULT_SEQUENCE_LENGTH
        if limit is not None:
            sequence_length = min(sequence_length, int(limit) - num_tokens)
    if isinstance(sequence_length, bool) or not isinstance(sequence_length, int):
        raise ValueError(
            f"`sequence_length` must be a positive integer. Received: "
            f"sequence_length={sequence_length!r}."
        )
    if sequence_length < 2 or (
        limit is not None and sequence_length + num_tokens > int(limit)
    ):
        raise ValueError(
            f"sequence_length={sequence_length} text positions plus the "
            f"{num_tokens} prompt positions must fit the base's "
            f"max_sequence_length={limit} (and be at least 2). Pass "
            f"--sequence-length {int(limit) - num_tokens if limit else 128} or less."
        )
    return sequence_length


def _check_new_directory(out):
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise FileExistsError(
            f"{out} already exists and is not empty. Pass a new --out directory."
        )


def _write_run(out, write):
    """Write a new run directory through a temporary sibling, then rename."""
    _check_new_directory(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-import-")
    try:
        write(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def import_peft(
    adapter_dir, model, out, *, labels=None, sequence_length=None, task=None
):
    """Convert a PEFT prompt adapter into a tf-softprompt run directory.

    Args:
        adapter_dir: the PEFT adapter directory (`adapter_config.json`,
            `adapter_model.safetensors`).
        model: the base model the adapter was trained on, as a keras-hub
            preset name or directory (a Hugging Face model directory or
            `hf://` handle loads through keras-hub's converters).
        out: the new run directory (must not exist, or be empty).
        labels: SEQ_CLS only: the class names, one per row of the head
            (default `LABEL_0`, `LABEL_1`, ..., as transformers names them).
        sequence_length: text positions (for a causal LM: input text plus
            generated tokens); the P prompt positions come on top. Default:
            128, or what the base's position limit leaves.
        task: the task name in the artifact (the exporter's task name);
            default the adapter directory's name.

    Returns:
        The `RunRecord` written to `out/run.json`.

    Raises:
        PeftImportError: for adapters that cannot be reproduced exactly
            (see the module docstring).
        FileExistsError: if `out` holds files.

    Example:
    ```python
    import_peft("adapters/sst2", "models/bert-base-uncased", "runs/sst2",
                labels=["negative", "positive"])
    ```
    """
    from tf_softprompt.training import models, run_dir, run_record

    adapter = read_adapter(adapter_dir)
    peft_type, task_type, num_tokens = check_config(adapter)
    model_path = models.resolve_model(model)
    out_path = os.path.abspath(os.fspath(out))
    _check_new_directory(out_path)  # before the (slow) model load
    if task_type == "SEQ_CLS":
        classes = int(adapter.tensors[HEAD_WEIGHT].shape[0])
        if labels is None:
            labels = [f"LABEL_{i}" for i in range(classes)]
        labels = [str(name) for name in labels]
        if len(labels) != classes:
            raise ValueError(
                f"The adapter's head has {classes} labels "
                f"({HEAD_WEIGHT} is [{classes}, H]); received {len(labels)} label "
                f"names {labels}."
            )
        keras_model = _load_classifier(adapter, model_path)
    else:
        if labels is not None:
            raise ValueError("`labels` is for SEQ_CLS adapters; this is CAUSAL_LM.")
        keras_model = _load_causal_lm(model_path)
    sequence_length = _sequence_length(keras_model, sequence_length, num_tokens)
    handle = apply_adapter(adapter, keras_model)
    task = task or os.path.basename(adapter.path.rstrip(os.sep)) or "default"
    classifier = task_type == "SEQ_CLS"
    head = run_dir.head_variables(keras_model, handle) if classifier else None
    record = run_record.RunRecord(
        kind=run_record.CLASSIFIER_KIND if classifier else run_record.CAUSAL_LM_KIND,
        model=model,
        model_path=model_path,
        task_class=type(keras_model).__name__,
        backbone_class=type(keras_model.backbone).__name__,
        sequence_length=sequence_length,
        method=handle.method.name,
        prompt_length=num_tokens,
        offset=handle.offset,
        labels=labels if classifier else None,
        pooling=keras_model.pooling.mode if classifier else None,
        normalize=keras_model.pooling.normalize if classifier else False,
        head_variables=[v.path for v in head] if classifier else None,
        preprocessor=None
        if classifier
        else {"add_start_token": CAUSAL_LMS[causal_lm_kind(keras_model)]},
        columns={"text": "text", "label": "label"} if classifier else {},
        data=f"peft:{adapter.path}",
        training={"init": "peft", "precision": "float32"},
        source=source_record(adapter),
        placement=placement(peft_type, task_type, num_tokens),
    )

    def write(directory):
        handle.save_prompt(
            os.path.join(directory, record.prompt),
            task=task,
            source="peft",
            peft_type=peft_type,
        )
        if classifier:
            run_dir.save_head(os.path.join(directory, record.head), head)
        record.write(directory)

    _write_run(out_path, write)
    return record


__all__ = ["import_peft"]
