"""The exporter, checked the way TF Serving loads models.

Small models are exported once per module; every signature of every export
then runs in ONE fresh process through the TF1 session loader and in ONE
process of `serving/c_loader.c` built against the wheel's C API, and the
outputs are compared with the original Keras models run in this process.
"""

import os
import shutil
import subprocess
import sys

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tf_softprompt import PromptEmbedding, PromptPrepend, hub, keras2
from tf_softprompt.export import (
    TPU_ALIAS,
    MultiTaskPromptTable,
    export_model,
    read_warmup_requests,
)
from tf_softprompt.serving import loaders

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "the a good bad movie film great awful plot acting was is not very".split()
)
V, H = len(WORDS), 16
SEQUENCE_LENGTH = 16
PMAX = 4
TEXT_POSITIONS = SEQUENCE_LENGTH - PMAX  # 12, of which 10 are text tokens
LABELS = ["negative", "neutral", "positive"]
TASK_LENGTHS = {"sst": 4, "imdb": 2, "news": 3}
TEXTS = [
    "the good movie",
    "",
    "awful plot " * 10,  # 20 tokens: truncated to 10
    "not very good acting",
    "a film",
    "great great",
]
TASKS = ["sst", "imdb", "news", "news", "sst", "imdb"]


def _tokenizer():
    return keras_hub.models.BertTokenizer(vocabulary=WORDS)


def _word_ids(text):
    """Reference tokenisation: every word is in the vocabulary."""
    return [WORDS.index(w) for w in text.split()]


def _reference_ids(text, prompt_length, max_text):
    """[CLS] prompt-ids text[:max_text] [SEP], built without the exporter."""
    virtual = list(range(V, V + prompt_length))
    return [2] + virtual + _word_ids(text)[:max_text] + [3]


def _pad(rows):
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    return ids, (ids != 0).astype(np.int32) | (np.arange(width) == 0)


class _K3Base:
    """Shared layers of a tiny Keras 3 encoder classifier."""

    def __init__(self, seed):
        keras.utils.set_random_seed(seed)
        self.embedding = keras.layers.Embedding(V, H)
        self.embedding.build((None, None))
        self.positions = keras_hub.layers.PositionEmbedding(32)
        self.encoder = keras_hub.layers.TransformerEncoder(32, 2)
        self.head = keras.layers.Dense(len(LABELS))

    def model(self, num_prompt_tokens, prompt=None):
        token_ids = keras.Input((None,), dtype="int32", name="token_ids")
        padding_mask = keras.Input((None,), dtype="int32", name="padding_mask")
        layer = PromptEmbedding.from_embedding(self.embedding, num_prompt_tokens)
        x = layer(token_ids)
        x = x + self.positions(x)
        x = self.encoder(x, padding_mask=padding_mask)
        model = keras.Model(
            {"token_ids": token_ids, "padding_mask": padding_mask},
            self.head(x[:, 0]),
        )
        if prompt is not None:
            layer.prompt.assign(prompt)
        return model, layer


def _k2_model(num_prompt_tokens):
    """A tiny tf-keras classifier: masked mean of prompted embeddings."""
    tf_keras.utils.set_random_seed(3)
    token_ids = tf_keras.Input((None,), dtype="int32", name="token_ids")
    padding_mask = tf_keras.Input((None,), dtype="int32", name="padding_mask")
    layer = keras2.PromptEmbedding(num_prompt_tokens, input_dim=V, output_dim=H)
    x = layer(token_ids)
    weights = tf_keras.layers.Lambda(lambda m: tf.cast(m, "float32")[..., None])(
        padding_mask
    )
    pooled = tf_keras.layers.Lambda(
        lambda a: tf.reduce_sum(a[0] * a[1], 1) / tf.reduce_sum(a[1], 1)
    )([x, weights])
    outputs = tf_keras.layers.Dense(len(LABELS))(pooled)
    return tf_keras.Model(
        {"token_ids": token_ids, "padding_mask": padding_mask}, outputs
    ), layer


