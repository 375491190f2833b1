"""Prefill cost of a baked prompt, measured through the TF1 session loader.

A randomly initialised causal LM (GPT-2 architecture by default: 6 layers,
H = 512, 8 heads, MLP 2048, V = 8192, about 19M weights outside the
embeddings; `--model llama`: the same sizes with 8 query and 2 key/value
heads and RoPE) is exported three times with
`tf_softprompt.export.export_causal_lm`:

- `base`: no prompt (`prompts=[]`), T = 129 text positions;
- `baked`: one P = 100 prompt (form 1, offset 0), baked (the default):
  the prompt's keys/values are computed at export and the served graph
  runs the 129 text positions alone;
- `unbaked`: the same prompt with `bake=False`: every request runs the 100
  prompt positions in front of the text (229 positions).

`predict_tokens` is timed on 128 text tokens plus one free position, so a
call is exactly the prefill and the first generated token. Runs are
interleaved (background load hits every variant alike) and medians are
reported. The last printed line is a JSON object with the raw milliseconds
and `prefill_ratio_baked_b1`, `_b8` (baked / base at batch 1 and 8),
`prefill_ratio_baked` (the larger; target <= 1.05), and the unbaked
export's ratios next to them.

Usage:
    python bench/serving_baked.py [--model gpt2|llama] [--repeats 15] [--out DIR]
"""

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving import interleaved_medians  # noqa: E402 (bench/serving.py)

P, TEXT, V = 100, 128, 8192
LAYERS, HIDDEN, HEADS, MLP = 6, 512, 8, 2048
BATCHES = (1, 8)
VARIANTS = ("base", "baked", "unbaked")


def _tokenizer():
    import keras_hub

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["<|endoftext|>", *letters, *("Ġ" + c for c in letters), "Ġ"]
    # (Ġa is a letter token too, so the one merge "Ġ a" is in the vocabulary.)
    tokens += [f"tok{i}" for i in range(V - len(tokens))]
    return keras_hub.models.GPT2Tokenizer(
        vocabulary={t: i for i, t in enumerate(tokens)}, merges=["Ġ a"]
    )


def _lm(model):
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
        _tokenizer(), sequence_length=TEXT + 1
    )
    if model == "gpt2":
        backbone = keras_hub.models.GPT2Backbone(
            vocabulary_size=V,
            num_layers=LAYERS,
            num_heads=HEADS,
            hidden_dim=HIDDEN,
            intermediate_dim=MLP,
            max_sequence_length=512,
        )
        return keras_hub.models.GPT2CausalLM(backbone, preprocessor=preprocessor)
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=V,
        num_layers=LAYERS,
        num_query_heads=HEADS,
        num_key_value_heads=2,
        hidden_dim=HIDDEN,
        intermediate_dim=MLP,
    )
    return keras_hub.models.LlamaCausalLM(backbone, preprocessor=preprocessor)


def export_variants(root, model):
    """Export base, baked and unbaked; returns `{name: version_dir}`.

    Exports already in `root` (from an earlier `--out root` run) are reused.
    """
    if all(os.path.exists(f"{root}/{name}/1/saved_model.pb") for name in VARIANTS):
        return {name: f"{root}/{name}/1" for name in VARIANTS}
    from tf_softprompt import hub
    from tf_softprompt.export import export_causal_lm

    dirs = {
        "base": export_causal_lm(
            _lm(model), f"{root}/base", 1, sequence_length=TEXT + 1, prompts=[]
        )
    }
    rng = np.random.default_rng(0)
    for name, bake in (("baked", True), ("unbaked", False)):
        lm = _lm(model)
        handle = hub.enable_prompt_tuning(lm, P)
        handle.prompt.assign(rng.normal(0, 0.5, (P, HIDDEN)).astype(np.float32))
        dirs[name] = export_causal_lm(
            lm, f"{root}/{name}", 1, sequence_length=P + TEXT + 1, bake=bake
        )
    return dirs


def _tokens(batch):
    rng = np.random.default_rng(batch)
    ids = rng.integers(1, V, (batch, TEXT + 1)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[:, -1] = 0  # one position to generate: prefill + the first token
    return {"token_ids": ids * mask, "padding_mask": mask}


def measure(dirs, repeats):
    """Median milliseconds per `predict_tokens` call of each case."""
    from tf_softprompt.serving.loaders import SessionLoaderBackend

    backends = {name: SessionLoaderBackend(path) for name, path in dirs.items()}
    cases = {
        f"{name}_b{batch}": (backends[name], _tokens(batch))
        for batch in BATCHES
        for name in VARIANTS
    }
    first = {}
    for name, (backend, inputs) in cases.items():  # warm up, check equality
        for _ in range(2):
            first[name] = backend.run("predict_tokens", inputs)
    for batch in BATCHES:
        a, b = first[f"baked_b{batch}"], first[f"unbaked_b{batch}"]
        assert all(np.array_equal(a[k], b[k]) for k in a), "baked != unbaked"
    return interleaved_medians(cases, "predict_tokens", repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("gpt2", "llama"), default="gpt2")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--out", default=None, help="export dir, reused if complete (default: temp)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dirs = export_variants(args.out or tmp, args.model)
        ms = measure(dirs, args.repeats)
    for name, value in ms.items():
        print(f"{name:>12}: {value:9.2f} ms")
    ratios = {}
    for variant in ("baked", "unbaked"):
        for batch in BATCHES:
            ratios[f"prefill_ratio_{variant}_b{batch}"] = round(
                ms[f"{variant}_b{batch}"] / ms[f"base_b{batch}"], 4
            )
        ratios[f"prefill_ratio_{variant}"] = max(
            ratios[f"prefill_ratio_{variant}_b{b}"] for b in BATCHES
        )
    result = {
        "ms": {k: round(v, 3) for k, v in ms.items()},
        "model": {
            "architecture": args.model,
            "layers": LAYERS,
            "hidden_dim": HIDDEN,
            "heads": HEADS,
            "intermediate_dim": MLP,
            "vocabulary_size": V,
        },
        "prompt_length": P,
        "text_tokens": TEXT,
        "repeats": args.repeats,
        **ratios,
        "target": 1.05,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
