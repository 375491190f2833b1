"""What a run learns: one module per task, behind one interface.

- `"classification"` (`classification.ClassificationTask`): a text
  classifier's prompt and head, on labelled texts;
- `"causal-lm"` (`completion.CompletionTask`): a causal LM's prompt, on
  prompt/completion pairs (the loss on the completion only) or plain texts.

The workflow (`workflow.train`) runs any task the same way: it calls

- `prepare()`: read and check the data and the model's files, tokenise;
  every refusal happens here, before anything is written;
- `steps_per_epoch`, `dataset(epoch, skip_steps, input_context)` and
  `loss_fn(labels, outputs) -> [b]`: what `Trainer` trains on;
- `build_prompted()` / `handle`: the base with prompt tuning enabled (and
  its position limit checked against the run's sequence length);
- `validate(model)`: the figures printed after each epoch;
- `evaluate(model)`: the held-out metrics of the finished prompt;
- `baseline(train)`: the same figures without a prompt, `baseline_*`;
- `save(out, model)`: the prompt, the head and `run.json`;
- `summary(metrics)`: the human-readable lines `train` and `eval` print.

A new task is one module with such a class, and one line in `_TASKS`.

Example:
```python
task = create(TrainConfig(out="run", task="causal-lm", model="gpt2/",
                          data="pairs.jsonl"), model_path="/abs/gpt2")
task.prepare()
```
"""

import importlib

from tf_softprompt import names

_TASKS = {
    "classification": "tf_softprompt.training.classification:ClassificationTask",
    "causal-lm": "tf_softprompt.training.completion:CompletionTask",
}
assert tuple(_TASKS) == names.TASKS, (tuple(_TASKS), names.TASKS)


def task_class(name):
    """The task class registered under `name`."""
    if name not in _TASKS:
        raise ValueError(f"Unknown task {name!r}. Use one of {list(_TASKS)}.")
    module, _, attribute = _TASKS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def create(config, model_path):
    """The task object of a run: `config.task`'s class."""
    return task_class(config.task)(config, model_path)


def for_run(run):
    """The task class of a run record (`RunRecord.kind`)."""
    from tf_softprompt.training.run_record import CAUSAL_LM_KIND

    causal = run.get("kind") == CAUSAL_LM_KIND
    return task_class("causal-lm" if causal else "classification")
