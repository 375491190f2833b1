"""Prefix tuning (`method="prefix"`) on tiny random keras-hub models.

The references never go through the adapter:

- *in context*: a prefix holding the keys/values that hard tokens have when
  the base model reads them in front of (BERT: after [CLS] of) the text must
  give the base model's outputs at the text positions. The test records
  those keys/values itself, with its own hook on the attention layers, and
  removes position information from the base (zero position embeddings,
  identity RoPE), because a prefix by design keeps the text's positions
  where the hard tokens would shift them;
- *masked*: a fully masked prefix must leave the base model, positions
  included, exactly as it was;
- *hand-written attention* (numpy) for Gemma's sliding window.
"""

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from tiny_models import (
    CAUSAL_KINDS,
    KINDS,
    V,
    build_backbone,
    build_task,
    inputs_for,
    sequence,
)

from tf_softprompt import artifact, hub
from tf_softprompt.hub import inspection
from tf_softprompt.methods import prefix as prefix_lib

P = 3
HARD = np.array([11, 22, 33])
KV_HEADS = {"gpt2": 2, "gemma": 1, "llama": 2, "bert": 2}


def own_attention_layers(backbone):
    """Each block's self-attention, found without the adapter."""
    if type(backbone).__name__.startswith("Gemma"):
        return [block.attention for block in backbone.transformer_layers]
    return [block._self_attention_layer for block in backbone.transformer_layers]


def position_free(backbone):
    """Remove every position signal from a base model (test-only surgery)."""
    position = getattr(backbone, "position_embedding", None)
    if position is not None:
        weights = position.position_embeddings
        weights.assign(tf.zeros_like(weights))
    for layer in own_attention_layers(backbone):
        rope = getattr(layer, "rotary_embedding_layer", None) or getattr(
            layer, "rope_layer", None
        )
        if rope is not None:
            object.__setattr__(rope, "call", lambda x, start_index=0, positions=None: x)
    return backbone


@contextlib.contextmanager
def recording(backbone, kind):
    """Record each attention layer's (key, value) inputs, kv heads only."""
    records = []
    layers = own_attention_layers(backbone)
    saved = []
    for index, layer in enumerate(layers):
        original = layer._compute_attention

        def record(query, key, value, *args, _i=index, _f=original, **kwargs):
            groups = int(key.shape[2]) // KV_HEADS[kind]
            records.append(
                (_i, key.numpy()[:, :, ::groups], value.numpy()[:, :, ::groups])
            )
            return _f(query, key, value, *args, **kwargs)

        saved.append((layer, original))
        object.__setattr__(layer, "_compute_attention", record)
    try:
        yield records
    finally:
        for layer, _ in saved:
            object.__delattr__(layer, "_compute_attention")


def in_context(backbone, kind, row):
    """Base outputs of `row` with HARD read in context, and HARD's K/V."""
    cut = 1 if kind == "bert" else 0
    ids = np.concatenate([row[:cut], HARD, row[cut:]])[None]
    with recording(backbone, kind) as records:
        outputs = backbone(inputs_for(kind, ids))
    kv = np.stack(
        [np.stack([k[0, cut : cut + P], v[0, cut : cut + P]]) for _, k, v in records]
    )
    seq = sequence(outputs).numpy()[0]
    text = np.concatenate([seq[:cut], seq[cut + P :]])
    pooled = outputs["pooled_output"].numpy()[0] if kind == "bert" else None
    return text, pooled, kv


def right_padded(rows, width):
    ids = np.zeros((len(rows), width), "int32")
    mask = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, True
    return ids, mask


ROWS = [np.array([2, 5, 6, 7, 8]), np.array([2, 9, 10])]


