"""What an existing run directory allows a new `train` into it.

- nothing there (or files of a refused run without a checkpoint): a new run;
- checkpoints of the same settings: resume from the last one (a killed
  run), or, with more `--epochs` than a finished run had, continue from it
  (the new epochs' example order follows the same `(seed, epoch)` rule);
- a finished run of the same settings and epochs: nothing to do, and no
  file is touched;
- checkpoints of other settings, or fewer epochs than already trained:
  refused, naming the settings.

The settings are `TrainConfig.settings()` (without `epochs`) plus the model
loaded, kept in `checkpoints/run-config.json`, written once the run's
checks have passed and before its first step.

Example:
```python
previous = check(out, settings, epochs=12, baseline=True)
if previous is not None:
    return previous  # finished: the recorded metrics
```
"""

import os

import tensorflow as tf

from tf_softprompt.training import run_dir

SETTINGS_FILE = "run-config.json"


def settings_path(out):
    return os.path.join(out, run_dir.CHECKPOINT_DIR, SETTINGS_FILE)


def _changed(previous, settings):
    keys = (set(previous) | set(settings)) - {"epochs"}
    return sorted(k for k in keys if previous.get(k) != settings.get(k))


def check(out, settings, epochs, baseline):
    """Check `out` against a run of `settings`; the recorded metrics if
    that run is finished, else `None` (train, resuming where possible).

    Raises:
        ValueError: the directory holds checkpoints of other settings, or
            a run trained for more epochs.
    """
    checkpoints = os.path.join(out, run_dir.CHECKPOINT_DIR)
    has_checkpoint = os.path.isdir(checkpoints) and tf.train.latest_checkpoint(
        checkpoints
    )
    path = settings_path(out)
    if has_checkpoint and os.path.exists(path):
        changed = _changed(run_dir.read_json(path, "checkpoint config"), settings)
        if changed:
            raise ValueError(
                f"{out} holds checkpoints of a run with different settings "
                f"({', '.join(changed)}), so it cannot resume this one. Use a new "
                "--out directory, or the same settings."
            )
    metrics_path = os.path.join(out, run_dir.METRICS_FILE)
    if not (has_checkpoint and os.path.exists(metrics_path)):
        return None
    metrics = run_dir.read_json(metrics_path, "metrics")
    trained = metrics.get("epochs")
    if isinstance(trained, int) and trained > epochs:
        raise ValueError(
            f"{out} already holds a run trained for {trained} epochs; it cannot "
            f"be cut back to --epochs {epochs}. Pass --epochs {trained} or more "
            "(to continue it), or a new --out directory."
        )
    if trained == epochs and (not baseline or metrics.get("baseline")):
        return metrics
    return None


def write_settings(out, settings):
    """Record the settings the checkpoints belong to (atomically)."""
    os.makedirs(os.path.join(out, run_dir.CHECKPOINT_DIR), exist_ok=True)
    run_dir.write_json(settings_path(out), settings)
