"""Prompt-tune a keras-hub text classifier on a labelled file, end to end.

This is the workflow behind `tf-softprompt train`:

1. read the data (`splits`) and fix the label order;
2. load the base (`models`; by default the packaged all-MiniLM-L6-v2) and
   its preprocessor; the `Trainer` builds it under the run's precision;
3. enable prompt tuning with the run's method (`models.enable_prompt`),
   which freezes the base and leaves the prompt and the task head
   trainable;
4. train with `Trainer` under the given strategy, with checkpoints;
5. train the same frozen model and head **without** a prompt (same seed,
   steps and learning rate) for `baseline_accuracy`;
6. write the run directory (`run_dir`).

Example:
```python
metrics = train_classifier(ClassifierConfig(out="runs/sst2", method="prefix"))
metrics["accuracy"], metrics["baseline_accuracy"]
```
"""

import os
import time

import tensorflow as tf

from tf_softprompt.training import evaluation, models, pipeline, run_dir
from tf_softprompt.training.splits import load_splits
from tf_softprompt.training.trainer import Trainer, is_chief


def _check_resume_config(directory, settings):
    path = os.path.join(directory, "run-config.json")
    if os.path.exists(path):
        previous = run_dir.read_json(path, "checkpoint config")
        changed = sorted(
            k
            for k in set(previous) | set(settings)
            if previous.get(k) != settings.get(k)
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
    the seed, learning rate, batch size, precision and compilation settings.
    """

    return Trainer(
        build,
        learning_rate=config.learning_rate,
        global_batch_size=config.batch_size,
        strategy=strategy,
        seed=config.seed,
        jit_compile=config.jit_compile,
        recompute=config.recompute,
        precision=config.precision,
        log_dir=log_dir,
        verbose=verbose,
        **kwargs,
    )


def train_classifier(config, *, strategy=None, callbacks=(), verbose=1):
    """Prompt-tune, evaluate, run the baseline and write the run directory.

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
    model_path = models.resolve_model(config.model)
    preprocessor = models.load_preprocessor(model_path, config.sequence_length)
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
        model = models.load_classifier(
            model_path, len(names), config.dropout, config.base_dropout, config.pooling
        )
        handles.append(models.enable_prompt(model, config, preprocessor, names))
        return model

    checkpoints = os.path.join(out, run_dir.CHECKPOINT_DIR)
    settings = config.settings()
    settings["model"] = model_path
    config_path = _check_resume_config(checkpoints, settings)
    if chief:
        run_dir.write_json(config_path, settings)
    trainer = _trainer(
        build_prompted,
        config,
        strategy,
        os.path.join(out, run_dir.LOG_DIR, "prompt"),
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
    metrics = {
        "accuracy": evaluation.accuracy(
            model, preprocessor, splits.eval_texts, splits.eval_ids, config.batch_size
        ),
        "train_examples": len(splits.train_texts),
        "eval_examples": len(splits.eval_texts),
        "labels": list(names),
        "method": config.method,
        "precision": config.precision,
        "epochs": config.epochs,
        "steps": result["steps"],
        "resumed_from_step": result["resumed_from"],
        "final_loss": result["loss"],
        "train_seconds": round(seconds, 2),
        "num_replicas": strategy.num_replicas_in_sync,
        "trainable_parameters": int(
            sum(int(tf.size(v)) for v in model.trainable_variables)
        ),
        "data": splits.source,
    }
    if chief:
        handle.save_prompt(
            os.path.join(out, run_dir.PROMPT_FILE), task=splits.task_name
        )
        run_dir.save_head(
            os.path.join(out, run_dir.HEAD_FILE), run_dir.head_variables(model, handle)
        )
        run_dir.run_record(config, model_path, model, handle, names, splits).write(out)
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
        run_dir.write_json(os.path.join(out, run_dir.METRICS_FILE), metrics)
    return metrics


def _train_baseline(
    config, strategy, model_path, preprocessor, splits, dataset_fn, spe, out, verbose
):
    """The same frozen base and head, no prompt, same seed/steps/lr."""

    def build_frozen():
        model = models.load_classifier(
            model_path,
            len(splits.labels),
            config.dropout,
            config.base_dropout,
            config.pooling,
        )
        model.backbone.trainable = False
        return model

    if verbose:
        print("Baseline: the same frozen model and head, without a prompt")
    trainer = _trainer(
        build_frozen,
        config,
        strategy,
        os.path.join(out, run_dir.LOG_DIR, "baseline"),
        verbose,
    )
    started = time.perf_counter()
    result = trainer.fit(dataset_fn, epochs=config.epochs, steps_per_epoch=spe)
    trainer.close()
    return {
        "baseline_accuracy": evaluation.accuracy(
            trainer.model,
            preprocessor,
            splits.eval_texts,
            splits.eval_ids,
            config.batch_size,
        ),
        "baseline_final_loss": result["loss"],
        "baseline_train_seconds": round(time.perf_counter() - started, 2),
    }