@pytest.mark.parametrize("kind", KINDS)
def test_prefix_equals_hard_tokens_read_in_context(kind):
    backbone = position_free(build_backbone(kind))
    references = [in_context(backbone, kind, row) for row in ROWS]
    handle = hub.enable_prompt_tuning(backbone, 2 * P, method="prefix")
    # Two tasks in one table: row i reads its own in-context keys/values
    # (for BERT they depend on the text; causal models give the same twice).
    handle.assign_prompt(np.concatenate([kv for _, _, kv in references], axis=2))
    ids, mask = right_padded(ROWS, 6)
    prompt_ids = V + np.array([[0, 1, 2], [3, 4, 5]])
    outputs = handle.call(inputs_for(kind, ids, mask), prompt_ids=prompt_ids)
    got = sequence(outputs).numpy()
    for i, (text, pooled, _) in enumerate(references):
        np.testing.assert_allclose(got[i, : len(ROWS[i])], text, atol=1e-5)
        if kind == "bert":
            np.testing.assert_allclose(outputs["pooled_output"][i], pooled, atol=1e-5)
    if kind != "bert":  # causal: the hard tokens' keys/values ignore the text
        np.testing.assert_allclose(references[0][2], references[1][2], atol=1e-6)


@pytest.mark.parametrize("kind", CAUSAL_KINDS)
def test_token_initializer_captures_the_keys_values_of_a_causal_context(kind):
    backbone = build_backbone(kind)  # positions on: the hard tokens come first
    _, _, expected = in_context(backbone, kind, np.array([7, 8]))
    handle = hub.enable_prompt_tuning(
        backbone, P, method="prefix", initializer=prefix_lib.from_token_ids(HARD)
    )
    np.testing.assert_allclose(handle.prompt.numpy(), expected, atol=1e-6)
    assert handle.prompt.shape == (2, 2, P, KV_HEADS[kind], expected.shape[-1])


SLIDING = {"use_sliding_window_attention": True, "sliding_window_size": 2}


@pytest.mark.parametrize(
    "kind,overrides", [(k, {}) for k in KINDS] + [("gemma", SLIDING)]
)
def test_masked_prefix_leaves_the_base_model_and_its_positions_unchanged(
    kind, overrides
):
    base = build_backbone(kind, **overrides)
    prompted = build_backbone(kind, **overrides)
    handle = hub.enable_prompt_tuning(
        prompted, P, method="prefix", initializer=prefix_lib.from_token_ids(HARD)
    )
    ids, mask = right_padded(ROWS + [np.array([3, 4, 5, 6, 7, 8])], 6)
    want = sequence(base(inputs_for(kind, ids, mask))).numpy()
    prompt_ids = np.tile(V + np.arange(P), (3, 1))
    got = handle.call(
        inputs_for(kind, ids, mask),
        prompt_ids=prompt_ids,
        prompt_mask=np.zeros_like(prompt_ids, bool),
    )
    got = sequence(got).numpy()
    active = sequence(handle.call(inputs_for(kind, ids, mask))).numpy()
    for i in range(3):
        n = int(mask[i].sum())
        np.testing.assert_allclose(got[i, :n], want[i, :n], atol=1e-5)
        assert np.abs(active[i, :n] - want[i, :n]).max() > 1e-3  # the prefix acts


