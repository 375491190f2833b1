"""Checkpoint directories compute what their own implementation computes.

The references are the outputs of transformers 5.23 and PEFT 0.21.2
(torch on CPU), committed under `tests/fixtures` by
`tests/fixtures/make_reference.py`; torch is never imported here. The tiny
GPT-2, Llama and Gemma checkpoints are written by `hf_checkpoints` from a
seed, and their files' SHA-256 must equal the ones the fixtures were made
from. Each comparison also checks that keras-hub's own, uncorrected load
misses the reference by more than the tolerance, so the corrections are
what the test sees.
"""

import json
import os

import keras_hub
import numpy as np
import pytest
from hf_checkpoints import WRITERS, file_hashes

from tf_softprompt import checkpoints, cli, hub, packaged_model
from tf_softprompt.classifier import pool
from tf_softprompt.training import run_dir

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
TOLERANCE = 1e-5


def fixture(name):
    with open(os.path.join(FIXTURES, f"{name}.json"), encoding="utf-8") as f:
        metadata = json.load(f)
    with np.load(os.path.join(FIXTURES, f"{name}.npz")) as arrays:
        return metadata, {key: arrays[key] for key in arrays.files}


@pytest.fixture(scope="module")
def minilm():
    return packaged_model.model_dir()


@pytest.fixture(scope="module")
def corpus():
    with open(os.path.join(FIXTURES, "tokenizer_corpus.json"), encoding="utf-8") as f:
        return json.load(f)


def write_checkpoint(directory, recorded):
    """The checkpoint a fixture was made from, checked file by file."""
    WRITERS[recorded["kind"]](
        directory, seed=recorded["seed"], **recorded["config_overrides"]
    )
    assert file_hashes(directory) == recorded["files_sha256"]
    return os.fspath(directory)


# --- MiniLM (BERT) ---------------------------------------------------------------


def test_minilm_token_ids_equal_transformers(minilm, corpus):
    tokenizer = checkpoints.load_classifier_preprocessor(minilm, 128).tokenizer
    for text, want in zip(corpus["texts"], corpus["minilm"]["ids"]):
        ids = [int(i) for i in np.asarray(tokenizer(text))]
        got = [tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]
        assert got == want, repr(text)
    # keras-hub's own converted tokenizer differs on accented and control
    # characters (12 of the 33 texts when this was written).
    plain = keras_hub.models.BertTokenizer.from_preset(minilm)
    differ = [
        text
        for text, want in zip(corpus["texts"], corpus["minilm"]["ids"])
        if [int(i) for i in np.asarray(plain(text))] != want[1:-1]
    ]
    assert "amélie" in " ".join(differ).lower() and len(differ) >= 5


def test_minilm_outputs_equal_transformers(minilm):
    _, ref = fixture("minilm")
    inputs = {
        "token_ids": ref["input_ids"],
        "padding_mask": ref["attention_mask"],
        "segment_ids": ref["token_type_ids"],
    }
    valid = ref["attention_mask"].astype(bool)

    def errors(backbone):
        out = backbone(inputs)
        return (
            np.abs(out["sequence_output"].numpy() - ref["last_hidden_state"])[
                valid
            ].max(),
            np.abs(out["pooled_output"].numpy() - ref["pooler_output"]).max(),
            np.abs(
                pool(out, inputs["padding_mask"], "mean").numpy() - ref["mean_pooled"]
            ).max(),
            np.abs(
                pool(out, inputs["padding_mask"], "mean", normalize=True).numpy()
                - ref["mean_pooled_normalized"]
            ).max(),
        )

    assert max(errors(checkpoints.load_backbone(minilm))) < TOLERANCE
    # keras-hub's converted BERT (tanh-approximate GELU) is off by far more.
    assert errors(keras_hub.models.BertBackbone.from_preset(minilm))[0] > 1e-4


def test_minilm_classifier_reads_the_mean_and_keeps_its_corrections(minilm, tmp_path):
    classifier = checkpoints.load_classifier(minilm, num_classes=2)
    assert (classifier.pooling.mode, classifier.pooling.normalize) == ("mean", True)
    assert checkpoints.default_pooling(minilm) == ("mean", True)
    # The corrected backbone and the pooling survive a .keras round trip.
    path = os.fspath(tmp_path / "classifier.keras")
    classifier.save(path)
    restored = __import__("keras").saving.load_model(path)
    config = restored.backbone.get_config()
    assert config["hidden_activation"] == "gelu"
    assert restored.pooling.mode == "mean"


# --- GPT-2, Llama, Gemma -----------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt2", "llama", "llama_rope500k", "gemma"])
def test_causal_checkpoints_equal_transformers(name, corpus, tmp_path):
    metadata, ref = fixture(name)
    path = write_checkpoint(tmp_path / name, metadata["checkpoint"])
    lm, preprocessor = checkpoints.load_causal_lm(path, 64)
    valid = ref["attention_mask"].astype(bool)
    logits = lm({"token_ids": ref["input_ids"], "padding_mask": ref["attention_mask"]})
    assert np.abs(logits.numpy() - ref["logits"])[valid].max() < TOLERANCE

    kind = metadata["checkpoint"]["kind"]
    if name == kind:  # one tokenizer per family
        for text, want in zip(corpus["texts"], corpus[kind]["ids"]):
            packed = preprocessor.generate_preprocess([text], sequence_length=256)
            mask = packed["padding_mask"][0].numpy().astype(bool)
            got = packed["token_ids"][0].numpy()[mask].tolist()
            assert got == want, repr(text)

    lm.compile(sampler="greedy")
    lm.preprocessor = None  # generate from ids
    for case in metadata["generation"]["results"]:
        ids = np.asarray([case["prompt_ids"]], "int32")
        length = ids.shape[1] + len(case["new_ids"])
        padded = np.pad(ids, ((0, 0), (0, length - ids.shape[1])))
        out = lm.generate(
            {
                "token_ids": padded,
                "padding_mask": padded * 0 + (np.arange(length) < ids.shape[1]),
            },
            stop_token_ids=None,
        )
        assert out["token_ids"][0].tolist() == case["prompt_ids"] + case["new_ids"]


