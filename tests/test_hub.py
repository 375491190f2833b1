"""Tests for `tf_softprompt.hub` on tiny random keras-hub models.

GPT2 (learned absolute positions), Gemma (RoPE, sqrt(H) scaling), Llama
(grouped-query attention, RoPE) and BERT (absolute positions, segments,
pooled [CLS]), from `tiny_models`.
"""

import hashlib

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from tiny_models import H, V, build_backbone, build_task, sequence

import tf_softprompt
from tf_softprompt import hub

P = 3
HARD = np.array([11, 22, 33])  # hard tokens whose embeddings seed the prompt


def base_forward(backbone, token_ids, segment_ids=None):
    """The unprompted backbone's sequence output (and pooled, for BERT)."""
    token_ids = np.asarray(token_ids, "int32")
    inputs = {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}
    if "segment_ids" in backbone.input:
        inputs["segment_ids"] = np.zeros_like(token_ids)
    assert hub.get_prompt_tuning(backbone) is None
    return backbone(inputs)


def bert_inputs(token_ids, padding_mask):
    token_ids = np.asarray(token_ids, "int32")
    return {
        "token_ids": token_ids,
        "padding_mask": np.asarray(padding_mask),
        "segment_ids": np.zeros_like(token_ids),
    }


def inputs_for(kind, token_ids, padding_mask):
    if kind == "bert":
        return bert_inputs(token_ids, padding_mask)
    return {
        "token_ids": np.asarray(token_ids, "int32"),
        "padding_mask": np.asarray(padding_mask),
    }


def weights_digest(model):
    digest = hashlib.sha256()
    for w in model.weights:
        if "prompt_tuning_table" not in w.path:
            digest.update(np.asarray(w.numpy()).tobytes())
    return digest.hexdigest()


KINDS = ["gpt2", "gemma", "llama", "bert"]


def test_installed_keras_hub_is_a_tested_version():
    installed = ".".join(keras_hub.__version__.split(".")[:2])
    assert installed in hub.TESTED_KERAS_HUB_VERSIONS


def test_unsupported_models_raise_naming_the_class():
    model = keras.Sequential([keras.layers.Embedding(10, 4)])
    with pytest.raises(hub.UnsupportedModelError, match="Sequential"):
        hub.enable_prompt_tuning(model, 2)
    with pytest.raises(hub.UnsupportedModelError, match="GemmaBackbone.*prepend"):
        hub.enable_prompt_tuning(build_backbone("gemma"), 2, method="prepend")
    bart = keras_hub.models.BartBackbone(
        vocabulary_size=V,
        num_layers=1,
        num_heads=2,
        hidden_dim=H,
        intermediate_dim=32,
        max_sequence_length=16,
    )
    with pytest.raises(hub.UnsupportedModelError, match="BartBackbone.*encoder_"):
        hub.enable_prompt_tuning(bart, 2)
    backbone = build_backbone("gpt2")
    with pytest.raises(ValueError, match="method"):
        hub.enable_prompt_tuning(backbone, 2, method="lora")
    hub.enable_prompt_tuning(backbone, 2)
    with pytest.raises(ValueError, match="already enabled"):
        hub.enable_prompt_tuning(backbone, 2)


@pytest.mark.parametrize("kind", KINDS)
def test_hard_token_prompt_equals_base_fed_the_hard_tokens(kind):
    backbone = build_backbone(kind)
    rng = np.random.default_rng(1)
    ids = rng.integers(1, V, size=(2, 6)).astype("int32")
    offset = 1 if kind == "bert" else 0
    hard_ids = np.concatenate(
        [ids[:, :offset], np.tile(HARD, (2, 1)), ids[:, offset:]], axis=1
    )
    expected = base_forward(backbone, hard_ids)

    handle = hub.enable_prompt_tuning(backbone, P)
    assert handle.offset == offset  # BERT keeps [CLS] first by default
    handle.prompt.assign(tf.gather(handle.vocabulary, HARD))
    outputs = backbone(inputs_for(kind, ids, np.ones_like(ids)))

    got = sequence(outputs).numpy()
    want = sequence(expected).numpy()
    want = np.concatenate([want[:, :offset], want[:, offset + P :]], axis=1)
    assert got.shape == (2, 6, H)
    np.testing.assert_allclose(got, want, atol=1e-5)
    if kind == "bert":
        np.testing.assert_allclose(
            outputs["pooled_output"].numpy(),
            expected["pooled_output"].numpy(),
            atol=1e-5,
        )


