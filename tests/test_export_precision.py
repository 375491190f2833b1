"""A bfloat16 serving export against the float32 export of the same weights.

A prompt-tuned (form 1 and prefix) tiny BERT classifier is exported twice:
built under the float32 policy, and rebuilt under `mixed_bfloat16` with the
same weights (`tf_softprompt.training.precision.policy`; what `tf-softprompt
export --precision mixed_bfloat16` does). Both run in the TF1 session loader
and the C-API program.

Stated tolerance: every class probability of the bf16 export is within
0.02 of the float32 export's, and the predicted label is the same wherever
float32's top two classes are more than 0.05 apart. bf16 keeps about three
significant digits; the measured gap on these models is printed by the
assertion messages.
"""

import keras
import keras_hub
import numpy as np
import pytest
from saved_weights import assert_each_weight_once, stored_tensors
from tiny_models import build_backbone

from tf_softprompt import hub
from tf_softprompt.export import export_model, read_info
from tf_softprompt.methods import prefix as prefix_lib
from tf_softprompt.serving import loaders
from tf_softprompt.training import precision

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "the a good bad movie film great awful plot acting was is not very".split()
)
TEXTS = [
    "the good movie",
    "awful plot awful acting",
    "not very good",
    "a great great film",
    "",
    "the plot was bad",
]
LABELS = ["negative", "neutral", "positive"]
TOLERANCE = 0.02


def _classifier(policy, method, weights=None):
    with precision.policy(policy):
        backbone = build_backbone("bert", seed=4, vocabulary_size=len(WORDS))
        model = keras_hub.models.BertTextClassifier(
            backbone, num_classes=len(LABELS), preprocessor=None
        )
        kwargs = {"initializer": prefix_lib.from_token_ids([5, 6, 7, 8])}
        handle = hub.enable_prompt_tuning(
            model, 4, method=method, **(kwargs if method == "prefix" else {})
        )
    if weights is not None:
        model.set_weights(weights)
    return model, handle


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=WORDS)
    dirs, dtypes, infos, unprompted, shapes = {}, {}, {}, {}, {}
    for method in ("embedding", "prefix"):
        f32, handle = _classifier("float32", method)
        rng = np.random.default_rng(1)
        # Sharper attention (x15), a head that separates the classes, so
        # labels are not all ties, and a prompt that moves them: with the
        # initializer's small weights attention is near uniform and the
        # prompt moves p by only ~1e-3, below what the tolerance could see.
        for weight in f32.backbone.weights:
            if len(weight.shape) >= 2 and "attention" in weight.path:
                weight.assign(np.asarray(weight) * 15.0)
        f32.output_dense.kernel.assign(rng.normal(0, 8.0, (16, len(LABELS))))
        handle.assign_prompt(rng.normal(0, 2.0, handle.table.shape))
        shapes[method] = tuple(handle.table.shape)
        bf16, _ = _classifier("mixed_bfloat16", method, f32.get_weights())
        # The same weights without the prompt, in float32: how far the
        # prompt moves the probabilities.
        plain, _ = _classifier("float32", method, f32.get_weights())
        hub.disable_prompt_tuning(plain)
        positions = 24 - (4 if method == "embedding" else 0)
        preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
            tokenizer, sequence_length=positions
        )
        logits = plain(preprocessor(np.array(TEXTS)))
        unprompted[method] = np.asarray(keras.ops.softmax(logits))
        for name, model in (("float32", f32), ("bfloat16", bf16)):
            dtypes[method, name] = model.backbone.compute_dtype
            dirs[method, name] = export_model(
                model,
                root / f"{method}-{name}",
                1,
                tokenizer=tokenizer,
                sequence_length=24,
                labels=LABELS,
            )
            infos[method, name] = read_info(dirs[method, name])["compute_dtype"]
    assert infos[method, "bfloat16"] == "bfloat16"
    assert infos[method, "float32"] == "float32"
    jobs = [
        {
            "export_dir": directory,
            "signature": "serving_default",
            "inputs": {"text": np.array([t.encode() for t in TEXTS], dtype=object)},
        }
        for directory in dirs.values()
    ]
    binary = loaders.build_c_loader(str(root / "c_loader"))
    keys = list(dirs)
    return dtypes, {
        **{
            loader: dict(zip(keys, results))
            for loader, results in loaders.run_both_loaders(jobs, binary).items()
        },
        "unprompted": unprompted,
        "dirs": dirs,
        "shapes": shapes,
    }