def _k3_prepend_model():
    """Keras 3 model with `PromptPrepend` after the embedding (single task)."""
    keras.utils.set_random_seed(5)
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(V, H, mask_zero=True)(token_ids)
    x = PromptPrepend(3, offset=1)(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(token_ids, keras.layers.Dense(len(LABELS))(x))


def _softmax(x):
    return tf.nn.softmax(np.asarray(x, np.float32)).numpy()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Export every model once; compute the in-Python references."""
    root = tmp_path_factory.mktemp("exports")
    tokenizer = _tokenizer()
    out = {"root": root, "expected": {}, "dirs": {}}
    rng = np.random.default_rng(0)

    # Keras 3, multi-task: three prompts of lengths 4, 2, 3 on one base.
    base = _K3Base(seed=1)
    prompts, artifacts = {}, {}
    for task, length in TASK_LENGTHS.items():
        prompts[task] = rng.normal(0, 0.5, (length, H)).astype(np.float32)
        _, layer = base.model(length, prompts[task])
        artifacts[task] = str(root / f"{task}.prompt.npz")
        layer.save_prompt(artifacts[task], task=task)
    model, _ = base.model(4, prompts["sst"])
    out["dirs"]["multi"] = export_model(
        model,
        root / "multi",
        1,
        tokenizer=tokenizer,
        sequence_length=SEQUENCE_LENGTH,
        labels=LABELS,
        prompts=[artifacts[t] for t in TASK_LENGTHS],
        offset=1,  # after [CLS]; PromptEmbedding artifacts record offset 0
    )
    expected = []
    for text, task in zip(TEXTS, TASKS):
        reference, _ = base.model(TASK_LENGTHS[task], prompts[task])
        ids, mask = _pad([_reference_ids(text, TASK_LENGTHS[task], 10)])
        logits = reference({"token_ids": ids, "padding_mask": mask})
        expected.append(_softmax(logits)[0])
    out["expected"]["multi"] = np.stack(expected)
    out["base"], out["artifacts"], out["prompts"] = base, artifacts, prompts

    # Keras 3, single task (the model's own prompt) and PromptPrepend.
    out["dirs"]["single"] = export_model(
        model,
        root / "single",
        1,
        tokenizer=tokenizer,
        sequence_length=SEQUENCE_LENGTH,
        labels=LABELS,
        task="sst",
    )
    out["expected"]["single"] = np.stack(
        [e for e, t in zip(out["expected"]["multi"], TASKS) if t == "sst"]
    )
    prepend = _k3_prepend_model()
    out["dirs"]["prepend"] = export_model(
        prepend,
        root / "prepend",
        1,
        tokenizer=tokenizer,
        sequence_length=SEQUENCE_LENGTH,
        labels=LABELS,
    )
    rows = [[2] + _word_ids(t)[:11] + [3] for t in TEXTS]  # 16 - 3 - 2 text tokens
    ids, _ = _pad(rows)
    out["expected"]["prepend"] = _softmax(prepend(ids))

    # Keras 2 (tf-keras), single task.
    k2, layer = _k2_model(PMAX)
    layer.prompt.assign(rng.normal(0, 0.5, (PMAX, H)).astype(np.float32))
    out["dirs"]["k2"] = export_model(
        k2,
        root / "k2",
        1,
        tokenizer=tokenizer,
        sequence_length=SEQUENCE_LENGTH,
        labels=LABELS,
    )
    ids, mask = _pad([_reference_ids(t, PMAX, 10) for t in TEXTS])
    out["expected"]["k2"] = _softmax(k2({"token_ids": ids, "padding_mask": mask}))
    out["k2"] = k2

    # keras-hub BertTextClassifier with prompt tuning enabled (tf_softprompt.hub).
    keras.utils.set_random_seed(7)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=V,
        num_layers=1,
        num_heads=2,
        hidden_dim=H,
        intermediate_dim=32,
        max_sequence_length=32,
    )
    classifier = keras_hub.models.BertTextClassifier(
        backbone, num_classes=len(LABELS), preprocessor=None
    )
    handle = hub.enable_prompt_tuning(classifier, PMAX)
    handle.prompt.assign(rng.normal(0, 0.5, (PMAX, H)).astype(np.float32))
    out["dirs"]["hub"] = export_model(
        classifier,
        root / "hub",
        1,
        tokenizer=tokenizer,
        sequence_length=SEQUENCE_LENGTH,
        labels=LABELS,
    )
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=TEXT_POSITIONS
    )
    features = preprocessor(tf.constant(TEXTS))
    out["expected"]["hub"] = _softmax(classifier(features))
    return out


def _text_inputs(name):
    inputs = {"text": np.array([t.encode() for t in TEXTS], dtype=object)}
    if name == "multi":
        inputs["task"] = np.array([t.encode() for t in TASKS], dtype=object)
    elif name == "single":
        keep = [t == "sst" for t in TASKS]
        inputs["text"] = inputs["text"][keep]
    return inputs


def _jobs(setup):
    """Every signature of every export, plus bad requests, as loader jobs."""
    jobs = {}
    for name, directory in setup["dirs"].items():
        jobs[f"{name}/text"] = {
            "export_dir": directory,
            "signature": "serving_default",
            "inputs": _text_inputs(name),
        }
        for i, request in enumerate(read_warmup_requests(directory)):
            jobs[f"{name}/warmup{i}"] = {
                "export_dir": directory,
                "signature": request.model_spec.signature_name,
                "inputs": {k: tf.make_ndarray(v) for k, v in request.inputs.items()},
            }
    multi = setup["dirs"]["multi"]
    tokens = setup["tokens"]
    jobs["multi/tokens"] = {
        "export_dir": multi,
        "signature": "predict_tokens",
        "inputs": tokens,
    }
    for task in TASK_LENGTHS:  # the same texts, one task per batch
        jobs[f"multi/only-{task}"] = {
            "export_dir": multi,
            "signature": "serving_default",
            "inputs": {
                "text": _text_inputs("multi")["text"],
                "task": np.array([task.encode()] * len(TEXTS), dtype=object),
            },
        }
    bad = {
        "unknown-task": (
            "serving_default",
            {
                "text": np.array([b"good", b"bad"], dtype=object),
                "task": np.array([b"sst", b"weather"], dtype=object),
            },
        ),
        "float-ids": (
            "predict_tokens",
            {**tokens, "token_ids": tokens["token_ids"].astype(np.float32)},
        ),
        "long-ids": (
            "predict_tokens",
            {
                **tokens,
                "token_ids": np.pad(tokens["token_ids"], [(0, 0), (0, 1)]),
                "padding_mask": np.pad(tokens["padding_mask"], [(0, 0), (0, 1)]),
            },
        ),
        "bad-task-id": ("predict_tokens", {**tokens, "task_id": tokens["task_id"] + 5}),
    }
    for label, (signature, inputs) in bad.items():
        jobs[f"bad/{label}"] = {
            "export_dir": multi,
            "signature": signature,
            "inputs": inputs,
        }
    # After the bad requests: the process is still up and serving.
    jobs["multi/after-bad"] = dict(jobs["multi/text"])
    return jobs


@pytest.fixture(scope="module")
def results(setup, tmp_path_factory):
    """`{loader: {label: result}}` for the session loader and the C API."""
    from tf_softprompt.export.text import TextEncoder

    encoder = TextEncoder(_tokenizer(), TEXT_POSITIONS)
    token_ids, padding_mask = tf.function(encoder)(tf.constant(TEXTS))
    setup["tokens"] = {
        "token_ids": token_ids.numpy(),
        "padding_mask": tf.cast(padding_mask, tf.int32).numpy(),
        "task_id": np.array([list(TASK_LENGTHS).index(t) for t in TASKS], np.int32),
    }
    jobs = _jobs(setup)
    labels, job_list = list(jobs), list(jobs.values())
    binary = loaders.build_c_loader(str(tmp_path_factory.mktemp("c") / "c_loader"))
    return {
        "session": dict(zip(labels, loaders.run_session_loader(job_list))),
        "c_api": dict(zip(labels, loaders.run_c_loader(job_list, binary))),
    }


LOADERS = ["session", "c_api"]


def _outputs(result):
    assert "outputs" in result, result
    return result["outputs"]


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("name", ["multi", "single", "prepend", "k2", "hub"])
def test_serving_default_matches_the_keras_model(results, setup, loader, name):
    outputs = _outputs(results[loader][f"{name}/text"])
    expected = setup["expected"][name]
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-5)
    np.testing.assert_array_equal(outputs["label_ids"], expected.argmax(-1))
    names = [LABELS[i].encode() for i in expected.argmax(-1)]
    assert list(outputs["label_names"]) == names


@pytest.mark.parametrize("loader", LOADERS)
def test_mixed_task_batch_equals_per_task_batches(results, setup, loader):
    mixed = _outputs(results[loader]["multi/text"])["probabilities"]
    for task in TASK_LENGTHS:
        alone = _outputs(results[loader][f"multi/only-{task}"])["probabilities"]
        rows = [i for i, t in enumerate(TASKS) if t == task]
        np.testing.assert_allclose(mixed[rows], alone[rows], atol=1e-5)
    # Different prompts really give different outputs on the same text.
    first = _outputs(results[loader]["multi/only-sst"])["probabilities"]
    second = _outputs(results[loader]["multi/only-imdb"])["probabilities"]
    assert np.abs(first - second).max() > 1e-3


@pytest.mark.parametrize("loader", LOADERS)
def test_predict_tokens_equals_serving_default(results, loader):
    tokens = _outputs(results[loader]["multi/tokens"])["probabilities"]
    text = _outputs(results[loader]["multi/text"])["probabilities"]
    np.testing.assert_allclose(tokens, text, atol=1e-6)


@pytest.mark.parametrize("loader", LOADERS)
def test_warmup_requests_cover_every_signature_and_run(results, setup, loader):
    for name, directory in setup["dirs"].items():
        requests = read_warmup_requests(directory)
        signatures = {r.model_spec.signature_name for r in requests}
        assert signatures == {"serving_default", "predict_tokens"}
        assert {r.model_spec.name for r in requests} == {name}
        for i in range(len(requests)):
            assert "outputs" in results[loader][f"{name}/warmup{i}"]


@pytest.mark.parametrize("loader", LOADERS)
def test_bad_requests_are_invalid_argument_and_the_process_survives(results, loader):
    got = results[loader]
    unknown = got["bad/unknown-task"]["error"]
    assert unknown["code"] == "INVALID_ARGUMENT"
    assert "Known tasks: sst, imdb, news" in unknown["message"]
    assert "weather" in unknown["message"]
    for label in ("float-ids", "long-ids", "bad-task-id"):
        assert got[f"bad/{label}"]["error"]["code"] == "INVALID_ARGUMENT", label
    assert "task_id must lie in [0, 3)" in got["bad/bad-task-id"]["error"]["message"]
    np.testing.assert_allclose(
        _outputs(got["multi/after-bad"])["probabilities"],
        _outputs(got["multi/text"])["probabilities"],
    )


def test_text_is_truncated_and_the_prompt_is_not(results, setup):
    # TEXTS[2] has 20 tokens; the reference keeps 10 = 16 - Pmax(4) - 2
    # specials and the whole prompt, and the export agrees with it.
    tokens = setup["tokens"]
    assert tokens["padding_mask"][2].sum() == TEXT_POSITIONS
    row = _outputs(results["c_api"]["multi/text"])["probabilities"][2]
    np.testing.assert_allclose(row, setup["expected"]["multi"][2], atol=1e-5)
    # An empty string serves as [CLS] [SEP] with its prompt.
    assert tokens["padding_mask"][1].sum() == 2


def test_signatures_are_batch_major_static_and_string_free_for_tpu(setup):
    directory = setup["dirs"]["multi"]
    signatures = loaders.signature_defs(directory)
    tokens = signatures["predict_tokens"]
    for key in ("token_ids", "padding_mask"):
        dims = [d.size for d in tokens.inputs[key].tensor_shape.dim]
        assert dims == [-1, TEXT_POSITIONS]
        assert tokens.inputs[key].dtype == tf.int32.as_datatype_enum
    assert tf.string.as_datatype_enum not in {
        info.dtype for info in tokens.inputs.values()
    }
    assert {"serving_default", "predict_tokens"} <= set(signatures)
    for name, signature in signatures.items():
        if name.startswith("__"):  # __saved_model_init_op
            continue
        for info in list(signature.inputs.values()) + list(signature.outputs.values()):
            assert info.tensor_shape.dim[0].size == -1  # batch-major
    aliased = [
        f for f, a in loaders.function_aliases(directory).items() if a == TPU_ALIAS
    ]
    assert aliased and all("predict_tokens" in f for f in aliased)


def test_no_exported_function_is_jit_compiled(setup):
    from tensorflow.core.protobuf import saved_model_pb2

    for directory in setup["dirs"].values():
        proto = saved_model_pb2.SavedModel()
        with open(os.path.join(directory, "saved_model.pb"), "rb") as f:
            proto.ParseFromString(f.read())
        functions = proto.meta_graphs[0].graph_def.library.function
        assert functions
        for function in functions:
            attr = function.attr.get("_XlaMustCompile")
            assert attr is None or not attr.b, function.signature.name


def test_saved_model_cli_lists_the_signatures(setup):
    cli = shutil.which("saved_model_cli")
    command = [cli] if cli else [sys.executable, "-m", "tensorflow.python.tools"]
    result = subprocess.run(
        [*command, "show", "--all", "--dir", setup["dirs"]["multi"]],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr
    for expected in (
        "signature_def['serving_default']",
        "signature_def['predict_tokens']",
    ):
        assert expected in result.stdout
    for name in ("inputs['text']", "inputs['task']", "inputs['task_id']"):
        assert name in result.stdout
    assert "outputs['label_names']" in result.stdout


def test_existing_version_is_never_overwritten(setup):
    directory = setup["dirs"]["k2"]
    before = os.path.getmtime(os.path.join(directory, "saved_model.pb"))
    with pytest.raises(FileExistsError, match="already exists.*--version 2"):
        export_model(
            setup["k2"],
            os.path.dirname(directory),
            1,
            tokenizer=_tokenizer(),
            sequence_length=SEQUENCE_LENGTH,
        )
    assert os.path.getmtime(os.path.join(directory, "saved_model.pb")) == before


def test_failed_export_leaves_no_version_and_no_temporary(setup, tmp_path, monkeypatch):
    from tf_softprompt.export import archive

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(archive.layout, "write_warmup_requests", fail)
    with pytest.raises(OSError, match="disk full"):
        export_model(
            setup["k2"],
            tmp_path / "k2",
            3,
            tokenizer=_tokenizer(),
            sequence_length=SEQUENCE_LENGTH,
        )
    assert os.listdir(tmp_path / "k2") == []


def test_bad_versions_are_refused(setup, tmp_path):
    for version in (0, -1, "latest", True):
        with pytest.raises(ValueError, match="positive integers"):
            export_model(
                setup["k2"],
                tmp_path,
                version,
                tokenizer=_tokenizer(),
                sequence_length=SEQUENCE_LENGTH,
            )


def test_prompts_trained_on_another_base_fail_on_the_fingerprint(setup, tmp_path):
    other = _K3Base(seed=2)
    _, layer = other.model(2)
    foreign = str(tmp_path / "foreign.prompt.npz")
    layer.save_prompt(foreign, task="foreign")
    model, _ = setup["base"].model(2)
    with pytest.raises(ValueError, match="fingerprint"):
        export_model(
            model,
            tmp_path / "mixed",
            1,
            tokenizer=_tokenizer(),
            sequence_length=SEQUENCE_LENGTH,
            prompts=[setup["artifacts"]["sst"], foreign],
        )
    assert not os.path.exists(tmp_path / "mixed" / "1")


def test_prompt_table_pads_shorter_prompts_and_masks_them(setup):
    vocabulary = setup["base"].embedding.embeddings.numpy()
    table = MultiTaskPromptTable.from_artifacts(setup["artifacts"], vocabulary)
    assert table.tasks == ("sst", "imdb", "news")
    assert table.lengths == (4, 2, 3)
    assert table.table.shape == (12, H)
    np.testing.assert_array_equal(table.table[4:6], setup["prompts"]["imdb"])
    assert not table.table[6:8].any()
    ids, mask = table.prompt_ids(tf.constant([1, 2]))
    assert ids.numpy().tolist() == [
        [V + 4 + j for j in range(4)],
        [V + 8 + j for j in range(4)],
    ]
    assert mask.numpy().tolist() == [
        [True, True, False, False],
        [True, True, True, False],
    ]


def test_duplicate_task_names_are_refused(setup):
    vocabulary = setup["base"].embedding.embeddings.numpy()
    path = setup["artifacts"]["sst"]
    with pytest.raises(ValueError, match="must be unique"):
        MultiTaskPromptTable.from_artifacts([path, path], vocabulary)