@pytest.mark.parametrize("kind", KINDS)
def test_left_right_and_mixed_padding_equal_unpadded_runs(kind):
    backbone = build_backbone(kind)
    hub.enable_prompt_tuning(backbone, P)
    rng = np.random.default_rng(2)
    lengths = [5, 3, 7]
    rows = [rng.integers(1, V, size=n).astype("int32") for n in lengths]
    singles = [
        sequence(backbone(inputs_for(kind, r[None], np.ones((1, len(r)), bool))))[0]
        for r in rows
    ]
    width = 8
    right = np.zeros((3, width), "int32")
    left = np.zeros((3, width), "int32")
    right_mask = np.zeros((3, width), bool)
    left_mask = np.zeros((3, width), bool)
    for i, r in enumerate(rows):
        right[i, : len(r)], right_mask[i, : len(r)] = r, True
        left[i, width - len(r) :], left_mask[i, width - len(r) :] = r, True
    out_right = sequence(backbone(inputs_for(kind, right, right_mask))).numpy()
    out_left = sequence(backbone(inputs_for(kind, left, left_mask))).numpy()
    for i, r in enumerate(rows):
        n = len(r)
        np.testing.assert_allclose(out_right[i, :n], singles[i], atol=1e-4)
        np.testing.assert_allclose(out_left[i, width - n :], singles[i], atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_fit_trains_only_the_prompt_and_head(kind):
    task = build_task(kind)
    init = tf_softprompt.initializers.uniform(seed=0)
    handle = hub.enable_prompt_tuning(task, P, initializer=init)
    assert hub.get_prompt_tuning(task) is handle
    assert hub.get_prompt_tuning(task.backbone) is handle
    trainable = {v.path for v in task.trainable_variables}
    if kind == "bert":  # the classifier head stays trainable
        assert trainable == {
            "prompt_tuning_table/prompt",
            "logits/kernel",
            "logits/bias",
        }
    else:
        assert trainable == {"prompt_tuning_table/prompt"}
    before = weights_digest(task.backbone)
    prompt_before = handle.prompt.numpy().copy()

    rng = np.random.default_rng(3)
    ids = rng.integers(1, V, size=(8, 6)).astype("int32")
    mask = np.ones_like(ids, bool)
    mask[4:, 4:] = False
    x = inputs_for(kind, ids, mask)
    if kind == "bert":
        y = (ids[:, 1] % 2).astype("int32")
        task.compile(
            optimizer=keras.optimizers.Adam(0.05),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    else:
        y = np.roll(ids, -1, axis=1)
        task.compile(optimizer=keras.optimizers.Adam(0.05))
    sample_weight = None if kind == "bert" else mask.astype("float32")
    loss0 = task.evaluate(x, y, sample_weight=sample_weight, verbose=0)
    loss0 = loss0[0] if isinstance(loss0, list) else loss0
    task.fit(x, y, sample_weight=sample_weight, epochs=8, batch_size=8, verbose=0)
    loss1 = task.evaluate(x, y, sample_weight=sample_weight, verbose=0)
    loss1 = loss1[0] if isinstance(loss1, list) else loss1
    assert loss1 < loss0
    assert weights_digest(task.backbone) == before  # bit-identical base
    assert not np.allclose(handle.prompt.numpy(), prompt_before)
    predictions = task.predict(x, verbose=0)
    expected = (8, 2) if kind == "bert" else (8, 6, V)  # logits over V only
    assert predictions.shape == expected


@pytest.fixture(scope="module")
def gpt2_pair():
    """A base GPT2 LM and a prompted copy with hard-token prompt rows."""
    base = build_task("gpt2")
    prompted = build_task("gpt2")
    handle = hub.enable_prompt_tuning(prompted, P)
    handle.prompt.assign(tf.gather(handle.vocabulary, HARD))
    base.compile(sampler="greedy")
    prompted.compile(sampler="greedy")
    return base, prompted, handle


def right_padded(rows, width):
    ids = np.zeros((len(rows), width), "int32")
    mask = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, True
    return {"token_ids": ids, "padding_mask": mask}


@pytest.mark.parametrize("jit_compile", [False, True])
def test_greedy_generate_equals_base_given_hard_tokens(gpt2_pair, jit_compile):
    base, prompted, _ = gpt2_pair
    prompted.jit_compile = base.jit_compile = jit_compile
    prompted.generate_function = base.generate_function = None
    rows = [np.array([5, 6, 7, 8]), np.array([9, 10])]
    got = prompted.generate(right_padded(rows, 10), stop_token_ids=None)
    want = base.generate(
        right_padded([np.concatenate([HARD, r]) for r in rows], 10 + P),
        stop_token_ids=None,
    )
    assert got["token_ids"].shape == (2, 10)
    np.testing.assert_array_equal(got["token_ids"], want["token_ids"][:, P:])
    for r, out in zip(rows, got["token_ids"]):  # the user's prompt text is kept
        np.testing.assert_array_equal(out[: len(r)], r)


def test_generate_left_padded_and_mixed_batch_equals_single_rows(gpt2_pair):
    _, prompted, _ = gpt2_pair
    rows = [np.array([5, 6, 7, 8]), np.array([9, 10]), np.array([12, 13, 14])]
    singles = [
        prompted.generate(right_padded([r], 9), stop_token_ids=None)["token_ids"][0]
        for r in rows
    ]
    ids = np.zeros((3, 9), "int32")
    mask = np.zeros((3, 9), bool)
    for i, r in enumerate(rows):  # left padding
        ids[i, 9 - len(r) :], mask[i, 9 - len(r) :] = r, True
    left = prompted.generate(
        {"token_ids": ids, "padding_mask": mask}, stop_token_ids=None
    )
    mixed = prompted.generate(right_padded(rows, 9), stop_token_ids=None)
    for i in range(3):
        np.testing.assert_array_equal(left["token_ids"][i], singles[i])
        np.testing.assert_array_equal(mixed["token_ids"][i], singles[i])


def test_score_matches_forward_logits_and_base_with_hard_tokens(gpt2_pair):
    base, prompted, _ = gpt2_pair
    ids = np.array([[5, 6, 7, 8, 0], [9, 10, 11, 0, 0]], "int32")
    mask = ids > 0
    logits = prompted.score(ids, padding_mask=mask)
    forward = prompted({"token_ids": ids, "padding_mask": mask})
    assert logits.shape == (2, 5, V)
    np.testing.assert_allclose(logits, forward, atol=1e-5)
    hard = np.concatenate([np.tile(HARD, (1, 1)), ids[:1, :4]], axis=1)
    want = base.score(hard)[:, P:]
    np.testing.assert_allclose(logits[:1, :4], want, atol=1e-5)
    targets = np.roll(ids, -1, axis=1)
    loss = prompted.score(ids, mask, scoring_mode="loss", target_ids=targets)
    assert loss.shape == (2, 5)


@pytest.mark.parametrize("kind", ["gemma", "llama"])
def test_rope_models_generate_like_base_given_hard_tokens(kind):
    base = build_task(kind)
    prompted = build_task(kind)
    handle = hub.enable_prompt_tuning(prompted, P)
    handle.prompt.assign(tf.gather(handle.vocabulary, HARD))
    base.compile(sampler="greedy")
    prompted.compile(sampler="greedy")
    rows = [np.array([5, 6, 7]), np.array([9, 10, 4, 3, 2])]
    got = prompted.generate(right_padded(rows, 9), stop_token_ids=None)
    want = base.generate(
        right_padded([np.concatenate([HARD, r]) for r in rows], 9 + P),
        stop_token_ids=None,
    )
    np.testing.assert_array_equal(got["token_ids"], want["token_ids"][:, P:])


def test_sampler_never_emits_a_virtual_id():
    lm = build_task("gpt2")
    handle = hub.enable_prompt_tuning(lm, P)
    # A huge prompt dominates the hidden states; logits still cover V rows.
    handle.prompt.assign(100.0 * tf.ones((P, H)))
    lm.compile(sampler=keras_hub.samplers.RandomSampler(temperature=5.0, seed=1))
    inputs = right_padded([np.array([5, 6])] * 16, 24)
    out = lm.generate(inputs, stop_token_ids=None)["token_ids"]
    assert out.shape == (16, 24)
    assert out.max() < V and out.min() >= 0
    assert len(np.unique(out[:, 2:])) > 10  # it really sampled


def test_length_limit_of_absolute_positions_is_checked():
    backbone = build_backbone("gpt2")  # max_sequence_length=32
    hub.enable_prompt_tuning(backbone, 8)
    ids = np.ones((1, 30), "int32")
    with pytest.raises(ValueError, match="max_sequence_length=32"):
        backbone({"token_ids": ids, "padding_mask": np.ones_like(ids)})


def test_presets_untouched_and_prompt_artifact_round_trip(tmp_path):
    source = build_backbone("gpt2")
    preset = tmp_path / "preset"
    source.save_to_preset(str(preset))
    weights_file = preset / "model.weights.h5"
    file_digest = hashlib.sha256(weights_file.read_bytes()).hexdigest()

    lm = keras_hub.models.GPT2CausalLM(
        backbone=keras_hub.models.Backbone.from_preset(str(preset)),
        preprocessor=None,
    )
    base_digest = weights_digest(lm.backbone)
    handle = hub.enable_prompt_tuning(lm, P)
    ids = np.random.default_rng(4).integers(1, V, size=(4, 6)).astype("int32")
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}
    lm.compile(optimizer=keras.optimizers.Adam(0.05))
    lm.fit(x, np.roll(ids, -1, 1), epochs=2, verbose=0)
    assert weights_digest(lm.backbone) == base_digest
    assert hashlib.sha256(weights_file.read_bytes()).hexdigest() == file_digest

    # Base weights load after enabling, and the prompt survives the load.
    trained = handle.prompt.numpy().copy()
    other = build_backbone("gpt2", seed=9)
    other_handle = hub.enable_prompt_tuning(other, P)
    other_handle.prompt.assign(trained)
    other.load_weights(str(weights_file))
    assert weights_digest(other) == base_digest
    np.testing.assert_array_equal(other_handle.prompt.numpy(), trained)
    # An enabled model's own weights file still loads into a plain backbone.
    lm.backbone.save_weights(str(tmp_path / "enabled.weights.h5"))
    plain = build_backbone("gpt2", seed=5)
    plain.load_weights(str(tmp_path / "enabled.weights.h5"))
    assert weights_digest(plain) == base_digest

    path = tmp_path / "task.prompt.npz"
    meta = handle.save_prompt(str(path), task="copy")
    assert meta["task"] == "copy" and meta["vocab_size"] == V
    assert meta["model_class"] == "GPT2CausalLM" and meta["offset"] == 0
    fresh = keras_hub.models.GPT2CausalLM(
        backbone=keras_hub.models.Backbone.from_preset(str(preset)),
        preprocessor=None,
    )
    fresh_handle = hub.enable_prompt_tuning(fresh, P)
    fresh_handle.load_prompt(str(path))
    np.testing.assert_array_equal(fresh_handle.prompt.numpy(), trained)
    np.testing.assert_allclose(fresh.predict(x, verbose=0), lm.predict(x, verbose=0))
    # The loaded prompt trains further.
    fresh.compile(optimizer=keras.optimizers.Adam(0.05))
    fresh.fit(x, np.roll(ids, -1, 1), epochs=1, verbose=0)
    assert not np.allclose(fresh_handle.prompt.numpy(), trained)
    # A different base fails on the fingerprint.
    with pytest.raises(ValueError, match="fingerprint"):
        other_handle_2 = hub.enable_prompt_tuning(build_backbone("gpt2", seed=7), P)
        other_handle_2.load_prompt(str(path))


def test_label_word_initializer_sets_prompt_rows():
    backbone = build_backbone("bert")
    vocabulary = backbone.token_embedding.embeddings.numpy()
    init = tf_softprompt.initializers.from_token_ids(vocabulary, [[4], [5, 6]])
    handle = hub.enable_prompt_tuning(backbone, P, initializer=init)
    np.testing.assert_allclose(handle.prompt.numpy()[0], vocabulary[4])
    np.testing.assert_allclose(
        handle.prompt.numpy()[1], vocabulary[[5, 6]].mean(0), rtol=1e-6
    )


def manual_prepend_gpt2(backbone, ids, prompt):
    """GPT2 by hand: prompt inserted after the token+position sum."""
    tokens = backbone.token_embedding.embeddings.numpy()[ids]
    positions = backbone.position_embedding.position_embeddings.numpy()[: ids.shape[1]]
    x = tokens + positions
    x = np.concatenate([np.broadcast_to(prompt, (len(ids),) + prompt.shape), x], 1)
    mask = np.ones(x.shape[:2], "int32")
    for layer in backbone.transformer_layers:
        x = layer(x, decoder_padding_mask=mask)
    return backbone.layer_norm(x).numpy()[:, len(prompt) :]


def manual_prepend_bert(backbone, ids, prompt):
    """BERT by hand: prompt inserted after [CLS], after the embedding sum."""
    tokens = backbone.token_embedding.embeddings.numpy()[ids]
    positions = backbone.position_embedding.position_embeddings.numpy()[: ids.shape[1]]
    segments = backbone.segment_embedding.embeddings.numpy()[0]
    x = tokens + positions + segments
    batch_prompt = np.broadcast_to(prompt, (len(ids),) + prompt.shape)
    x = np.concatenate([x[:, :1], batch_prompt, x[:, 1:]], 1)
    x = backbone.embeddings_layer_norm(x)
    mask = np.ones(x.shape[:2], "int32")
    for layer in backbone.transformer_layers:
        x = layer(x, padding_mask=mask)
    x = x.numpy()
    pooled = backbone.pooled_dense(x[:, 0]).numpy()
    return np.concatenate([x[:, :1], x[:, 1 + len(prompt) :]], 1), pooled


def test_prepend_gpt2_matches_manual_insertion_after_position_sum():
    lm = build_task("gpt2")
    reference = build_task("gpt2").backbone  # the same seeded base, unpatched
    handle = hub.enable_prompt_tuning(lm, P, method="prepend")
    prompt = np.random.default_rng(5).normal(size=(P, H)).astype("float32")
    handle.prompt.assign(prompt)
    ids = np.random.default_rng(6).integers(1, V, size=(2, 5)).astype("int32")
    want = manual_prepend_gpt2(reference, ids, prompt)
    got = lm.backbone({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    # Left padding gives the same numbers.
    padded = np.pad(ids, ((0, 0), (2, 0)))
    mask = padded > 0
    got_left = lm.backbone({"token_ids": padded, "padding_mask": mask}).numpy()
    np.testing.assert_allclose(got_left[:, 2:], want, atol=1e-4)
    # A masked prompt slot acts like an absent one, also via call_extended.
    prompt_ids = np.tile(V + np.arange(P, dtype="int32"), (2, 1))
    prompt_mask = np.tile([True, True, False], (2, 1))
    want_short = manual_prepend_gpt2(reference, ids, prompt[:2])
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    extended, restore = handle.extend_inputs(x, prompt_ids, prompt_mask)
    got_short = restore(handle.call_extended(extended)).numpy()
    np.testing.assert_allclose(got_short, want_short, atol=1e-5)
    logits = handle.call(x, prompt_ids=prompt_ids, prompt_mask=prompt_mask)
    want_logits = lm.backbone.token_embedding(want_short, reverse=True)
    np.testing.assert_allclose(logits, want_logits, atol=1e-4)
    # Cached greedy generation equals a greedy loop over the full forward.
    lm.compile(sampler="greedy")
    out = lm.generate(right_padded([ids[0]], 9), stop_token_ids=None)["token_ids"]
    loop = list(ids[0])
    while len(loop) < 9:
        row = np.array([loop], "int32")
        logits = lm({"token_ids": row, "padding_mask": np.ones_like(row)})
        loop.append(int(np.argmax(logits[0, -1])))
    np.testing.assert_array_equal(out[0], loop)


def test_prepend_bert_matches_manual_insertion_after_position_sum():
    backbone = build_backbone("bert")
    reference = build_backbone("bert")  # the same seeded base, unpatched
    handle = hub.enable_prompt_tuning(backbone, P, method="prepend")
    prompt = np.random.default_rng(7).normal(size=(P, H)).astype("float32")
    handle.prompt.assign(prompt)
    ids = np.random.default_rng(8).integers(1, V, size=(2, 5)).astype("int32")
    want_sequence, want_pooled = manual_prepend_bert(reference, ids, prompt)
    got = backbone(bert_inputs(ids, np.ones_like(ids)))
    np.testing.assert_allclose(got["sequence_output"], want_sequence, atol=1e-5)
    np.testing.assert_allclose(got["pooled_output"], want_pooled, atol=1e-5)


def test_per_example_prompts_for_multi_task_serving():
    """Two tasks' prompts in one table; masked slots act like absent ones."""
    pmax = 3
    lm = build_task("gpt2")
    handle = hub.enable_prompt_tuning(lm, 2 * pmax)
    hard_a, hard_b = np.array([11, 22, 33]), np.array([44, 55])
    table = handle.vocabulary.numpy()[[11, 22, 33, 44, 55, 0]]
    handle.prompt.assign(table)
    rows = [np.array([5, 6, 7]), np.array([8, 9, 10, 12])]
    inputs = right_padded(rows, 6)
    prompt_ids = V + np.array([[0, 1, 2], [3, 4, 5]], "int32")
    prompt_mask = np.array([[True, True, True], [True, True, False]])
    got = handle.call(inputs, prompt_ids=prompt_ids, prompt_mask=prompt_mask)
    base = build_task("gpt2")
    for i, (hard, r) in enumerate(zip([hard_a, hard_b], rows)):
        row = np.concatenate([hard, r])[None].astype("int32")
        want = base({"token_ids": row, "padding_mask": np.ones_like(row)})
        np.testing.assert_allclose(got[i, : len(r)], want[0, len(hard) :], atol=1e-4)

    extended, restore = handle.extend_inputs(inputs, prompt_ids, prompt_mask)
    assert extended["token_ids"].shape == (2, 6 + pmax)
    hidden = handle.call_extended(extended)
    logits = lm.backbone.token_embedding(restore(hidden), reverse=True)
    np.testing.assert_allclose(logits, got, atol=1e-5)

    lm.compile(sampler="greedy")
    generated = handle.generate_step(
        right_padded(rows, 8), prompt_ids=prompt_ids, prompt_mask=prompt_mask
    )["token_ids"].numpy()
    base.compile(sampler="greedy")
    for i, (hard, r) in enumerate(zip([hard_a, hard_b], rows)):
        want = base.generate(
            right_padded([np.concatenate([hard, r])], 8 + len(hard)),
            stop_token_ids=None,
        )["token_ids"][0, len(hard) :]
        np.testing.assert_array_equal(generated[i], want)


def test_offset_after_bos_with_left_padding_and_generation():
    base = build_task("gpt2")
    lm = build_task("gpt2")
    handle = hub.enable_prompt_tuning(lm, P, offset=1)
    handle.prompt.assign(tf.gather(handle.vocabulary, HARD))
    bos = 1
    rows = [np.array([bos, 5, 6, 7]), np.array([bos, 9])]
    ids = np.zeros((2, 6), "int32")
    mask = np.zeros((2, 6), bool)
    for i, r in enumerate(rows):  # left padding
        ids[i, 6 - len(r) :], mask[i, 6 - len(r) :] = r, True
    got = lm({"token_ids": ids, "padding_mask": mask}).numpy()
    for i, r in enumerate(rows):
        hard = np.concatenate([r[:1], HARD, r[1:]])[None].astype("int32")
        want = base({"token_ids": hard, "padding_mask": np.ones_like(hard)})[0]
        want = np.concatenate([want[:1], want[1 + P :]])
        np.testing.assert_allclose(got[i, 6 - len(r) :], want, atol=1e-4)
    base.compile(sampler="greedy")
    lm.compile(sampler="greedy")
    out = lm.generate({"token_ids": ids, "padding_mask": mask}, stop_token_ids=None)
    for i, r in enumerate(rows):
        hard = np.concatenate([r[:1], HARD, r[1:]])
        want = base.generate(right_padded([hard], 6 + P), stop_token_ids=None)
        want = want["token_ids"][0]
        np.testing.assert_array_equal(
            out["token_ids"][i], np.concatenate([want[:1], want[1 + P :]])
        )


def test_string_generate_through_the_preprocessor():
    vocabulary = {"<|endoftext|>": 0}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocabulary[ch] = len(vocabulary)
        vocabulary["Ġ" + ch] = len(vocabulary)
    vocabulary["Ġ"] = len(vocabulary)
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=["Ġ a"])
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer=tokenizer, sequence_length=10
    )
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(vocabulary),
        num_layers=2,
        num_heads=2,
        hidden_dim=H,
        intermediate_dim=32,
        max_sequence_length=32,
    )
    base = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    base.compile(sampler="greedy")
    hard = np.array([5, 7, 9])
    x = preprocessor.generate_preprocess(["a b c"], sequence_length=10)
    ids = x["token_ids"].numpy()[0]
    n = int(x["padding_mask"].numpy().sum())
    want = base.generate(
        right_padded([np.concatenate([hard, ids[:n]])], 10 + P), stop_token_ids=None
    )["token_ids"][0, P:]

    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor)
    handle = hub.enable_prompt_tuning(lm, P)
    handle.prompt.assign(tf.gather(handle.vocabulary, hard))
    lm.compile(sampler="greedy")
    got = lm.generate(["a b c"], max_length=10, stop_token_ids=None)
    expected = preprocessor.generate_postprocess(
        {"token_ids": want[None], "padding_mask": np.ones((1, 10), bool)}
    )
    assert list(got) == list(expected)
    assert got[0].startswith("a b c") and len(got[0]) > len("a b c")


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_xla_train_step_has_no_sort_and_matches_graph_mode(kind):
    # Packing rows once used tf.argsort; under XLA on CPU that made a whole
    # MiniLM train step ~15x slower (8.7 s vs 0.67 s), so packing must stay
    # sort-free, and the compiled step must still agree with graph mode.
    task = build_task(kind)
    handle = hub.enable_prompt_tuning(
        task, P, initializer=tf_softprompt.initializers.uniform(seed=0)
    )
    rng = np.random.default_rng(5)
    ids = rng.integers(1, V, size=(4, 6)).astype("int32")
    mask = np.ones_like(ids, bool)
    mask[1, :2] = False  # left padding
    mask[2, 4:] = False  # right padding
    x = inputs_for(kind, ids, mask)

    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(sequence(task.backbone(x))))
        return loss, tape.gradient(loss, handle.prompt)

    compiled = tf.function(step, jit_compile=True)
    hlo = compiled.experimental_get_compiler_ir(x)(stage="hlo")
    assert " sort(" not in hlo
    loss, grad = compiled(x)
    graph_loss, graph_grad = tf.function(step)(x)
    np.testing.assert_allclose(float(loss), float(graph_loss), rtol=1e-5)
    np.testing.assert_allclose(grad.numpy(), graph_grad.numpy(), rtol=1e-4, atol=1e-6)
    assert float(tf.reduce_max(tf.abs(grad))) > 0