@pytest.mark.parametrize("loader", ["session", "c_api"])
@pytest.mark.parametrize("method", ["embedding", "prefix"])
def test_bf16_export_is_within_the_stated_tolerance_of_float32(exports, loader, method):
    dtypes, results = exports
    assert dtypes[method, "float32"] == "float32"
    assert dtypes[method, "bfloat16"] == "bfloat16"
    f32 = results[loader][method, "float32"]["outputs"]
    bf16 = results[loader][method, "bfloat16"]["outputs"]
    gap = np.abs(bf16["probabilities"] - f32["probabilities"]).max()
    assert gap <= TOLERANCE, f"max |p_bf16 - p_f32| = {gap:.4f}"
    assert gap > 0  # really computed in another precision
    top2 = np.sort(f32["probabilities"], axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.05
    np.testing.assert_array_equal(bf16["label_ids"][clear], f32["label_ids"][clear])
    assert clear.sum() >= 3
    assert bf16["probabilities"].dtype == np.float32
    np.testing.assert_allclose(bf16["probabilities"].sum(axis=1), 1.0, atol=1e-5)
    # The prompt moves the probabilities by far more than the tolerance, so
    # a bf16 export that lost or mangled it could not pass.
    moved = np.abs(f32["probabilities"] - results["unprompted"][method]).max()
    assert moved > 5 * TOLERANCE, f"the prompt moves p by {moved:.4f}"


@pytest.mark.parametrize("method", ["embedding", "prefix"])
def test_bf16_export_stores_float32_weights_and_the_prompt_once(exports, method):
    _, results = exports
    stored = stored_tensors(results["dirs"][method, "bfloat16"])
    prompts = [k for k, v in stored.items() if v.shape == results["shapes"][method]]
    assert len(prompts) == 1, prompts  # the prompt table, stored once
    dtypes = {str(v.dtype) for v in stored.values() if v.dtype.kind == "f"}
    assert dtypes == {"float32"}, dtypes
    assert_each_weight_once(results["dirs"][method, "bfloat16"])


def test_cli_exports_a_run_in_bfloat16(tmp_path):
    from tiny_models import embedded_texts, save_tiny_bert_preset

    from tf_softprompt import cli
    from tf_softprompt.export import read_info

    preset = save_tiny_bert_preset(tmp_path / "base", embedded_texts())
    run = str(tmp_path / "run")
    argv = ["train", "--model", preset, "--out", run, "--epochs", "1"]
    assert cli.main([*argv, "--no-baseline", "--quiet", "--prompt-length", "3"]) == 0
    dirs = {}
    for precision_name in ("float32", "mixed_bfloat16"):
        base = str(tmp_path / "models" / precision_name)
        argv = ["export", run, "--out", base, "--version", "1"]
        assert cli.main([*argv, "--precision", precision_name]) == 0
        dirs[precision_name] = f"{base}/1"
    assert read_info(dirs["mixed_bfloat16"])["compute_dtype"] == "bfloat16"
    assert read_info(dirs["float32"])["compute_dtype"] == "float32"
    text = np.array([t.encode() for t in ["a lovely film", "cold soup", ""]], object)
    jobs = [
        {"export_dir": d, "signature": "serving_default", "inputs": {"text": text}}
        for d in dirs.values()
    ]
    f32, bf16 = (
        r["outputs"]["probabilities"] for r in loaders.run_session_loader(jobs)
    )
    assert np.abs(bf16 - f32).max() <= TOLERANCE
