"""`tf-softprompt import-peft`: PEFT adapters in, PEFT's outputs out.

Adapter directories are written here with numpy and safetensors exactly as
PEFT 0.21.2's `save_pretrained` lays them out (every config key of the
dataclass, sorted, `"inference_mode": true`; tensors `prompt_embeddings`
and, for SEQ_CLS, `base_model.classifier.{weight,bias}` in torch's
`[out, in]` layout). No torch is involved.

The reference is PEFT's forward computed by hand here, on a *separate,
unpatched* copy of each base (keras-hub layers called one by one, never
through `tf_softprompt.hub`): `inputs_embeds = [prompt_embeddings;
token embeddings]`, positions `0..P+T-1`, token type 0 for the prompt rows,
an all-ones prompt mask, BERT's pooler on row 0 and the classifier as
`pooled @ weight.T + bias`; GPT-2's logits over all P+T rows and greedy
decoding by recomputing that forward (what `generate` does with a cache).
Imported runs must equal it (<=1e-5), loaded in Python and served from the
exported SavedModel through the TF1 session loader.
"""

import json
import os
import struct

import keras
import keras_hub
import numpy as np
import pytest
import safetensors.numpy
import tensorflow as tf
from tiny_models import save_tiny_bert_preset

from tf_softprompt import cli, peft
from tf_softprompt.serving import loaders
from tf_softprompt.training import run_dir

BERT_TEXTS = ["what a lovely warm film", "cold soup and rude staff", "fine", ""]
BERT_SEQUENCE, BERT_P, BERT_CLASSES = 12, 4, 3
CHARS = "abcdefghijklmnopqrstuvwxyz"
# As in GPT-2: id 0 is "!" (keras-hub's pad id) and <|endoftext|> the last id.
# With end id == pad id, keras-hub's sampler counts the padding as stop tokens
# already generated and, when every row is padded, generates nothing.
GPT2_TOKENS = ["!", *CHARS, *("Ġ" + c for c in CHARS), "Ġ", "Ġt", "Ġth", "Ġthe"]
GPT2_TOKENS.append("<|endoftext|>")
GPT2_MERGES = ["Ġ t", "Ġt h", "Ġth e"]
GPT2_TEXTS = ["the", "a b", "the the"]  # at most 4 tokens: room to generate
GPT2_SEQUENCE, GPT2_P = 12, 3


# --- adapters as PEFT writes them ---------------------------------------------


def peft_config(peft_type, task_type, **fields):
    """The `adapter_config.json` dict PEFT 0.21.2 saves (all dataclass keys)."""
    config = {
        "auto_mapping": None,
        "base_model_name_or_path": "tiny-base",
        "inference_mode": True,
        "modules_to_save": ["classifier", "score"] if task_type == "SEQ_CLS" else None,
        "num_attention_heads": 2,
        "num_layers": 2,
        "num_transformer_submodules": 1,
        "num_virtual_tokens": None,
        "peft_type": peft_type,
        "peft_version": "0.21.2",
        "revision": None,
        "task_type": task_type,
        "token_dim": 16,
    }
    if peft_type == "PROMPT_TUNING":
        config.update(
            prompt_tuning_init="RANDOM",
            prompt_tuning_init_text=None,
            tokenizer_kwargs=None,
            tokenizer_name_or_path=None,
        )
    elif peft_type == "P_TUNING":
        config.update(
            encoder_dropout=0.0,
            encoder_hidden_size=16,
            encoder_num_layers=2,
            encoder_reparameterization_type="MLP",
        )
    elif peft_type == "PREFIX_TUNING":
        config.update(
            encoder_hidden_size=16, init_weights=None, prefix_projection=False
        )
    config.update(fields)
    return config


def write_adapter(directory, config, tensors):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, peft.CONFIG_FILE), "w") as f:
        f.write(json.dumps(config, indent=2, sort_keys=True))
    safetensors.numpy.save_file(
        tensors, os.path.join(directory, peft.WEIGHTS_FILE), metadata={"format": "pt"}
    )
    return str(directory)


def bert_adapter_tensors(seed=1):
    rng = np.random.default_rng(seed)
    return {
        "prompt_embeddings": rng.normal(0, 0.5, (BERT_P, 16)).astype(np.float32),
        "base_model.classifier.weight": rng.normal(0, 1, (BERT_CLASSES, 16)).astype(
            np.float32
        ),
        "base_model.classifier.bias": rng.normal(0, 1, BERT_CLASSES).astype(np.float32),
    }


def bert_config(**fields):
    return peft_config("PROMPT_TUNING", "SEQ_CLS", num_virtual_tokens=BERT_P, **fields)


# --- PEFT's forward, by hand on an unpatched base ------------------------------


