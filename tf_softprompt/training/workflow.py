"""Prompt-tune a model on a data file, end to end: the workflow behind
`tf-softprompt train`, for every task (`tasks`).

1. resolve the model and check the run directory (`resume`): a finished
   run of the same settings returns its recorded metrics and touches no
   file;
2. read and check the data and the model's files, tokenise
   (`task.prepare`), and build the prompt-tuned model, checking the
   sequence length against its position limit: every refusal happens
   before anything is written;
3. train with `Trainer` under the given strategy, with checkpoints and a
   validation line after each epoch (`task.validate`);
4. evaluate (`task.evaluate`) and write the prompt, head and `run.json`;
5. the baseline without a prompt (`task.baseline`), with its own
   checkpoints, so it is trained once per run;
6. write `metrics.json`, complete, atomically.

Example:
```python
metrics = train(TrainConfig(out="runs/sst2", method="prefix"))
metrics["accuracy"], metrics["baseline_accuracy"]
```
"""

import os
import time

import tensorflow as tf

from tf_softprompt.training import models, resume, run_dir, tasks
from tf_softprompt.training.trainer import Trainer, is_chief


def _trainer(build, task, config, strategy, out, name, verbose, checkpoint_dir):
    """A `Trainer` with the run's settings.

    The prompt run and a trained baseline both come from here, so they
    always share the seed, learning rate, batch size, precision and
    compilation settings.
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
        log_dir=os.path.join(out, run_dir.LOG_DIR, name),
        checkpoint_dir=checkpoint_dir,
        verbose=verbose,
        loss_fn=task.loss_fn,
    )


def train(config, *, strategy=None, callbacks=(), verbose=1, report=None):
    """Prompt-tune, evaluate, run the baseline and write the run directory.

    Resumes from `config.out/checkpoints` when it holds a checkpoint of the
    same settings, and continues a finished run given more epochs. Under a
    multi-worker strategy every worker calls this; only the chief writes
    files.

    Args:
        config: `TrainConfig`.
        strategy: a `tf.distribute.Strategy`, or `None` for the current one.
        callbacks: callables `fn(step, loss)` after each prompt-run step.
        verbose: 0 or 1 (progress lines).
        report: optional `fn(line)` for what the run is doing (e.g. "the
            baseline"), besides the progress lines.

    Returns:
        The metrics dict (also written to `metrics.json`).
    """
    strategy = strategy or tf.distribute.get_strategy()
    chief = is_chief(strategy)
    say = report or (lambda line: None)
    out = os.path.abspath(config.out)
    model_path = models.resolve_model(config.model)
    settings = {**config.settings(), "model": model_path}
    finished = resume.check(out, settings, config.epochs, config.baseline)
    if finished is not None:
        say(f"{out} already holds this run, finished: nothing to train.")
        return finished
    task = tasks.create(config, model_path)
    task.prepare()
    checkpoints = os.path.join(out, run_dir.CHECKPOINT_DIR)
    trainer = _trainer(
        task.build_prompted,
        task,
        config,
        strategy,
        out,
        "prompt",
        verbose,
        checkpoints,
    )
    if chief:
        resume.write_settings(out, settings)
    started = time.perf_counter()
    result = trainer.fit(
        task.dataset,
        epochs=config.epochs,
        steps_per_epoch=task.steps_per_epoch,
        checkpoint_every=config.checkpoint_every,
        callbacks=callbacks,
        validate=task.validate,
    )
    seconds = (
        time.perf_counter()
        - started
        - sum(h.get("validate_seconds", 0.0) for h in result["history"])
    )
    trainer.close()
    model = trainer.model
    metrics = {
        **task.evaluate(model),
        **task.data_metrics,
        "task": config.task,
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
        "baseline": bool(config.baseline),
    }
    if chief:
        task.save(out, model)
    if config.baseline:
        say("Baseline: the same frozen model without a prompt")

        def train_baseline(build, name):
            baseline = _trainer(
                build,
                task,
                config,
                strategy,
                out,
                name,
                verbose,
                os.path.join(checkpoints, name),
            )
            fitted = baseline.fit(
                task.dataset,
                epochs=config.epochs,
                steps_per_epoch=task.steps_per_epoch,
            )
            baseline.close()
            return baseline.model, fitted

        metrics.update(task.baseline(train_baseline))
    if chief:
        run_dir.write_json(os.path.join(out, run_dir.METRICS_FILE), metrics)
    return metrics


def train_classifier(config, **kwargs):
    """`train` for a classifier config (the name earlier versions used)."""
    return train(config, **kwargs)
