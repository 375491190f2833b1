"""What an export stores and what TF Serving holds after loading it.

For five export kinds, each against its own base:

- `default`: the embedded default, `tf-softprompt train --out R` (one
  epoch, no baseline: the export's structure does not depend on how long
  it trained) then `tf-softprompt export R`: the packaged MiniLM, a P = 20
  prefix and a linear head;
- `multi`: four P = 20 form-1 prompts on MiniLM, one export;
- `prefix`: a P = 20 prefix on MiniLM;
- `baked_causal_lm`: a GPT-2 (6 layers, H = 512, V = 8192) with a P = 100
  form-1 prompt, its keys and values baked;
- `bf16`: a P = 20 form-1 prompt on MiniLM exported under
  `mixed_bfloat16` (float32 weights, bf16 compute).

Figures per kind:

- `export_size_ratio_<kind>`: the bytes of `variables/` over the bytes of
  what must be there once: the base's weights, the served prompt table
  (for a baked export, its keys and values) and the heads, all float32
  (goal <= 1.02);
- `loaded_rss_ratio_<kind>`: the resident memory of a fresh process after
  the TF1 session loader (TF Serving's path) loads the export, over the
  same process after it loads the base served alone: the same model,
  exported the same way without a prompt (goal <= 1.05). This is what the
  prompt costs a server;
- `loaded_rss_ratio_bare_<kind>`: the same numerator over a process that
  loads a SavedModel holding the base's weights once and nothing else (a
  trivial graph). It also charges the serving graph itself (tokenizer,
  the model's functions, a causal LM's generation loop), which any
  servable of that base holds, to the prompt;
- `plain_size_ratio_<kind>`: the no-prompt export's `variables/` over the
  base's weight bytes.

Usage:
    python bench/export_storage.py [--out DIR]  (one JSON line last)
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = ("default", "multi", "prefix", "baked_causal_lm", "bf16")
P, LENGTH = 20, 128


def _minilm():
    from tf_softprompt import packaged_model

    return packaged_model.model_dir()


def _bytes(weights):
    return int(sum(np.asarray(w).size * 4 for w in weights))


def _variables_bytes(export_dir):
    directory = os.path.join(export_dir, "variables")
    return sum(
        os.path.getsize(os.path.join(directory, name))
        for name in os.listdir(directory)
        if name.startswith("variables.data")
    )


def _base_only(weights, path):
    """A SavedModel with the base's weights once (and a trivial signature)."""
    import tensorflow as tf

    module = tf.Module()
    module.weights = [tf.Variable(np.asarray(w)) for w in weights]
    module.serve = tf.function(
        lambda: {"size": tf.add_n([tf.size(w) for w in module.weights])},
        input_signature=[],
    )
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return path


def _classifier(**kwargs):
    from tf_softprompt.training import models

    try:
        return models.load_classifier(_minilm(), 2, **kwargs)
    except TypeError:  # tf-softprompt before `pooling` (to measure "before")
        return models.load_classifier(_minilm(), 2)


