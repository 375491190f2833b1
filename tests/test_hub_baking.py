"""Position offsets and baked prompt keys/values (`tf_softprompt.hub.baking`).

References that never go through the adapter:

- *position offsets*: text behind the keys/values the base model computed
  for hard tokens (recorded by this test's own hook), starting at the
  position after them, must read exactly as the base model reads the hard
  tokens followed by the text (GPT-2's learned positions; Llama's and
  Gemma's RoPE, where only positions relative to the keys in front count);
- *baked keys/values*: a form-1 prompt holding the embeddings of hard tokens
  bakes into the keys (after RoPE) and values the base model computes for
  those tokens, recorded by this test's own hook;
- *baked equals unbaked*: the prompted model running its prompt positions
  (the path every other test pins) gives the same logits and greedy ids as
  the baked keys/values plus offsets, for every method, multi-task with
  prompts of different lengths, mixed and padded batches.
"""

import contextlib

import numpy as np
import pytest
import tensorflow as tf
from tiny_models import CAUSAL_KINDS, V, build_backbone, build_task

from tf_softprompt import hub
from tf_softprompt.export import MultiTaskPromptTable
from tf_softprompt.export.baking import bake_plan
from tf_softprompt.hub import baking

HARD = np.array([11, 22, 33])
KV_HEADS = {"gpt2": 2, "gemma": 1, "llama": 2}
LENGTHS = (3, 2)  # two tasks, Pmax = 3


def own_attention_layers(backbone):
    if type(backbone).__name__.startswith("Gemma"):
        return [block.attention for block in backbone.transformer_layers]
    return [block._self_attention_layer for block in backbone.transformer_layers]


@contextlib.contextmanager
def recording(backbone, kind):
    """Record each attention layer's (key, value) inputs, kv heads only."""
    records = {}
    saved = []
    for index, layer in enumerate(own_attention_layers(backbone)):
        original = layer._compute_attention

        def record(query, key, value, *args, _i=index, _f=original, **kwargs):
            groups = int(key.shape[2]) // KV_HEADS[kind]
            records[_i] = (key.numpy()[0, :, ::groups], value.numpy()[0, :, ::groups])
            return _f(query, key, value, *args, **kwargs)

        saved.append((layer, "_compute_attention" in layer.__dict__, original))
        object.__setattr__(layer, "_compute_attention", record)
    try:
        yield records
    finally:
        for layer, had, original in saved:
            if had:
                object.__setattr__(layer, "_compute_attention", original)
            else:
                object.__delattr__(layer, "_compute_attention")


def greedy(task):
    task.compile(sampler="greedy")
    return task