def test_llama_norm_epsilon_is_what_keras_hub_drops(tmp_path):
    metadata, ref = fixture("llama")
    path = write_checkpoint(tmp_path / "llama", metadata["checkpoint"])
    plain = keras_hub.models.CausalLM.from_preset(path, preprocessor=None)
    logits = plain(
        {"token_ids": ref["input_ids"], "padding_mask": ref["attention_mask"]}
    )
    valid = ref["attention_mask"].astype(bool)
    assert np.abs(logits.numpy() - ref["logits"])[valid].max() > 1e-4


# --- refused settings ---------------------------------------------------------------


def _edit_config(path, **changes):
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    config.update(changes)
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)


@pytest.mark.parametrize(
    "kind,changes,match",
    [
        ("gpt2", {"activation_function": "relu"}, "activation_function='relu'"),
        ("gpt2", {"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon=1e-06"),
        (
            "llama",
            {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
            "rope_scaling",
        ),
        ("llama", {"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ("gemma", {"rope_theta": 500000.0}, "rope_theta=500000.0"),
        ("gemma", {"rms_norm_eps": 1e-5}, "rms_norm_eps=1e-05"),
    ],
)
def test_settings_keras_hub_cannot_express_are_refused(kind, changes, match, tmp_path):
    path = os.fspath(tmp_path / kind)
    WRITERS[kind](path, seed=0)
    _edit_config(path, **changes)
    with pytest.raises(checkpoints.CheckpointError, match=match):
        checkpoints.load_backbone(path)


def test_a_missing_tokenizer_file_is_named(tmp_path):
    path = os.fspath(tmp_path / "gpt2")
    WRITERS["gpt2"](path, seed=0)
    os.remove(os.path.join(path, "merges.txt"))
    with pytest.raises(checkpoints.CheckpointError, match="no merges.txt"):
        checkpoints.load_causal_lm(path, 16)


# --- PEFT adapters, imported and served ---------------------------------------------


def test_peft_prompt_classifier_predicts_peft_probabilities(minilm, tmp_path, capsys):
    metadata, ref = fixture(os.path.join("peft", "minilm_prompt_seq_cls"))
    adapter = os.path.join(FIXTURES, "peft", "minilm_prompt_seq_cls")
    out = os.fspath(tmp_path / "run")
    code = cli.main(["import-peft", adapter, "--model", minilm, "--out", out,
                     "--sequence-length", "64"])  # fmt: skip
    assert code == 0
    capsys.readouterr()
    trained = run_dir.load_trained(out)
    inputs = {
        "token_ids": ref["input_ids"],
        "padding_mask": ref["attention_mask"],
        "segment_ids": ref["token_type_ids"],
    }
    logits = trained.model(inputs).numpy()
    assert np.abs(logits - ref["logits"]).max() < TOLERANCE

    # Through the CLI, from text: PEFT's probabilities, accented rows included.
    texts = metadata["texts"]
    assert cli.main(["predict", "--out", out, *texts]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    got = np.array(
        [[line["probabilities"][k] for k in trained.labels] for line in lines]
    )
    assert np.abs(got - ref["probabilities"]).max() < 1e-4
    assert any("é" in text for text in texts[-4:])


@pytest.mark.parametrize(
    "name",
    [
        "gpt2_prompt_causal_lm",
        "gpt2_prefix_causal_lm",
        "llama_prompt_causal_lm",
        "llama_prefix_causal_lm",
    ],
)
def test_peft_causal_adapters_give_peft_logits_and_generations(name, tmp_path):
    metadata, ref = fixture(os.path.join("peft", name))
    base = write_checkpoint(tmp_path / "base", metadata["base"])
    out = os.fspath(tmp_path / "run")
    adapter = os.path.join(FIXTURES, "peft", name)
    assert cli.main(["import-peft", adapter, "--model", base, "--out", out]) == 0
    trained = run_dir.load_trained_causal_lm(out)
    inputs = {"token_ids": ref["input_ids"], "padding_mask": ref["attention_mask"]}
    logits = trained.model(inputs).numpy()
    want = ref["logits"][:, -ref["input_ids"].shape[1] :]  # PEFT's text rows
    valid = ref["attention_mask"].astype(bool)
    assert np.abs(logits - want)[valid].max() < TOLERANCE
    assert hub.get_prompt_tuning(trained.model).method.name in (
        "embedding",
        "past_prefix",
    )

    trained.model.compile(sampler="greedy")
    trained.model.preprocessor = None  # generate from ids
    for case in metadata["generation"]["results"]:
        returned = case["returned_ids"]
        length = len(returned)
        ids = np.zeros((1, length), "int32")
        ids[0, : len(case["prompt_ids"])] = case["prompt_ids"]
        mask = np.arange(length)[None] < len(case["prompt_ids"])
        result = trained.model.generate(
            {"token_ids": ids, "padding_mask": mask}, stop_token_ids=None
        )
        got = result["token_ids"][0].tolist()
        assert got[: len(returned)] == returned
