"""The classification task: a text classifier's prompt and head, trained
on labelled texts (`tf-softprompt train`, the default task).

The baseline is the same frozen base and head trained without a prompt,
with the same seed, steps and learning rate; it has its own checkpoints
(`checkpoints/baseline`), so it is trained once per run and continues with
the run when more epochs are asked for.

Example:
```python
task = ClassificationTask(TrainConfig(out="run"), model_path)
task.prepare()
model = task.build_prompted()
```
"""

import os

import numpy as np

from tf_softprompt import data as data_lib
from tf_softprompt.training import evaluation, models, pipeline, run_dir
from tf_softprompt.training.completion_data import tokenize
from tf_softprompt.training.splits import load_splits
from tf_softprompt.training.trainer import sparse_classification_loss


def report(probabilities, label_ids, names):
    """The held-out figures of a classifier from its probabilities:
    `accuracy`, `loss` (mean cross-entropy, nats), per-class precision,
    recall and F1, macro F1 and the confusion matrix."""
    figures = evaluation.loss_and_accuracy(probabilities, label_ids)
    return {
        **figures,
        **evaluation.classification_report(
            label_ids, probabilities.argmax(-1), list(names)
        ),
    }


def summary(metrics):
    """Human-readable lines of a classifier's metrics (`report`'s keys,
    `labels`, `eval_examples`, and `baseline_accuracy` where present)."""
    names = metrics["labels"]
    lines = [
        f"Accuracy {metrics['accuracy']:.4f} on {metrics['eval_examples']} "
        "held-out examples"
    ]
    if metrics.get("baseline_accuracy") is not None:
        lines[0] += (
            f" (the same head without a prompt: {metrics['baseline_accuracy']:.4f})"
        )
    if "per_class" not in metrics:
        return lines
    width = max(len("class"), *(len(n) for n in names)) + 2
    lines.append(
        f"  {'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"
    )
    for name in names:
        c = metrics["per_class"][name]
        lines.append(
            f"  {name:<{width}}{c['precision']:>10.4f}{c['recall']:>10.4f}"
            f"{c['f1']:>10.4f}{c['support']:>10d}"
        )
    lines.append("Confusion matrix (rows: true label, columns: predicted):")
    cell = max(8, *(len(n) + 2 for n in names))
    lines.append("  " + " " * width + "".join(f"{n:>{cell}}" for n in names))
    for name, row in zip(names, metrics["confusion_matrix"]):
        lines.append(f"  {name:<{width}}" + "".join(f"{v:>{cell}d}" for v in row))
    return lines


def truncated(preprocessor, texts):
    """`(count, kept)`: how many `texts` have more tokens than the
    `kept` the preprocessor keeps (its sequence length less the special
    tokens it adds)."""
    import tensorflow as tf

    specials = int(np.asarray(preprocessor(tf.constant([""]))["padding_mask"]).sum())
    kept = int(preprocessor.sequence_length) - specials
    lengths = [len(ids) for ids in tokenize(preprocessor.tokenizer, texts)]
    return int(np.sum(np.asarray(lengths) > kept)), kept


class ClassificationTask:
    """A prompt-tuned text classifier (`tasks` describes the interface).

    Args:
        config: the run's `TrainConfig` (`task="classification"`).
        model_path: the resolved preset name or directory.
    """

    kind = run_dir.CLASSIFIER_KIND
    loss_fn = staticmethod(sparse_classification_loss)

    def __init__(self, config, model_path):
        self.config = config
        self.model_path = model_path
        self.handle = None

    def prepare(self):
        config = self.config
        self.splits = load_splits(config)
        self.names = list(self.splits.labels.names)
        self.preprocessor = models.load_preprocessor(
            self.model_path, config.sequence_length
        )
        self.steps_per_epoch = pipeline.steps_per_epoch(
            len(self.splits.train_texts), config.batch_size
        )

    @property
    def data_metrics(self):
        return {
            "train_examples": len(self.splits.train_texts),
            "eval_examples": len(self.splits.eval_texts),
            "labels": self.names,
            "data": self.splits.source,
        }

    def dataset(self, epoch, skip_steps, input_context):
        return pipeline.training_dataset(
            self.splits.train_texts,
            self.splits.train_ids,
            self.preprocessor,
            global_batch_size=self.config.batch_size,
            seed=self.config.seed,
            epoch=epoch,
            skip_steps=skip_steps,
            input_context=input_context,
        )

    def _base(self):
        config = self.config
        return models.load_classifier(
            self.model_path,
            len(self.names),
            config.dropout,
            config.base_dropout,
            config.pooling,
        )

    def build_prompted(self):
        model = self._base()
        self.handle = models.enable_prompt(
            model, self.config, self.preprocessor, self.names
        )
        self.handle.check_sequence_length(self.config.sequence_length)
        return model

    def build_frozen(self):
        model = self._base()
        model.backbone.trainable = False
        return model

    def _probabilities(self, model):
        return evaluation.predict_probabilities(
            model, self.preprocessor, self.splits.eval_texts, self.config.batch_size
        )

    def validate(self, model):
        figures = evaluation.loss_and_accuracy(
            self._probabilities(model), self.splits.eval_ids
        )
        return {f"val_{name}": value for name, value in figures.items()}

    def evaluate(self, model):
        figures = report(self._probabilities(model), self.splits.eval_ids, self.names)
        return {
            "accuracy": figures.pop("accuracy"),
            "eval_loss": figures.pop("loss"),
            **figures,
        }

    def baseline(self, train):
        """Train the head without a prompt (`train(build, name)` returns
        `(model, fit result)`); its accuracy and final loss."""
        model, result = train(self.build_frozen, "baseline")
        figures = evaluation.loss_and_accuracy(
            self._probabilities(model), self.splits.eval_ids
        )
        return {
            "baseline_accuracy": figures["accuracy"],
            "baseline_final_loss": result["loss"],
        }

    def save(self, out, model):
        handle = self.handle
        handle.save_prompt(f"{out}/{run_dir.PROMPT_FILE}", task=self.splits.task_name)
        run_dir.save_head(
            f"{out}/{run_dir.HEAD_FILE}", run_dir.head_variables(model, handle)
        )
        run_dir.run_record(
            self.config, self.model_path, model, handle, self.names, self.splits
        ).write(out)

    summary_of = staticmethod(summary)

    @staticmethod
    def evaluate_run_dir(args):
        """`tf-softprompt eval` of a classifier run: `report` on `args.data`
        (default: the embedded test set of a run trained on it)."""
        trained = run_dir.load_trained(args.out)
        examples = _eval_examples(args, trained.run)
        labels = data_lib.LabelVocabulary(tuple(trained.labels))
        label_ids = labels.encode(examples.labels, examples.path)
        figures = report(
            trained.predict(examples.texts, args.batch_size), label_ids, trained.labels
        )
        return {
            "accuracy": figures.pop("accuracy"),
            "eval_loss": figures.pop("loss"),
            **figures,
            "labels": trained.labels,
            "eval_examples": len(examples),
            "data": os.path.abspath(examples.path),
        }


def _eval_examples(args, run):
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
