"""Progress of a training run, readable on a terminal and in a log file.

On a terminal each epoch shows a Keras progress bar; elsewhere (a pipe, a
file, CI) it writes plain lines, about four per epoch, without control
codes. Each epoch ends with one line of its figures:

```
Epoch 3/12: loss 0.4123 - learning_rate 0.01 - val_loss 0.38 - val_accuracy 0.86 (4 s)
```

Example:
```python
progress = Progress(epochs=2, steps_per_epoch=50)
progress.start_epoch(0, skip=0)
progress.update(1, loss=0.69)
progress.end_epoch(0, {"loss": 0.5, "val_accuracy": 0.8}, seconds=3.1)
```
"""

import sys

LINES_PER_EPOCH = 4


def format_value(value):
    """A figure as a progress line shows it (4 significant decimals)."""
    if isinstance(value, float):
        return (
            f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}"
        )
    return str(value)


class Progress:
    """Progress lines of `Trainer.fit`.

    Args:
        epochs: int, the run's epochs.
        steps_per_epoch: int.
        enabled: bool; `False` prints nothing.
        stream: where to write (default `sys.stdout`).
        terminal: bool, use a progress bar; default: whether `stream` is a
            terminal.
    """

    def __init__(
        self, epochs, steps_per_epoch, enabled=True, stream=None, terminal=None
    ):
        self.epochs = epochs
        self.steps = steps_per_epoch
        self.enabled = bool(enabled)
        self.stream = stream or sys.stdout
        if terminal is None:
            isatty = getattr(self.stream, "isatty", None)
            terminal = bool(isatty and isatty())
        self.terminal = terminal
        self._bar = None
        self._every = max(1, steps_per_epoch // LINES_PER_EPOCH)

    def _print(self, line):
        print(line, file=self.stream, flush=True)

    def start_epoch(self, epoch, skip=0):
        if not self.enabled:
            return
        self._epoch = epoch
        resumed = f" (resumed at step {skip})" if skip else ""
        self._print(f"Epoch {epoch + 1}/{self.epochs}{resumed}")
        if self.terminal:
            import keras

            self._bar = keras.utils.Progbar(self.steps)
            if skip:
                self._bar.update(skip)

    def update(self, step_in_epoch, loss):
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(step_in_epoch, [("loss", loss)])
        elif step_in_epoch % self._every == 0 and step_in_epoch < self.steps:
            self._print(
                f"  step {step_in_epoch}/{self.steps} - loss {format_value(loss)}"
            )

    def end_epoch(self, epoch, values, seconds):
        if not self.enabled:
            return
        self._bar = None
        figures = " - ".join(
            f"{name} {format_value(value)}"
            for name, value in values.items()
            if name != "steps_per_second"
        )
        self._print(f"Epoch {epoch + 1}/{self.epochs}: {figures} ({seconds:.1f} s)")