def _numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def peft_bert_logits(backbone, prompt, weight, bias, token_ids, padding_mask):
    """`PeftModelForSequenceClassification.forward` on BERT (prompt tuning)."""
    batch, length = token_ids.shape
    num_tokens = prompt.shape[0]
    inputs_embeds = np.concatenate(
        [
            np.broadcast_to(prompt, (batch, *prompt.shape)),
            _numpy(backbone.token_embedding(token_ids)),
        ],
        axis=1,
    )
    positions = _numpy(backbone.position_embedding.position_embeddings)
    token_type_ids = np.zeros((batch, num_tokens + length), np.int32)
    segments = _numpy(backbone.segment_embedding.embeddings)[token_type_ids]
    x = backbone.embeddings_layer_norm(
        inputs_embeds + positions[None, : num_tokens + length] + segments
    )
    mask = np.concatenate([np.ones((batch, num_tokens)), padding_mask], 1) > 0
    for layer in backbone.transformer_layers:
        x = layer(x, padding_mask=mask)
    pooled = _numpy(backbone.pooled_dense(x[:, 0]))  # the first virtual token
    return pooled @ weight.T + bias


def peft_gpt2_logits(backbone, prompt, token_ids):
    """`PeftModelForCausalLM.forward` on GPT-2: logits of the T text rows."""
    batch, length = token_ids.shape
    num_tokens = prompt.shape[0]
    x = np.concatenate(
        [
            np.broadcast_to(prompt, (batch, *prompt.shape)),
            _numpy(backbone.token_embedding(token_ids)),
        ],
        axis=1,
    )
    positions = _numpy(backbone.position_embedding.position_embeddings)
    x = x + positions[None, : num_tokens + length]
    mask = np.ones((batch, num_tokens + length), bool)
    for layer in backbone.transformer_layers:
        x = layer(x, decoder_padding_mask=mask)
    x = _numpy(backbone.layer_norm(x))
    logits = x @ _numpy(backbone.token_embedding.embeddings).T
    return logits[:, num_tokens:]


def peft_greedy(backbone, prompt, ids, total, end_id):
    """PEFT `generate` (greedy): the text grows until `total` ids or the end."""
    ids = list(ids)
    while len(ids) < total:
        logits = peft_gpt2_logits(backbone, prompt, np.array([ids], np.int32))
        ids.append(int(np.argmax(logits[0, -1])))
        if ids[-1] == end_id:
            break
    return ids


def bert_features(tokenizer, texts, length):
    """`[CLS] text [SEP]`, right-padded (what the HF tokenizer gives)."""
    cls_id = tokenizer.token_to_id("[CLS]")
    sep_id = tokenizer.token_to_id("[SEP]")
    token_ids = np.zeros((len(texts), length), np.int32)
    padding_mask = np.zeros((len(texts), length), np.int32)
    for i, text in enumerate(texts):
        ids = [cls_id, *(int(t) for t in _numpy(tokenizer(text))), sep_id]
        token_ids[i, : len(ids)] = ids
        padding_mask[i, : len(ids)] = 1
    return token_ids, padding_mask


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _run(argv):
    assert cli.main(argv) == 0, argv


def save_tiny_gpt2_preset(directory):
    tokenizer = keras_hub.models.GPT2Tokenizer(
        vocabulary={t: i for i, t in enumerate(GPT2_TOKENS)}, merges=GPT2_MERGES
    )
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer, sequence_length=GPT2_SEQUENCE
    )
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(GPT2_TOKENS),
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=32,
        dropout=0.0,
    )
    backbone.save_to_preset(str(directory))
    preprocessor.save_to_preset(str(directory))
    return str(directory)