def test_gemma_sliding_window_keeps_the_prefix_visible_to_every_query():
    backbone = build_backbone("gemma", **SLIDING)
    handle = hub.enable_prompt_tuning(
        backbone, P, method="prefix", initializer=prefix_lib.from_token_ids(HARD)
    )
    layer = own_attention_layers(backbone)[0]  # layer 0 has the window
    assert layer.use_sliding_window_attention
    seen = {}
    patched = layer._compute_attention

    def spy(q, k, v, attention_mask, *args, **kwargs):
        out = patched(q, k, v, attention_mask, *args, **kwargs)
        seen.update(q=q.numpy(), k=k.numpy(), v=v.numpy(), out=out.numpy())
        return out

    object.__setattr__(layer, "_compute_attention", spy)
    ids = np.array([[4, 5, 6, 7, 8]], "int32")
    backbone(inputs_for("gemma", ids))
    object.__setattr__(layer, "_compute_attention", patched)
    q, k, v = seen["q"][0], seen["k"][0], seen["v"][0]  # [T, 2, 8], [T, 1, 8]
    pk, pv = handle.prompt.numpy()[0]  # [P, 1, 8]
    keys = np.concatenate([pk, k])[:, 0]
    values = np.concatenate([pv, v])[:, 0]
    t = np.arange(5)
    real = (t[:, None] >= t[None]) & (np.abs(t[:, None] - t[None]) < 2)
    visible = np.concatenate([np.ones((5, P), bool), real], axis=1)
    logits = np.einsum("thd,sd->hts", q, keys) / np.sqrt(8)
    logits = np.where(visible[None], logits, -1e9)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    want = np.einsum("hts,sd->thd", weights, values)
    np.testing.assert_allclose(seen["out"][0], want, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_left_right_and_mixed_padding_equal_unpadded_runs(kind):
    backbone = build_backbone(kind)
    handle = hub.enable_prompt_tuning(
        backbone, P, method="prefix", initializer=prefix_lib.from_token_ids(HARD)
    )
    rows = [np.array([2, 5, 6, 7]), np.array([2, 9]), np.array([2, 12, 13])]
    singles = [sequence(backbone(inputs_for(kind, r[None]))).numpy()[0] for r in rows]
    right_ids, right_mask = right_padded(rows, 6)
    left_ids, left_mask = np.zeros_like(right_ids), np.zeros_like(right_mask)
    for i, r in enumerate(rows):
        left_ids[i, 6 - len(r) :], left_mask[i, 6 - len(r) :] = r, True
    right = sequence(backbone(inputs_for(kind, right_ids, right_mask))).numpy()
    left = sequence(backbone(inputs_for(kind, left_ids, left_mask))).numpy()
    for i, r in enumerate(rows):
        np.testing.assert_allclose(right[i, : len(r)], singles[i], atol=1e-5)
        np.testing.assert_allclose(left[i, 6 - len(r) :], singles[i], atol=1e-5)
    assert handle.dims.num_layers == 2


@pytest.mark.parametrize("kind", CAUSAL_KINDS)
def test_cached_prefill_and_decode_equal_the_uncached_forward(kind):
    lm = build_task(kind)
    hub.enable_prompt_tuning(
        lm, P, method="prefix", initializer=prefix_lib.from_token_ids(HARD)
    )
    ids = np.array([[5, 6, 7, 8, 9, 10]], "int32")
    full = lm(inputs_for(kind, ids)).numpy()
    _, cache = lm._build_cache(tf.constant(ids))
    prefill, _, _ = lm.call_with_cache(tf.constant(ids), tf.zeros_like(cache), 0)
    np.testing.assert_allclose(prefill.numpy(), full, atol=1e-5)
    cache = tf.zeros_like(cache)
    for i in range(ids.shape[1]):
        step, _, cache = lm.call_with_cache(tf.constant(ids[:, i : i + 1]), cache, i)
        np.testing.assert_allclose(step.numpy()[:, 0], full[:, i], atol=1e-5)


@pytest.mark.parametrize("kind", CAUSAL_KINDS)
def test_greedy_generate_follows_the_uncached_argmax(kind):
    lm = build_task(kind)
    hub.enable_prompt_tuning(
        lm, P, method="prefix", initializer=prefix_lib.from_token_ids(HARD)
    )
    lm.compile(sampler="greedy")
    ids, mask = right_padded([np.array([5, 6, 7]), np.array([8, 9])], 7)
    out = lm.generate({"token_ids": ids, "padding_mask": mask}, stop_token_ids=None)
    for i, n in enumerate((3, 2)):
        row = list(ids[i, :n])
        while len(row) < 7:
            logits = lm(inputs_for(kind, np.array([row]))).numpy()
            row.append(int(np.argmax(logits[0, -1])))
        np.testing.assert_array_equal(out["token_ids"][i], row)
        assert out["token_ids"][i].max() < V


def test_fit_with_adamw_trains_only_the_prefix_and_head():
    task = build_task("bert")
    handle = hub.enable_prompt_tuning(task, P, method="prefix")
    base = [w for w in task.backbone.weights if "prompt" not in w.path]
    base_before = [w.numpy().copy() for w in base]
    head_before = [w.numpy().copy() for w in task.output_dense.weights]
    prefix_before = handle.prompt.numpy().copy()
    expected = 2 * 2 * P * 2 * 8 + (16 * 2 + 2)  # L*2*P*kv*hd + head
    assert sum(int(np.prod(v.shape)) for v in task.trainable_variables) == expected
    task.compile(
        optimizer=keras.optimizers.AdamW(1e-2, weight_decay=0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    ids = rng.integers(1, V, size=(8, 6)).astype("int32")
    task.fit(inputs_for("bert", ids), np.arange(8) % 2, epochs=3, verbose=0)
    base_after = [w.numpy() for w in base]
    for before, after in zip(base_before, base_after):
        np.testing.assert_array_equal(before, after)
    assert np.abs(handle.prompt.numpy() - prefix_before).max() > 1e-3
    assert any(
        np.abs(w.numpy() - b).max() > 1e-4
        for w, b in zip(task.output_dense.weights, head_before)
    )


def test_xla_gradient_equals_graph_mode_gradient():
    task = build_task("gpt2")
    handle = hub.enable_prompt_tuning(
        task, P, method="prefix", initializer=prefix_lib.from_token_ids(HARD)
    )
    ids, mask = right_padded([np.array([5, 6, 7, 8]), np.array([9, 10])], 5)
    x = inputs_for("gpt2", ids, mask)

    def step(x):
        with tf.GradientTape() as tape:
            logits = task(x, training=False)
            loss = tf.reduce_sum(
                tf.square(logits) * tf.cast(x["padding_mask"], tf.float32)[..., None]
            )
        return tape.gradient(loss, handle.prompt)

    graph = tf.function(step)(x).numpy()
    xla = tf.function(step, jit_compile=True)(x).numpy()
    eager = step(x).numpy()
    np.testing.assert_allclose(xla, graph, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(eager, graph, rtol=1e-4, atol=1e-5)
    assert np.abs(graph).max() > 1e-3


def test_artifact_round_trip_and_refusals(tmp_path):
    task = build_task("llama")
    handle = hub.enable_prompt_tuning(
        task, P, method="prefix", initializer=prefix_lib.from_token_ids(HARD)
    )
    path = str(tmp_path / "p.prompt.npz")
    meta = handle.save_prompt(path, task="t")
    assert meta["method"] == "prefix" and meta["shape"] == [2, 2, P, 2, 4]
    assert (meta["num_layers"], meta["num_key_value_heads"], meta["head_dim"]) == (
        2,
        2,
        4,
    )
    expected = artifact.weights_fingerprint(
        [(w.path, w.numpy()) for w in task.backbone.weights if "prompt" not in w.path]
    )
    assert meta["base_fingerprint"] == expected
    trained = handle.prompt.numpy().copy()
    handle.prompt.assign(tf.zeros_like(handle.prompt))
    handle.load_prompt(path)
    np.testing.assert_array_equal(handle.prompt.numpy(), trained)

    other = build_task("llama", seed=1)  # same shapes, other weights
    other_handle = hub.enable_prompt_tuning(other, P, method="prefix")
    with pytest.raises(ValueError, match="fingerprint") as info:
        other_handle.load_prompt(path)
    assert expected in str(info.value) and other_handle.fingerprint in str(info.value)
    embedding = build_task("llama")
    with pytest.raises(ValueError, match="method='prefix'"):
        hub.enable_prompt_tuning(embedding, P).load_prompt(path)
    with pytest.raises(ValueError, match="not a \\[num_prompt_tokens, hidden_dim\\]"):
        artifact.load_prompt(path)
    short = build_task("llama")
    with pytest.raises(ValueError, match="num_prompt_tokens|shape"):
        hub.enable_prompt_tuning(short, P + 1, method="prefix").load_prompt(path)
    with np.load(path) as data:
        broken = {k: data[k] for k in data.files}
    broken["prompt"] = broken["prompt"][:, :, :2]
    np.savez(str(tmp_path / "broken.prompt.npz"), **broken)
    with pytest.raises(ValueError, match="corrupt"):
        handle.load_prompt(str(tmp_path / "broken.prompt.npz"))


def test_unsupported_attention_and_offsets_are_refused():
    import keras_hub

    mistral = keras_hub.models.MistralBackbone(
        vocabulary_size=V,
        num_layers=1,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=16,
        intermediate_dim=32,
    )
    with pytest.raises(hub.UnsupportedModelError, match="CachedMistralAttention"):
        hub.enable_prompt_tuning(mistral, P, method="prefix")
    with pytest.raises(ValueError, match="no offset"):
        hub.enable_prompt_tuning(build_backbone("gpt2"), P, method="prefix", offset=1)
    with pytest.raises(ValueError, match="initialises a prefix"):
        hub.enable_prompt_tuning(
            build_backbone("gpt2"), P, initializer=prefix_lib.from_token_ids(HARD)
        )


def test_vllm_attention_path_is_refused_instead_of_skipping_the_prefix():
    backbone = build_backbone("llama")
    hub.enable_prompt_tuning(backbone, P, method="prefix")
    layer = inspection.attention_layers(backbone)[0]
    with pytest.raises(hub.PromptPathError, match="vLLM"):
        layer._compute_vllm_attention(tf.zeros((1, 2, 16)), None, None)


def test_reparameterized_prefix_is_the_mlp_and_resumes_from_its_artifact(tmp_path):
    task = build_task("gpt2")
    config = prefix_lib.Reparameterization(hidden_dim=8)
    handle = hub.enable_prompt_tuning(
        task,
        P,
        method="prefix",
        reparameterization=config,
        initializer=prefix_lib.from_token_ids(HARD),
    )
    w = {k: v.numpy() for k, v in handle.table.reparameterization_weights.items()}
    np.testing.assert_allclose(
        w["embedding"], task.backbone.token_embedding.embeddings.numpy()[HARD]
    )
    flat = np.tanh(w["embedding"] @ w["w1"] + w["b1"]) @ w["w2"] + w["b2"]
    want = flat.reshape(P, 2, 2, 2, 8).transpose(1, 2, 0, 3, 4)
    np.testing.assert_allclose(handle.prompt_values(), want, rtol=1e-5, atol=1e-6)
    names = sorted(v.path.split("/")[-1] for v in handle.table.trainable_variables)
    assert names == sorted(f"reparameterization_{k}" for k in w)
    with pytest.raises(ValueError, match="prompt_values"):
        handle.prompt  # noqa: B018
    path = str(tmp_path / "r.prompt.npz")
    handle.save_prompt(path)
    resumed = hub.enable_prompt_tuning(
        build_task("gpt2"), P, method="prefix", reparameterization=config
    )
    resumed.load_prompt(path)
    np.testing.assert_allclose(resumed.prompt_values(), want, rtol=1e-5, atol=1e-6)
    collapsed_task = build_task("gpt2")
    collapsed = hub.enable_prompt_tuning(collapsed_task, P, method="prefix")
    collapsed.load_prompt(path)  # serving uses the collapsed prefix
    ids = np.array([[5, 6, 7]], "int32")
    np.testing.assert_allclose(
        collapsed_task(inputs_for("gpt2", ids)),
        task(inputs_for("gpt2", ids)),
        atol=1e-5,
    )
    only_collapsed = str(tmp_path / "c.prompt.npz")
    collapsed.save_prompt(only_collapsed)
    with pytest.raises(ValueError, match="collapsed"):
        resumed.load_prompt(only_collapsed)
