"""`method="past_prefix"` on tiny random keras-hub causal LMs.

The reference never goes through the adapter: keras-hub's own cached
forward (`CausalLM.call_with_cache`) of the same seeded, unpatched model,
with the prefix written into the first P cache slots and the text fed at
`cache_update_index = P`. That is what Hugging Face's `past_key_values`
mean (and what PEFT's prefix tuning runs): the text attends to the prefix
and runs at positions P..P+T-1 (GPT-2's learned rows; RoPE angles for
Gemma and Llama, whose cached prefix keys are used as they are).
"""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from tiny_models import CAUSAL_KINDS, V, build_task

from tf_softprompt import hub, initializers
from tf_softprompt.hub import inspection

P, T = 3, 5


# (kv heads, head_dim) of the tiny models (`tiny_models.build_backbone`).
KV_SHAPES = {"gpt2": (2, 8), "gemma": (1, 8), "llama": (2, 4)}


def _prefix(kind, num_tokens, seed):
    rng = np.random.default_rng(seed)
    shape = (2, 2, num_tokens, *KV_SHAPES[kind])  # two layers
    return rng.normal(0, 1, shape).astype(np.float32)


def cache_reference(kind, prefix, token_ids):
    """Logits of `token_ids` `[B, T]` after `prefix` as past keys/values."""
    task = build_task(kind, seed=0)
    batch, length = token_ids.shape
    num_layers, _, num_tokens, heads, head_dim = prefix.shape
    cache = np.zeros(
        (batch, num_layers, 2, num_tokens + length, heads, head_dim), np.float32
    )
    cache[:, :, :, :num_tokens] = prefix[None]
    logits, _, _ = task.call_with_cache(
        tf.constant(token_ids), tf.constant(cache), num_tokens
    )
    return logits.numpy()


@pytest.fixture(scope="module", params=CAUSAL_KINDS)
def prefixed(request):
    kind = request.param
    task = build_task(kind, seed=0)
    prefix = _prefix(kind, P, seed=1)
    handle = hub.enable_prompt_tuning(
        task, P, method="past_prefix", initializer=initializers.from_array(prefix)
    )
    return kind, task, handle, prefix


def test_logits_equal_keras_hub_cache_with_the_prefix(prefixed):
    kind, task, _, prefix = prefixed
    token_ids = np.random.default_rng(2).integers(1, V, (2, T)).astype(np.int32)
    got = task({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)})
    want = cache_reference(kind, prefix, token_ids)
    np.testing.assert_allclose(got.numpy(), want, atol=2e-5)
    # The positions matter: the same prefix with the text at 0.. differs.
    plain = build_task(kind, seed=0)
    hub.enable_prompt_tuning(
        plain, P, method="prefix", initializer=initializers.from_array(prefix)
    )
    other = plain({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)})
    assert np.abs(other.numpy() - want).max() > 1e-3


def test_shorter_prefix_per_example_starts_its_text_earlier(prefixed):
    kind, _, handle, prefix = prefixed
    token_ids = np.random.default_rng(3).integers(1, V, (2, T)).astype(np.int32)
    # Example 0 uses rows 0..2; example 1 rows 0..1 (its third row masked).
    prompt_ids = np.array([[V, V + 1, V + 2], [V, V + 1, V]], np.int32)
    prompt_mask = np.array([[True, True, True], [True, True, False]])
    got = handle.call(
        {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)},
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
    ).numpy()
    np.testing.assert_allclose(
        got[:1], cache_reference(kind, prefix, token_ids[:1]), atol=2e-5
    )
    np.testing.assert_allclose(
        got[1:], cache_reference(kind, prefix[:, :, :2], token_ids[1:]), atol=2e-5
    )


def test_greedy_generation_follows_the_cache_reference(prefixed):
    kind, task, handle, prefix = prefixed
    length, prompt = 9, [5, 17, 42]
    token_ids = np.zeros((1, length), np.int32)
    token_ids[0, : len(prompt)] = prompt
    padding_mask = (token_ids != 0).astype(np.int32)
    task.compile(sampler="greedy")
    got = task.generate_step({"token_ids": token_ids, "padding_mask": padding_mask})
    want = list(prompt)
    while len(want) < length:
        logits = cache_reference(kind, prefix, np.array([want], np.int32))
        want.append(int(np.argmax(logits[0, -1])))
    assert got["token_ids"].numpy()[0].tolist() == want


def test_prefix_positions_count_against_the_position_limit():
    task = build_task("gpt2", seed=0)  # max_sequence_length=32
    hub.enable_prompt_tuning(task, P, method="past_prefix")
    token_ids = np.ones((1, 32 - P + 1), np.int32)
    with pytest.raises(ValueError, match=r"33 positions long.*at most 29"):
        task({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)})


def test_refused_without_a_position_layer_to_shift(monkeypatch):
    task = build_task("llama", seed=0)
    real = inspection.inspect
    monkeypatch.setattr(
        inspection,
        "inspect",
        lambda model: dataclasses.replace(real(model), rotary=()),
    )
    with pytest.raises(hub.UnsupportedModelError, match="past_prefix.*RotaryEmb"):
        hub.enable_prompt_tuning(task, P, method="past_prefix")