# --- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A BERT SEQ_CLS adapter: imported and exported by the CLI, served."""
    root = tmp_path_factory.mktemp("peft_bert")
    preset = save_tiny_bert_preset(root / "base", BERT_TEXTS, sequence_length=32)
    tensors = bert_adapter_tensors()
    adapter = write_adapter(root / "sst_adapter", bert_config(), tensors)
    run = str(root / "run")
    argv = ["import-peft", adapter, "--model", preset, "--out", run]
    argv += ["--sequence-length", str(BERT_SEQUENCE)]
    argv += ["--label", "neg", "--label", "mid", "--label", "pos"]
    _run(argv)
    models = root / "models" / "bert"
    _run(["export", run, "--out", str(models), "--version", "1"])
    text = np.array([t.encode() for t in BERT_TEXTS], dtype=object)
    served = loaders.run_session_loader(
        [
            {
                "export_dir": str(models / "1"),
                "signature": "serving_default",
                "inputs": {"text": text},
            }
        ]
    )
    reference = keras_hub.models.Backbone.from_preset(preset)
    tokenizer = keras_hub.models.BertTokenizer.from_preset(preset)
    return {
        "root": root,
        "preset": preset,
        "adapter": adapter,
        "tensors": tensors,
        "run": run,
        "served": served[0],
        "reference": reference,
        "tokenizer": tokenizer,
    }


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """Two GPT-2 CAUSAL_LM adapters (P=3 and P=2): imported and exported by
    the CLI, alone and together, and served."""
    root = tmp_path_factory.mktemp("peft_gpt2")
    preset = save_tiny_gpt2_preset(root / "base")
    rng = np.random.default_rng(2)
    prompts, runs = {}, {}
    for task, num_tokens in (("writer", GPT2_P), ("poet", 2)):
        prompts[task] = rng.normal(0, 1, (num_tokens, 16)).astype(np.float32)
        config = peft_config(
            "PROMPT_TUNING", "CAUSAL_LM", num_virtual_tokens=num_tokens
        )
        adapter = write_adapter(
            root / task, config, {"prompt_embeddings": prompts[task]}
        )
        runs[task] = str(root / f"run_{task}")
        argv = ["import-peft", adapter, "--model", preset, "--out", runs[task]]
        _run([*argv, "--sequence-length", str(GPT2_SEQUENCE)])
    single, multi = root / "models" / "writer", root / "models" / "both"
    _run(["export", runs["writer"], "--out", str(single), "--version", "1"])
    _run(
        ["export", runs["writer"], runs["poet"], "--out", str(multi)]
        + ["--version", "1"]
    )
    text = np.array([t.encode() for t in GPT2_TEXTS], dtype=object)
    mixed = np.array([b"poet", b"writer", b"poet"], dtype=object)
    served = loaders.run_session_loader(
        [
            {
                "export_dir": str(single / "1"),
                "signature": "serving_default",
                "inputs": {"text": text},
            },
            {
                "export_dir": str(multi / "1"),
                "signature": "serving_default",
                "inputs": {"text": text, "task": mixed},
            },
        ]
    )
    return {
        "preset": preset,
        "prompt": prompts["writer"],
        "prompts": prompts,
        "run": runs["writer"],
        "runs": runs,
        "served": served[0],
        "served_mixed": (mixed, served[1]),
        "reference": keras_hub.models.Backbone.from_preset(preset),
        "tokenizer": keras_hub.models.GPT2Tokenizer.from_preset(preset),
    }


# --- BERT SEQ_CLS -----------------------------------------------------------


def _bert_reference(bert, texts, tensors=None):
    tensors = tensors or bert["tensors"]
    token_ids, padding_mask = bert_features(bert["tokenizer"], texts, BERT_SEQUENCE)
    return peft_bert_logits(
        bert["reference"],
        tensors["prompt_embeddings"],
        tensors["base_model.classifier.weight"],
        tensors["base_model.classifier.bias"],
        token_ids,
        padding_mask,
    )


def test_imported_bert_classifier_equals_peft_forward(bert):
    trained = run_dir.load_trained(bert["run"])
    token_ids, padding_mask = bert_features(
        bert["tokenizer"], BERT_TEXTS, BERT_SEQUENCE
    )
    logits = _numpy(
        trained.model(
            {
                "token_ids": token_ids,
                "padding_mask": padding_mask,
                "segment_ids": np.zeros_like(token_ids),
            }
        )
    )
    expected = _bert_reference(bert, BERT_TEXTS)
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    # The prompt matters: the base's own layout ([CLS] first) differs.
    moved = peft_bert_logits(
        bert["reference"],
        np.zeros((0, 16), np.float32),
        bert["tensors"]["base_model.classifier.weight"],
        bert["tensors"]["base_model.classifier.bias"],
        token_ids,
        padding_mask,
    )
    assert np.abs(moved - expected).max() > 1e-2


def test_served_bert_probabilities_equal_peft_forward(bert):
    result = bert["served"]
    assert "outputs" in result, result
    expected = _softmax(_bert_reference(bert, BERT_TEXTS))
    np.testing.assert_allclose(result["outputs"]["probabilities"], expected, atol=1e-5)
    names = [n.decode() for n in result["outputs"]["label_names"]]
    assert names == [["neg", "mid", "pos"][i] for i in expected.argmax(-1)]


