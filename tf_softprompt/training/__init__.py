"""Training and distribution, one concept per module:

- `config`: `ClassifierConfig`, the run settings (and the CLI flags derived
  from it);
- `splits`: the train and held-out examples;
- `models`: loading the base and enabling prompt tuning;
- `precision`: float32 or mixed bfloat16;
- `pipeline`: the `tf.data` input pipeline;
- `trainer`: the distributed, resumable `Trainer`;
- `recompute`: opt-in recomputation of transformer layers;
- `tpu`: TPU-readiness checks of a traced step;
- `evaluation`: probabilities and accuracy;
- `run_dir`: the run directory's files, and reloading a finished run;
- `workflow`: `train_classifier`, the end-to-end run behind
  `tf-softprompt train`.
"""

from tf_softprompt.training.config import ClassifierConfig
from tf_softprompt.training.pipeline import (
    epoch_order,
    inference_dataset,
    steps_per_epoch,
    training_dataset,
)
from tf_softprompt.training.run_dir import TrainedClassifier, load_trained
from tf_softprompt.training.trainer import Trainer, is_chief
from tf_softprompt.training.workflow import train_classifier

__all__ = [
    "ClassifierConfig",
    "TrainedClassifier",
    "Trainer",
    "epoch_order",
    "inference_dataset",
    "is_chief",
    "load_trained",
    "steps_per_epoch",
    "train_classifier",
    "training_dataset",
]
