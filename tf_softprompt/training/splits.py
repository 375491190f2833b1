"""The train and held-out examples of a classifier run, with integer labels
(and the seeded hold-out every task uses)."""

import dataclasses
import os

import numpy as np

from tf_softprompt import data as data_lib


@dataclasses.dataclass
class Splits:
    """Train and held-out examples with integer labels.

    Attributes:
        labels: the `LabelVocabulary` (label order fixed by the train file).
        train_texts, train_ids: training texts and label ids.
        eval_texts, eval_ids: held-out texts and label ids.
        source: where the data came from (`embedded:<name>` or a path).
    """

    labels: data_lib.LabelVocabulary
    train_texts: list
    train_ids: list
    eval_texts: list
    eval_ids: list
    source: str

    @property
    def task_name(self):
        """The task's name: the data file's stem (`sentiment` embedded)."""
        return os.path.splitext(os.path.basename(self.source.split(":")[-1]))[0]


def held_out(num_examples, fraction, seed):
    """`(kept, held)`: sorted indices of the examples trained on and of the
    seeded `fraction` held out (at least one)."""
    order = np.random.default_rng(seed).permutation(num_examples)
    cut = max(1, int(round(num_examples * fraction)))
    return sorted(order[cut:]), sorted(order[:cut])


def load_splits(config):
    """Read the configured data and split it into train and held-out sets.

    Args:
        config: a `ClassifierConfig`.

    Returns:
        `Splits`. Without `eval_data`, a seeded `validation_split` of the
        training file is held out.

    Example:
    ```python
    splits = load_splits(ClassifierConfig(out="run"))  # the embedded dataset
    ```
    """
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
    kept, held = held_out(len(train), config.validation_split, config.seed)
    return Splits(
        labels,
        [train.texts[i] for i in kept],
        [train_ids[i] for i in kept],
        [train.texts[i] for i in held],
        [train_ids[i] for i in held],
        source,
    )