def test_bert_run_records_peft_placement_and_provenance(bert):
    run = run_dir.read_run(bert["run"])
    assert (run["method"], run["offset"], run["prompt_length"]) == ("embedding", 0, 4)
    assert run["placement"]["prompt_positions"] == [0, 3]
    assert run["placement"]["text_positions_start"] == 4
    assert run["placement"]["prompt_segment_id"] == 0
    source = run["source"]
    assert (source["kind"], source["peft_type"], source["task_type"]) == (
        "peft",
        "PROMPT_TUNING",
        "SEQ_CLS",
    )
    assert source["base_model_name_or_path"] == "tiny-base"
    assert source["tensors"]["base_model.classifier.weight"]["shape"] == [3, 16]
    assert run["labels"] == ["neg", "mid", "pos"]
    with np.load(os.path.join(bert["run"], "prompt.npz")) as f:
        metadata = json.loads(str(f["metadata"]))
        np.testing.assert_array_equal(f["prompt"], bert["tensors"]["prompt_embeddings"])
    assert metadata["offset"] == 0 and metadata["source"] == "peft"
    assert metadata["task"] == "sst_adapter"


def test_p_tuning_adapter_imports_as_its_saved_prompt(bert, tmp_path):
    tensors = bert_adapter_tensors(seed=5)
    config = peft_config("P_TUNING", "SEQ_CLS", num_virtual_tokens=BERT_P)
    adapter = write_adapter(tmp_path / "ptuning", config, tensors)
    peft.import_peft(
        adapter, bert["preset"], tmp_path / "run", sequence_length=BERT_SEQUENCE
    )
    trained = run_dir.load_trained(tmp_path / "run")
    assert trained.labels == ["LABEL_0", "LABEL_1", "LABEL_2"]
    np.testing.assert_allclose(
        trained.predict(BERT_TEXTS),
        _softmax(_bert_reference(bert, BERT_TEXTS, tensors)),
        atol=1e-5,
    )


def _bf16_safetensors(path, name, values):
    """A one-tensor BF16 safetensors file, written byte by byte."""
    bits = (values.astype(np.float32).view(np.uint32) >> 16).astype("<u2")
    header = {
        "__metadata__": {"format": "pt"},
        name: {
            "dtype": "BF16",
            "shape": list(values.shape),
            "data_offsets": [0, bits.nbytes],
        },
    }
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded + bits.tobytes())


def test_bf16_prompt_reads_exactly(tmp_path):
    rng = np.random.default_rng(3)
    values = rng.normal(0, 1, (4, 16)).astype(np.float32)
    # Values a bfloat16 holds exactly: the top 16 bits of a float32.
    values = (values.view(np.uint32) & 0xFFFF0000).view(np.float32)
    config = peft_config("PROMPT_TUNING", "CAUSAL_LM", num_virtual_tokens=4)
    directory = tmp_path / "bf16"
    write_adapter(directory, config, {"x": np.zeros(1, np.float32)})
    _bf16_safetensors(directory / peft.WEIGHTS_FILE, "prompt_embeddings", values)
    adapter = peft.read_adapter(directory)
    assert adapter.dtypes == {"prompt_embeddings": "BF16"}
    np.testing.assert_array_equal(adapter.tensors["prompt_embeddings"], values)


# --- GPT-2 CAUSAL_LM --------------------------------------------------------


def test_imported_gpt2_logits_equal_peft_forward(gpt2):
    trained = run_dir.load_trained_causal_lm(gpt2["run"])
    rng = np.random.default_rng(4)
    token_ids = rng.integers(1, len(GPT2_TOKENS), (3, 7)).astype(np.int32)
    lengths = [7, 4, 1]
    padding_mask = (np.arange(7)[None] < np.array(lengths)[:, None]).astype(np.int32)
    logits = _numpy(
        trained.model(
            {"token_ids": token_ids * padding_mask, "padding_mask": padding_mask}
        )
    )
    for i, n in enumerate(lengths):
        expected = peft_gpt2_logits(
            gpt2["reference"], gpt2["prompt"], token_ids[i : i + 1, :n]
        )
        np.testing.assert_allclose(logits[i : i + 1, :n], expected, atol=1e-5)


def _peft_texts(gpt2, prompt, texts):
    """What PEFT generates (greedy) for each text, as the exporter presents it."""
    tokenizer = gpt2["tokenizer"]
    end_id = tokenizer.end_token_id
    expected = []
    for text in texts:
        ids = [int(t) for t in _numpy(tokenizer(text))]  # GPT-2 adds no BOS
        ids = peft_greedy(gpt2["reference"], prompt, ids, GPT2_SEQUENCE, end_id)
        # HF's decode(skip_special_tokens=True) drops the end token only;
        # "!" (id 0, keras-hub's pad id) is ordinary text.
        ids = [t for t in ids if t != end_id]
        text = _numpy(tokenizer.detokenize(np.array(ids, np.int32))).item()
        expected.append(text.decode() if isinstance(text, bytes) else text)
    return expected


def _served_texts(result):
    assert "outputs" in result, result
    return [t.decode() for t in result["outputs"]["text"]]


