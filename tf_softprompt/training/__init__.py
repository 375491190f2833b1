"""Training and distribution: the input pipeline, the distributed resumable
`Trainer`, TPU-readiness checks and the text-classification workflow used by
the `tf-softprompt` CLI."""

from tf_softprompt.training.pipeline import (
    epoch_order,
    inference_dataset,
    steps_per_epoch,
    training_dataset,
)
from tf_softprompt.training.trainer import Trainer, is_chief

__all__ = [
    "Trainer",
    "epoch_order",
    "inference_dataset",
    "is_chief",
    "steps_per_epoch",
    "training_dataset",
]
