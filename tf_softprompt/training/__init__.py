"""Training and distribution, one concept per module:

- `config`: `TrainConfig`, the run settings (and the CLI flags derived
  from it);
- `tasks`: what a run learns: `classification` (a text classifier's head
  and prompt) or `completion` (a causal LM's prompt, the loss on
  completions only);
- `splits`: the train and held-out examples of a classifier;
- `models`: loading the base and enabling prompt tuning;
- `precision`: float32 or mixed bfloat16;
- `pipeline`: the `tf.data` input pipeline;
- `trainer`: the distributed, resumable `Trainer`;
- `progress`: the progress lines `Trainer` prints;
- `recompute`: opt-in recomputation of transformer layers;
- `tpu`: TPU-readiness checks of a traced step;
- `evaluation`: probabilities, accuracy and the per-class report;
- `run_record`, `run_dir`: the run directory's files, and reloading a
  finished run;
- `resume`: what an existing run directory allows (resume, continue,
  nothing left to do);
- `workflow`: `train`, the end-to-end run behind `tf-softprompt train`.

Names are imported on first use, so the command line can build its parser
without importing TensorFlow.
"""

from tf_softprompt import lazy

_EXPORTS = {
    "ClassifierConfig": "config",
    "TrainConfig": "config",
    "TrainedCausalLM": "run_dir",
    "TrainedClassifier": "run_dir",
    "Trainer": "trainer",
    "epoch_order": "pipeline",
    "inference_dataset": "pipeline",
    "is_chief": "trainer",
    "load_trained": "run_dir",
    "load_trained_causal_lm": "run_dir",
    "steps_per_epoch": "pipeline",
    "train": "workflow",
    "train_classifier": "workflow",
    "training_dataset": "pipeline",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy.attributes(__name__, _EXPORTS)