def test_served_gpt2_text_equals_peft_greedy_generation(gpt2):
    served = _served_texts(gpt2["served"])
    assert served == _peft_texts(gpt2, gpt2["prompt"], GPT2_TEXTS)
    assert any(len(s) > len(t) for s, t in zip(served, GPT2_TEXTS))


def test_two_gpt2_adapters_serve_from_one_export(gpt2):
    tasks, result = gpt2["served_mixed"]
    served = _served_texts(result)
    for i, task in enumerate(tasks):
        expected = _peft_texts(
            gpt2, gpt2["prompts"][task.decode()], GPT2_TEXTS[i : i + 1]
        )
        assert served[i] == expected[0], (i, task)
    # The prompts differ enough to change what is generated.
    assert _peft_texts(gpt2, gpt2["prompts"]["poet"], GPT2_TEXTS) != _peft_texts(
        gpt2, gpt2["prompts"]["writer"], GPT2_TEXTS
    )


def test_causal_lm_runs_refuse_ensembles_and_classifier_runs(gpt2, bert, tmp_path):
    from tf_softprompt.export import cli as export_cli

    runs = list(gpt2["runs"].values())
    with pytest.raises(ValueError, match="causal-LM runs export as plain tasks"):
        export_cli.export_runs([], tmp_path / "m", 1, ensembles={"e": runs})
    with pytest.raises(ValueError, match="causal-LM runs export in float32"):
        export_cli.export_runs(runs, tmp_path / "m", 1, precision="mixed_bfloat16")
    with pytest.raises(ValueError, match="is a classifier run and .* a causal-LM run"):
        export_cli.export_runs([bert["run"], runs[0]], tmp_path / "m", 1)


def test_gpt2_run_is_a_causal_lm_run(gpt2):
    run = run_dir.read_run(gpt2["run"])
    assert run["kind"] == run_dir.CAUSAL_LM_KIND
    assert run["preprocessor"] == {"add_start_token": False}
    assert (run["offset"], run["prompt_length"]) == (0, GPT2_P)
    with pytest.raises(ValueError, match="causal-LM run"):
        run_dir.load_trained(gpt2["run"])


def peft_llama_logits(backbone, prompt, token_ids):
    """`PeftModelForCausalLM.forward` on Llama: no embedding scale, RoPE over
    positions 0..P+T-1 (each decoder layer numbers the P+T rows from 0)."""
    batch = token_ids.shape[0]
    x = np.concatenate(
        [
            np.broadcast_to(prompt, (batch, *prompt.shape)),
            _numpy(backbone.token_embedding(token_ids)),
        ],
        axis=1,
    )
    mask = np.ones(x.shape[:2], bool)
    for layer in backbone.transformer_layers:
        x = layer(x, decoder_padding_mask=mask)
    logits = _numpy(backbone.token_embedding(backbone.layer_norm(x), reverse=True))
    return logits[:, prompt.shape[0] :]


def _causal_adapter(tmp_path, num_tokens, **fields):
    rng = np.random.default_rng(7)
    prompt = rng.normal(0, 1, (num_tokens, 16)).astype(np.float32)
    config = peft_config(
        "PROMPT_TUNING", "CAUSAL_LM", num_virtual_tokens=num_tokens, **fields
    )
    directory = write_adapter(tmp_path / "lm", config, {"prompt_embeddings": prompt})
    adapter = peft.read_adapter(directory)
    peft.check_config(adapter)
    return adapter, prompt


def test_llama_adapter_equals_peft_forward(tmp_path):
    from tiny_models import V, build_backbone, build_task

    adapter, prompt = _causal_adapter(tmp_path, 3, num_attention_heads=4)
    lm = build_task("llama", seed=0)
    handle = peft.apply_adapter(adapter, lm)
    assert (handle.method.name, handle.offset) == ("embedding", 0)
    reference = build_backbone("llama", seed=0)  # the same weights, unpatched
    token_ids = np.random.default_rng(8).integers(1, V, (2, 6)).astype(np.int32)
    lengths = [6, 3]
    padding_mask = (np.arange(6)[None] < np.array(lengths)[:, None]).astype(np.int32)
    logits = _numpy(lm({"token_ids": token_ids, "padding_mask": padding_mask}))
    for i, n in enumerate(lengths):
        expected = peft_llama_logits(reference, prompt, token_ids[i : i + 1, :n])
        np.testing.assert_allclose(logits[i : i + 1, :n], expected, atol=1e-5)


def test_gemma_is_refused(tmp_path):
    from tiny_models import build_task

    adapter, _ = _causal_adapter(tmp_path, 3)
    with pytest.raises(peft.PeftImportError, match="Gemma is refused.*sqrt"):
        peft.apply_adapter(adapter, build_task("gemma", seed=0))