def base_keys_values(base, kind, token_ids):
    """`[L, 2, P, kv_heads, head_dim]` the base computes for `token_ids`,
    recorded by this test's hook (keys after RoPE)."""
    ids = np.asarray([token_ids], "int32")
    with recording(base.backbone, kind) as records:
        base({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    return np.stack([np.stack(records[i]) for i in sorted(records)])


@pytest.mark.parametrize("kind", CAUSAL_KINDS)
def test_offsets_behind_captured_keys_values_equal_hard_tokens_in_context(kind):
    # The base reads hard tokens then text; a prefix of the hard tokens'
    # keys/values with the text starting at position len(hard) must give
    # the same text outputs. Row 1 uses the first two hard tokens only.
    base = build_task(kind)
    prompted = build_task(kind)
    handle = hub.enable_prompt_tuning(prompted, len(HARD), method="prefix")
    handle.assign_prompt(base_keys_values(base, kind, HARD))
    text = np.array([[5, 6, 7, 8], [9, 10, 11, 12]], "int32")
    inputs = {"token_ids": text, "padding_mask": np.ones_like(text, bool)}
    rows = np.array([[V, V + 1, V + 2]] * 2, np.int32)
    mask = np.array([[True, True, True], [True, True, False]])
    got = handle.call(inputs, rows, mask, position_offsets=[3, 2]).numpy()
    for b, hard in enumerate([HARD, HARD[:2]]):
        ids = np.concatenate([hard, text[b]])[None].astype("int32")
        want = base({"token_ids": ids, "padding_mask": np.ones_like(ids)})
        np.testing.assert_allclose(got[b], want[0, len(hard) :], atol=1e-5)
    # Without the offsets the text reads as if it came first: wrong, by far
    # more than the tolerance (tiny Llama's logits move least).
    unshifted = handle.call(inputs, rows, mask).numpy()
    assert np.abs(unshifted - got).max() > 2e-4


@pytest.mark.parametrize("kind", CAUSAL_KINDS)
def test_baked_keys_values_are_the_base_keys_after_rope_and_values(kind):
    want = base_keys_values(build_task(kind), kind, HARD)
    prompted = build_task(kind)
    handle = hub.enable_prompt_tuning(prompted, len(HARD))
    handle.prompt.assign(tf.gather(handle.vocabulary, HARD))
    (baked,) = baking.bake_keys_values(handle, [handle.prompt_token_ids.numpy()])
    assert baked.shape == (2, 2, 3, KV_HEADS[kind], want.shape[-1])
    np.testing.assert_allclose(baked, want, atol=1e-5)
    # Rows in another order are another prompt (positions and causality).
    (swapped,) = baking.bake_keys_values(handle, [[V + 1, V, V + 2]])
    assert np.abs(swapped - baked).max() > 1e-3


def _prompted_multi_task(kind, method):
    task = greedy(build_task(kind))
    pmax = max(LENGTHS)
    handle = hub.enable_prompt_tuning(task, len(LENGTHS) * pmax, method=method)
    rng = np.random.default_rng(1)
    handle.assign_prompt(rng.normal(0, 2, handle.prompt_values().shape))
    arrays = baking.bake_keys_values(
        handle,
        [range(V + k * pmax, V + k * pmax + n) for k, n in enumerate(LENGTHS)],
    )
    table = MultiTaskPromptTable.from_arrays(
        dict(zip("ab", arrays)), method="prefix", vocab_size=V
    )
    return task, handle, table


def _batch(seed=2):
    """Mixed tasks; a right-padded, a left-padded and a full row."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, V, (4, 6)).astype("int32")
    mask = np.ones_like(ids, bool)
    mask[1, 4:] = False
    mask[2, :3] = False
    task = np.array([0, 1, 1, 0])
    steps = np.arange(max(LENGTHS))[None]
    prompt_ids = V + task[:, None] * max(LENGTHS) + steps
    prompt_mask = steps < np.array(LENGTHS)[task][:, None]
    return {"token_ids": ids, "padding_mask": mask}, task, prompt_ids, prompt_mask


CASES = [
    ("gpt2", "embedding"),
    ("gemma", "embedding"),
    ("llama", "embedding"),
    ("gpt2", "prepend"),
    ("llama", "prefix"),
]


@pytest.mark.parametrize("kind,method", CASES)
def test_baked_keys_values_and_offsets_equal_the_prompt_run_in_the_sequence(
    kind, method
):
    task, handle, table = _prompted_multi_task(kind, method)
    inputs, row_task, prompt_ids, prompt_mask = _batch()
    offsets = np.array(baking.text_position_offsets(method, LENGTHS))[row_task]
    baked = {"keys_values": table.table, "position_offsets": offsets}
    want = handle.call(inputs, prompt_ids, prompt_mask).numpy()
    got = handle.call(inputs, prompt_ids, prompt_mask, **baked).numpy()
    valid = inputs["padding_mask"]
    np.testing.assert_allclose(got[valid], want[valid], atol=1e-5)
    if method == "embedding":  # one position off is wrong
        shifted = dict(baked, position_offsets=offsets + 1)
        off = handle.call(inputs, prompt_ids, prompt_mask, **shifted).numpy()
        assert np.abs(off[valid] - want[valid]).max() > 1e-4
    # Generation takes right-padded rows, with room to generate.
    room = np.arange(11)[None] < valid.sum(1)[:, None]
    ids = np.concatenate([inputs["token_ids"], inputs["token_ids"][:, :5]], 1)
    right = {"token_ids": ids * room, "padding_mask": room}
    unbaked_ids = handle.generate_step(right, None, prompt_ids, prompt_mask)
    baked_ids = handle.generate_step(right, None, prompt_ids, prompt_mask, **baked)
    for key in ("token_ids", "padding_mask"):
        np.testing.assert_array_equal(baked_ids[key], unbaked_ids[key])


def test_baked_generation_runs_the_text_positions_alone():
    task, handle, table = _prompted_multi_task("llama", "embedding")
    inputs = {
        "token_ids": np.array([[5, 6, 7, 0, 0]], "int32"),
        "padding_mask": np.array([[1, 1, 1, 0, 0]], bool),
    }
    lengths = []
    embedding = handle.backbone.token_embedding
    patched = embedding.call

    def counting(x, *args, **kwargs):
        if not kwargs.get("reverse"):  # embedding ids, not computing logits
            lengths.append(int(x.shape[1]))
        return patched(x, *args, **kwargs)

    object.__setattr__(embedding, "call", counting)
    try:
        handle.generate_step(inputs, None, prompt_ids=[[V, V + 1, V + 2]])
        unbaked, lengths[:] = list(lengths), []
        handle.generate_step(
            inputs,
            None,
            prompt_ids=[[V, V + 1, V + 2]],
            keys_values=table.table,
            position_offsets=[3],
        )
    finally:
        object.__setattr__(embedding, "call", patched)
    assert unbaked[0] == 3 + 5  # prefill over prompt + text
    assert lengths[0] == 5  # prefill over the text alone
    assert set(lengths[1:]) == {1}  # then one position per step


def test_where_baking_does_not_apply_the_reason_is_given():
    lm = build_task("gpt2")
    after_bos = hub.enable_prompt_tuning(lm, 2, offset=1)
    reason = baking.why_not_baked(lm, "embedding", 1)
    assert "offset=1" in reason and "BOS" in reason
    with pytest.raises(ValueError, match="cannot be baked: the prompt follows"):
        baking.bake_keys_values(after_bos, [[V, V + 1]])
    table = MultiTaskPromptTable.from_arrays(
        {"t": after_bos.prompt_values()}, offset=1, vocab_size=V
    )
    plan = bake_plan(lm, after_bos, table)
    assert not plan.baked and plan.info == {"baked": False, "reason": reason}
    assert "not a causal LM" in baking.why_not_baked(build_task("bert"), "prefix")
    windowed = build_task(
        "gemma",
        backbone=build_backbone(
            "gemma", use_sliding_window_attention=True, sliding_window_size=4
        ),
    )
    assert "sliding-window" in baking.why_not_baked(windowed, "embedding")
    assert baking.why_not_baked(lm, "embedding", 0) is None
    assert baking.why_not_baked(lm, "prefix") is None


def test_keys_values_of_the_wrong_shape_are_refused_naming_both():
    task = build_task("llama")
    handle = hub.enable_prompt_tuning(task, 2)
    ids = np.array([[5, 6]], "int32")
    with pytest.raises(ValueError, match=r"keys_values has shape \[2, 2, 4, 4, 4\]"):
        handle.call(
            {"token_ids": ids, "padding_mask": np.ones_like(ids)},
            keys_values=np.zeros((2, 2, 4, 4, 4), np.float32),  # 4 heads, not 2
        )