def export_kinds(root):
    """`{kind: (export_dir, base_only_dir, expected_bytes, plain_export_dir,
    base_bytes)}`: the export, the base's weights alone, what must be
    stored, the same base exported without a prompt, the base's bytes."""
    import keras

    from tf_softprompt import cli, hub
    from tf_softprompt.export import export_causal_lm, export_model
    from tf_softprompt.training import models, precision

    sys.path.insert(0, HERE)
    from serving_baked import _lm  # noqa: PLC0415 (bench/serving_baked.py)

    tokenizer = models.load_preprocessor(_minilm(), LENGTH).tokenizer
    common = {"tokenizer": tokenizer, "sequence_length": LENGTH}
    kinds = {}
    rng = np.random.default_rng(0)

    def record(kind, export_dir, base_weights, extra_weights, plain):
        base = _base_only(base_weights, f"{root}/{kind}-base-only")
        expected = _bytes(base_weights) + _bytes(extra_weights)
        kinds[kind] = (export_dir, base, expected, plain, _bytes(base_weights))

    def plain_classifier(kind, **kwargs):
        return export_model(_classifier(**kwargs), f"{root}/{kind}-plain", 1, **common)

    # The embedded default, through the CLI.
    run = f"{root}/default-run"
    with contextlib.redirect_stdout(sys.stderr):  # one JSON line on stdout
        cli.main(["train", "--out", run, "--epochs", "1", "--no-baseline", "--quiet"])
        cli.main(["export", run, "--out", f"{root}/default", "--version", "1"])
    model = _classifier()
    backbone = [w.numpy() for w in model.backbone.weights]
    head = [w.numpy() for w in model.output_dense.weights]
    handle = hub.enable_prompt_tuning(model, P, method="prefix")
    plain = plain_classifier("default")
    record(
        "default", f"{root}/default/1", backbone, [*head, handle.prompt_values()], plain
    )

    keras.utils.set_random_seed(0)
    model = _classifier(pooling="pooler")
    handle = hub.enable_prompt_tuning(model, P)
    paths = {}
    for task in ("sst", "news", "faq", "chat"):
        handle.prompt.assign(rng.normal(0, 0.5, (P, handle.hidden_dim)))
        paths[task] = f"{root}/{task}.prompt.npz"
        handle.save_prompt(paths[task], task=task)
    multi = export_model(
        _classifier(pooling="pooler"), f"{root}/multi", 1, prompts=paths, **common
    )
    head = [w.numpy() for w in model.output_dense.weights]
    table = np.zeros((4 * P, handle.hidden_dim), np.float32)
    plain = plain_classifier("pooler", pooling="pooler")
    record("multi", multi, backbone, [*head, table], plain)

    model = _classifier(pooling="pooler")
    handle = hub.enable_prompt_tuning(model, P, method="prefix")
    handle.assign_prompt(rng.normal(0, 0.5, handle.prompt.shape))
    prefix = export_model(model, f"{root}/prefix", 1, **common)
    record("prefix", prefix, backbone, [*head, handle.prompt_values()], plain)

    lm = _lm("gpt2")
    base_weights = [w.numpy() for w in lm.backbone.weights]
    plain = export_causal_lm(  # the same 129 text positions, no prompt
        _lm("gpt2"), f"{root}/baked_causal_lm-plain", 1, sequence_length=129, prompts=[]
    )
    handle = hub.enable_prompt_tuning(lm, 100)
    handle.prompt.assign(rng.normal(0, 0.5, handle.prompt.shape))
    baked = export_causal_lm(lm, f"{root}/baked_causal_lm", 1, sequence_length=229)
    layers, heads, head_dim = 6, 8, 64
    keys_values = np.zeros((layers, 2, 100, heads, head_dim), np.float32)
    record("baked_causal_lm", baked, base_weights, [keys_values], plain)

    with precision.policy("mixed_bfloat16"):
        model = _classifier(pooling="pooler")
        handle = hub.enable_prompt_tuning(model, P)
        plain = export_model(
            _classifier(pooling="pooler"), f"{root}/bf16-plain", 1, **common
        )
    bf16 = export_model(model, f"{root}/bf16", 1, **common)
    record("bf16", bf16, backbone, [*head, handle.prompt_values()], plain)
    return kinds


_RSS = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
from tf_softprompt.serving.loaders import SessionLoaderBackend
SessionLoaderBackend(sys.argv[1])
for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
        print(int(line.split()[1]) * 1024)
"""


def loaded_rss(export_dir):
    """Bytes resident in a fresh process after the session loader loads."""
    done = subprocess.run(
        [sys.executable, "-c", _RSS, export_dir],
        capture_output=True,
        text=True,
        check=True,
        cwd=tempfile.gettempdir(),  # the installed package, not a source tree
    )
    return int(done.stdout.strip().splitlines()[-1])


def figures(kinds):
    result = {}
    for kind, (export_dir, base_only, expected, plain, base_bytes) in kinds.items():
        stored = _variables_bytes(export_dir)
        result[f"export_size_ratio_{kind}"] = round(stored / expected, 4)
        result[f"plain_size_ratio_{kind}"] = round(
            _variables_bytes(plain) / base_bytes, 4
        )
        result[f"variables_mb_{kind}"] = round(stored / 2**20, 2)
        result[f"expected_mb_{kind}"] = round(expected / 2**20, 2)
        rss = {"export": loaded_rss(export_dir)}
        rss["plain"], rss["bare"] = loaded_rss(plain), loaded_rss(base_only)
        result[f"loaded_rss_ratio_{kind}"] = round(rss["export"] / rss["plain"], 4)
        result[f"loaded_rss_ratio_bare_{kind}"] = round(rss["export"] / rss["bare"], 4)
        result[f"loaded_rss_mb_{kind}"] = {
            name: round(value / 2**20, 1) for name, value in rss.items()
        }
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="directory (default: temp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or tmp
        os.makedirs(root, exist_ok=True)
        result = figures(export_kinds(root))
    result["targets"] = {"export_size_ratio": "<= 1.02", "loaded_rss_ratio": "<= 1.05"}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