# --- PREFIX_TUNING layout ---------------------------------------------------


def peft_prefix_cache(prompt_embeddings, num_layers, num_heads, head_dim):
    """PEFT `get_prompt` for PREFIX_TUNING, literally (batch 1), in numpy:
    view, permute([2, 0, 3, 1, 4]), split(2); DynamicCache keys = [0]."""
    num_tokens = prompt_embeddings.shape[0]
    kv = prompt_embeddings[None].reshape(
        1, num_tokens, num_layers * 2, num_heads, head_dim
    )
    kv = kv.transpose(2, 0, 3, 1, 4)  # [L*2, B, heads, P, head_dim]
    layers = [kv[i : i + 2] for i in range(0, num_layers * 2, 2)]
    return [(chunk[0][0], chunk[1][0]) for chunk in layers]  # [heads, P, hd]


def test_prefix_values_follow_peft_cache_layout(tmp_path):
    rng = np.random.default_rng(6)
    num_layers, heads, head_dim, num_tokens = 3, 2, 4, 5
    prompt = rng.normal(size=(num_tokens, num_layers * 2 * heads * head_dim))
    prompt = prompt.astype(np.float32)
    config = peft_config(
        "PREFIX_TUNING",
        "CAUSAL_LM",
        num_virtual_tokens=num_tokens,
        num_layers=num_layers,
        token_dim=heads * head_dim,
    )
    adapter = peft.read_adapter(
        write_adapter(tmp_path / "prefix", config, {"prompt_embeddings": prompt})
    )
    values = peft.prefix_values(adapter, num_layers, heads, head_dim)
    assert values.shape == (num_layers, 2, num_tokens, heads, head_dim)
    for layer, (key, value) in enumerate(
        peft_prefix_cache(prompt, num_layers, heads, head_dim)
    ):
        np.testing.assert_array_equal(values[layer, 0], key.transpose(1, 0, 2))
        np.testing.assert_array_equal(values[layer, 1], value.transpose(1, 0, 2))
    with pytest.raises(peft.PeftImportError, match=r"shape \[5, 48\].*\[5, 32\]"):
        peft.prefix_values(adapter, 2, heads, head_dim)


# --- refusals -------------------------------------------------------------


def _mutated(config=None, tensors=None, drop=(), add=None):
    config = {**bert_config(), **(config or {})}
    tensors = {**bert_adapter_tensors(), **(tensors or {})}
    for name in drop:
        tensors.pop(name)
    tensors.update(add or {})
    return config, tensors


REFUSALS = {
    "lora": (
        _mutated(
            {"peft_type": "LORA"},
            add={"base_model.model.q.lora_A.weight": np.zeros((4, 16), np.float32)},
        ),
        r"peft_type='LORA' is not supported.*merge_and_unload",
    ),
    "multitask": (
        _mutated({"peft_type": "MULTITASK_PROMPT_TUNING"}),
        "peft_type='MULTITASK_PROMPT_TUNING' is not supported",
    ),
    "prefix": (
        _mutated({"peft_type": "PREFIX_TUNING"}),
        r"peft_type='PREFIX_TUNING' with task_type='SEQ_CLS' is not supported.*"
        r"does not support past key values",
    ),
    "seq2seq": (
        _mutated({"task_type": "SEQ_2_SEQ_LM"}),
        "task_type='SEQ_2_SEQ_LM' is not supported",
    ),
    "no_task": (_mutated({"task_type": None}), "task_type=None is not supported"),
    "encoder_decoder": (
        _mutated({"num_transformer_submodules": 2}),
        r"num_transformer_submodules=2.*encoder-decoder",
    ),
    "no_tokens": (
        _mutated({"num_virtual_tokens": 0}),
        "num_virtual_tokens=0; it must be a positive integer",
    ),
    "token_dim": (
        _mutated({"token_dim": 32}),
        r"token_dim=32, but the base `BertBackbone` has token_dim=16",
    ),
    "num_layers": (
        _mutated({"num_layers": 12}),
        r"num_layers=12, but the base `BertBackbone` has num_layers=2",
    ),
    "heads": (
        _mutated({"num_attention_heads": 4}),
        r"num_attention_heads=4, but the base `BertBackbone` has "
        r"num_attention_heads=2",
    ),
    "prompt_shape": (
        _mutated({"num_virtual_tokens": 5}),
        r"'prompt_embeddings' has shape \[4, 16\].*need \[5, 16\]",
    ),
    "missing_bias": (
        _mutated(drop=["base_model.classifier.bias"]),
        r"missing the tensor\(s\) \['base_model.classifier.bias'\]",
    ),
    "missing_prompt": (
        _mutated(drop=["prompt_embeddings"]),
        r"missing the tensor\(s\) \['prompt_embeddings'\]",
    ),
    "score_head": (
        _mutated(
            drop=["base_model.classifier.weight", "base_model.classifier.bias"],
            add={"base_model.score.weight": np.zeros((3, 16), np.float32)},
        ),
        r"missing .*base_model.classifier.bias.*`score`",
    ),
    "p_tuning_encoder": (
        _mutated(
            {"peft_type": "P_TUNING"},
            add={
                "prompt_encoder.default.mlp_head.0.weight": np.zeros(
                    (16, 16), np.float32
                )
            },
        ),
        r"tensor\(s\) \['prompt_encoder.default.mlp_head.0.weight'\] beyond.*"
        r"P-tuning's prompt encoder",
    ),
    "extra_module": (
        _mutated(add={"base_model.bert.pooler.dense.weight": np.zeros((16, 16))}),
        r"\['base_model.bert.pooler.dense.weight'\] beyond",
    ),
    "nan": (
        _mutated(
            tensors={"prompt_embeddings": np.full((BERT_P, 16), np.nan, np.float32)}
        ),
        r"tensor 'prompt_embeddings' has 64 NaN or Inf values",
    ),
    "head_shape": (
        _mutated(
            tensors={"base_model.classifier.weight": np.zeros((3, 8), np.float32)}
        ),
        r"'base_model.classifier.weight' has shape \[3, 8\]",
    ),
    "int_tensor": (
        _mutated(tensors={"base_model.classifier.bias": np.zeros(3, np.int64)}),
        r"'base_model.classifier.bias' has dtype I64",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refuses_adapters_it_cannot_reproduce(bert, tmp_path, case):
    (config, tensors), message = REFUSALS[case]
    adapter = write_adapter(tmp_path / case, config, tensors)
    with pytest.raises(peft.PeftImportError, match=message):
        peft.import_peft(adapter, bert["preset"], tmp_path / "out")
    assert not os.path.exists(tmp_path / "out")


def test_refusals_through_the_cli_and_other_inputs(bert, tmp_path, capsys):
    (config, tensors), _ = REFUSALS["encoder_decoder"]
    adapter = write_adapter(tmp_path / "ed", config, tensors)
    argv = ["import-peft", adapter, "--model", bert["preset"]]
    assert cli.main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert "num_transformer_submodules=2" in capsys.readouterr().err
    # An existing run directory is never overwritten.
    argv = ["import-peft", bert["adapter"], "--model", bert["preset"]]
    assert cli.main([*argv, "--out", bert["run"]]) == 2
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(ValueError, match="head has 3 labels.*received 2"):
        peft.import_peft(
            bert["adapter"], bert["preset"], tmp_path / "l", labels=["a", "b"]
        )
    with pytest.raises(ValueError, match="max_sequence_length=64"):
        peft.import_peft(
            bert["adapter"], bert["preset"], tmp_path / "s", sequence_length=61
        )
    torch_only = tmp_path / "torch"
    torch_only.mkdir()
    (torch_only / peft.CONFIG_FILE).write_text(json.dumps(bert_config()))
    (torch_only / peft.TORCH_WEIGHTS_FILE).write_bytes(b"\x80\x02")
    with pytest.raises(peft.PeftImportError, match="safe_serialization=True"):
        peft.read_adapter(torch_only)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        peft.read_adapter(tmp_path / "nowhere")


# --- PREFIX_TUNING (CAUSAL_LM) ------------------------------------------------


def peft_prefix_logits(task, prompt_embeddings, token_ids, heads, head_dim):
    """`PeftModelForCausalLM.forward` with a prefix: PEFT's `get_prompt`
    cache (`peft_prefix_cache`) as past keys/values, the text after it at
    positions P..P+T-1, run by keras-hub's own cached forward."""
    num_tokens = prompt_embeddings.shape[0]
    layers = peft_prefix_cache(
        prompt_embeddings, len(task.backbone.transformer_layers), heads, head_dim
    )
    batch, length = token_ids.shape
    cache = np.zeros(
        (batch, len(layers), 2, num_tokens + length, heads, head_dim), np.float32
    )
    for i, (key, value) in enumerate(layers):
        cache[:, i, 0, :num_tokens] = key.transpose(1, 0, 2)
        cache[:, i, 1, :num_tokens] = value.transpose(1, 0, 2)
    logits, _, _ = task.call_with_cache(
        tf.constant(token_ids), tf.constant(cache), num_tokens
    )
    return _numpy(logits)


def _prefix_adapter(directory, num_layers, heads, head_dim, seed, **fields):
    rng = np.random.default_rng(seed)
    prompt = rng.normal(0, 1, (GPT2_P, num_layers * 2 * heads * head_dim))
    prompt = prompt.astype(np.float32)
    config = peft_config(
        "PREFIX_TUNING",
        "CAUSAL_LM",
        num_virtual_tokens=GPT2_P,
        num_layers=num_layers,
        num_attention_heads=heads,
        token_dim=heads * head_dim,
        **fields,
    )
    return write_adapter(directory, config, {"prompt_embeddings": prompt}), prompt


@pytest.fixture(scope="module")
def gpt2_prefix(gpt2, tmp_path_factory):
    """A GPT-2 PREFIX_TUNING adapter imported and exported by the CLI, and
    served through the session loader."""
    root = tmp_path_factory.mktemp("peft_prefix")
    adapter, prompt = _prefix_adapter(root / "prefix", 2, 2, 8, seed=9)
    run = str(root / "run")
    argv = ["import-peft", adapter, "--model", gpt2["preset"], "--out", run]
    _run([*argv, "--sequence-length", str(GPT2_SEQUENCE)])
    models = root / "models"
    _run(["export", run, "--out", str(models), "--version", "1"])
    text = np.array([t.encode() for t in GPT2_TEXTS], dtype=object)
    (served,) = loaders.run_session_loader(
        [
            {
                "export_dir": str(models / "1"),
                "signature": "serving_default",
                "inputs": {"text": text},
            }
        ]
    )
    reference = keras_hub.models.GPT2CausalLM(
        backbone=gpt2["reference"], preprocessor=None
    )
    return {"run": run, "prompt": prompt, "served": served, "reference": reference}


def test_imported_gpt2_prefix_equals_peft_forward(gpt2_prefix):
    trained = run_dir.load_trained_causal_lm(gpt2_prefix["run"])
    assert trained.handle.method.name == "past_prefix"
    token_ids = np.random.default_rng(10).integers(1, 40, (2, 6)).astype(np.int32)
    logits = _numpy(
        trained.model({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)})
    )
    expected = peft_prefix_logits(
        gpt2_prefix["reference"], gpt2_prefix["prompt"], token_ids, 2, 8
    )
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    placement = run_dir.read_run(gpt2_prefix["run"])["placement"]
    assert placement["method"] == "past_prefix"
    assert placement["text_positions_start"] == GPT2_P


def test_served_gpt2_prefix_text_equals_peft_greedy_generation(gpt2_prefix):
    tokenizer = keras_hub.models.GPT2Tokenizer(
        vocabulary={t: i for i, t in enumerate(GPT2_TOKENS)}, merges=GPT2_MERGES
    )
    end_id = tokenizer.end_token_id
    expected = []
    for text in GPT2_TEXTS:
        ids = [int(t) for t in _numpy(tokenizer(text))]
        while len(ids) < GPT2_SEQUENCE:
            logits = peft_prefix_logits(
                gpt2_prefix["reference"],
                gpt2_prefix["prompt"],
                np.array([ids], np.int32),
                2,
                8,
            )
            ids.append(int(np.argmax(logits[0, -1])))
            if ids[-1] == end_id:
                break
        ids = [t for t in ids if t != end_id]
        expected.append(_numpy(tokenizer.detokenize(np.array(ids, np.int32))).item())
    expected = [t.decode() if isinstance(t, bytes) else t for t in expected]
    served = _served_texts(gpt2_prefix["served"])
    assert served == expected
    assert any(len(s) > len(t) for s, t in zip(served, GPT2_TEXTS))


def test_llama_prefix_adapter_with_grouped_kv_equals_peft_forward(tmp_path):
    from tiny_models import V, build_backbone, build_task

    # PEFT records a grouped-query model's kv heads and kv width.
    directory, prompt = _prefix_adapter(tmp_path / "llama", 2, 2, 4, seed=11)
    adapter = peft.read_adapter(directory)
    peft.check_config(adapter)
    lm = build_task("llama", seed=0)  # 4 query heads, 2 kv heads, head_dim 4
    handle = peft.apply_adapter(adapter, lm)
    assert handle.method.name == "past_prefix"
    reference = keras_hub.models.LlamaCausalLM(
        backbone=build_backbone("llama", seed=0), preprocessor=None
    )
    token_ids = np.random.default_rng(12).integers(1, V, (2, 5)).astype(np.int32)
    logits = _numpy(
        lm({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)})
    )
    expected = peft_prefix_logits(reference, prompt, token_ids, 2, 4)
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    # Query heads recorded instead of kv heads, with the same kv width.
    wrong, _ = _prefix_adapter(tmp_path / "wrong", 2, 4, 2, seed=11)
    adapter = peft.read_adapter(wrong)
    with pytest.raises(peft.PeftImportError, match="num_attention_heads=4.*=2"):
        peft.apply_adapter(adapter, build_task("llama", seed=0))
