"""A prompt-tuned keras-hub model is an ordinary Keras model.

`model.save()` + `keras.saving.load_model()`, `get_config()` /
`from_config()`, `save_weights()` / `load_weights()`,
`keras.models.clone_model` and Keras' own `model.export()` carry the prompt
for every family and method; `disable_prompt_tuning` gives the base back
bit for bit. Every comparison is against outputs computed before the round
trip, and each test first checks that the prompt moves the outputs by far
more than the tolerance (so a dropped prompt cannot pass).
"""

import json
import os

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from tiny_models import V, build_backbone, build_task, inputs_for, sequence

from tf_softprompt import hub

P = 3
# Every method each family supports (prepend needs absolute positions,
# past_prefix positions it can shift).
CASES = [
    ("gpt2", "embedding"),
    ("gpt2", "prepend"),
    ("gpt2", "prefix"),
    ("gpt2", "past_prefix"),
    ("gemma", "embedding"),
    ("gemma", "prefix"),
    ("gemma", "past_prefix"),
    ("llama", "embedding"),
    ("llama", "prefix"),
    ("llama", "past_prefix"),
    ("bert", "embedding"),
    ("bert", "prepend"),
    ("bert", "prefix"),
]
TOLERANCE = 1e-6


def batch(kind):
    rng = np.random.default_rng(7)
    ids = rng.integers(1, V, size=(2, 6)).astype("int32")
    mask = np.array([[1] * 6, [1] * 4 + [0] * 2], bool)
    return inputs_for(kind, ids, mask)


def outputs_of(model, inputs):
    """Everything the model computes, flattened per example: a classifier's
    logits with its backbone's sequence and pooled outputs (its random
    head's logits alone are too small to show a prompt)."""
    out = model(inputs)
    parts = [out]
    if isinstance(out, dict):
        parts = [out["sequence_output"], out["pooled_output"]]
    elif isinstance(model, keras_hub.models.TextClassifier):
        features = model.backbone(inputs)
        parts += [features["sequence_output"], features["pooled_output"]]
    return np.concatenate([np.asarray(p).reshape(2, -1) for p in parts], axis=1)


def tuned(kind, method, backbone_only=False, seed=0):
    """A tiny model with a random, non-trivial prompt."""
    model = build_backbone(kind, seed) if backbone_only else build_task(kind, seed)
    handle = hub.enable_prompt_tuning(model, P, method=method)
    rng = np.random.default_rng(seed + 1)
    values = rng.normal(scale=0.8, size=handle.table.shape).astype("float32")
    handle.assign_prompt(values)
    return model, handle


def assert_prompt_matters(kind, reference):
    """The prompt moves the outputs by far more than the tolerance."""
    plain = outputs_of(build_task(kind), batch(kind))
    assert np.max(np.abs(plain - reference)) > 1e3 * TOLERANCE


@pytest.mark.parametrize("kind,method", CASES)
def test_keras_file_round_trip_keeps_the_prompt(kind, method, tmp_path):
    model, handle = tuned(kind, method)
    handle.add_task("first", range(0, 2))
    want = outputs_of(model, batch(kind))
    assert_prompt_matters(kind, want)

    path = os.fspath(tmp_path / "tuned.keras")
    model.save(path)
    restored = keras.saving.load_model(path)

    assert isinstance(restored, type(model).tf_softprompt_base)
    again = hub.get_prompt_tuning(restored)
    assert again is not None and again.model is restored
    assert (again.method.name, again.num_prompt_tokens, again.offset) == (
        method,
        P,
        handle.offset,
    )
    assert again.tasks == {"first": (0, 1)}
    np.testing.assert_allclose(
        again.prompt_values(), handle.prompt_values(), atol=0, rtol=0
    )
    got = outputs_of(restored, batch(kind))
    np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)
    # Still trainable where it was: the prompt (and a classifier's head).
    names = {v.path for v in restored.trainable_variables}
    assert {v.path for v in again.table.trainable_variables} <= names
    assert not {v.path for v in restored.backbone.token_embedding.weights} & names


@pytest.mark.parametrize("kind,method", [("gpt2", "prefix"), ("bert", "embedding")])
def test_backbone_round_trips_through_keras_file_and_config(kind, method, tmp_path):
    backbone, handle = tuned(kind, method, backbone_only=True)
    want = sequence(backbone(batch(kind))).numpy()

    path = os.fspath(tmp_path / "backbone.keras")
    backbone.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(
        sequence(restored(batch(kind))).numpy(), want, atol=TOLERANCE, rtol=0
    )

    config = backbone.get_config()
    assert config["prompt_tuning"]["method"] == method
    assert config["prompt_tuning"]["version"] == 1
    json.dumps(config)  # JSON-able, as Keras writes it
    rebuilt = type(backbone).from_config(config)
    rebuilt.set_weights(backbone.get_weights())
    np.testing.assert_allclose(
        sequence(rebuilt(batch(kind))).numpy(), want, atol=TOLERANCE, rtol=0
    )


@pytest.mark.parametrize("kind,method", [("llama", "embedding"), ("gpt2", "prepend")])
def test_weights_files_keep_the_prompt(kind, method, tmp_path):
    model, handle = tuned(kind, method)
    want = outputs_of(model, batch(kind))

    path = os.fspath(tmp_path / "tuned.weights.h5")
    model.save_weights(path)
    other, _ = tuned(kind, method, seed=5)  # other base weights, other prompt
    assert np.max(np.abs(outputs_of(other, batch(kind)) - want)) > 1e-3
    other.load_weights(path)
    np.testing.assert_allclose(
        outputs_of(other, batch(kind)), want, atol=TOLERANCE, rtol=0
    )


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_clone_model_keeps_the_prompt_or_refuses(kind):
    """`keras.models.clone_model` rebuilds keras-hub models layer by layer
    into plain Functional models (for GPT-2 with a duplicated embedding, for
    Llama not at all). A BERT classifier's graph holds the backbone whole,
    which clones with its prompt; a causal LM's holds the hooked token
    embedding, which refuses rather than clone a model without the prompt."""
    model, _ = tuned(kind, "prefix")
    want = outputs_of(model, batch(kind))
    if kind == "gpt2":
        with pytest.raises(hub.PromptPathError, match="from_config.*set_weights"):
            keras.models.clone_model(model)
        return
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    (backbone,) = [
        layer for layer in clone.layers if hub.get_prompt_tuning(layer) is not None
    ]
    inputs = batch(kind)
    got = np.concatenate(
        [np.asarray(clone(inputs))]
        + [np.asarray(x).reshape(2, -1) for x in backbone(inputs).values()],
        axis=1,
    )
    np.testing.assert_allclose(np.sort(got), np.sort(want), atol=TOLERANCE, rtol=0)


def test_a_newer_config_version_is_refused():
    backbone, _ = tuned("gpt2", "prefix", backbone_only=True)
    config = backbone.get_config()
    config["prompt_tuning"]["version"] = 99
    with pytest.raises(ValueError, match="version=99.*versions 1 to 1"):
        type(backbone).from_config(config)


@pytest.mark.parametrize("kind,method", CASES)
def test_disable_gives_the_base_back_bit_for_bit(kind, method):
    model = build_task(kind)
    inputs = batch(kind)
    before = outputs_of(model, inputs)
    config = model.get_config()
    weights = [v.path for v in model.weights]
    trainable = [v.path for v in model.trainable_weights]
    classes = {id(layer): type(layer) for layer in model._flatten_layers()}

    handle = hub.enable_prompt_tuning(model, P, method=method)
    handle.assign_prompt(np.full(handle.table.shape, 0.7, "float32"))
    assert np.max(np.abs(outputs_of(model, inputs) - before)) > 1e-3
    hub.disable_prompt_tuning(model)

    assert hub.get_prompt_tuning(model) is None
    np.testing.assert_array_equal(outputs_of(model, inputs), before)
    assert model.get_config() == config
    assert [v.path for v in model.weights] == weights
    assert [v.path for v in model.trainable_weights] == trainable
    assert {id(layer): type(layer) for layer in model._flatten_layers()} == classes
    # And enabled again, anew.
    again = hub.enable_prompt_tuning(model, P + 1, method=method)
    assert again.num_prompt_tokens == P + 1
    with pytest.raises(ValueError, match="not enabled"):
        hub.disable_prompt_tuning(build_task(kind))


def test_keras_export_serves_the_prompt(tmp_path):
    """Keras' own `model.export()` of a prompt-tuned model, served by the
    TF1 session loader (TF Serving's path)."""
    from tf_softprompt.serving import loaders

    model, _ = tuned("gpt2", "prefix")
    inputs = batch("gpt2")
    want = outputs_of(model, inputs)
    path = os.fspath(tmp_path / "exported")
    model.export(path, verbose=False)
    backend = loaders.SessionLoaderBackend(path)
    served = backend.run(
        "serving_default",
        {k: np.asarray(v, "int32") for k, v in inputs.items()},
    )
    (got,) = served.values()
    np.testing.assert_allclose(got.reshape(2, -1), want, atol=1e-5, rtol=0)


def test_direct_call_with_cache_includes_every_method_or_refuses():
    """A hand-written decoding loop over `_build_cache`/`call_with_cache`
    (keras-hub's test_cache_correctness) gives `model(x)`'s logits."""
    for kind, method in [c for c in CASES if c[0] != "bert"]:
        model, _ = tuned(kind, method)
        token_ids = batch(kind)["token_ids"]
        want = model({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)})
        _, cache = model._build_cache(token_ids)
        got, _, _ = model.call_with_cache(token_ids, cache, 0)
        np.testing.assert_allclose(got, want, atol=1e-4, err_msg=f"{kind} {method}")
        # Decoding one position at a time through the cache.
        last, _, _ = model.call_with_cache(token_ids[:, -1:], cache, 5)
        np.testing.assert_allclose(last[:, 0], want[:, -1], atol=1e-4)

    offset_lm = build_task("gpt2")
    hub.enable_prompt_tuning(offset_lm, P, offset=1)
    token_ids = batch("gpt2")["token_ids"]
    with pytest.raises(hub.PromptPathError, match="offset=1"):
        offset_lm._build_cache(token_ids)


def test_a_task_not_attached_refuses_to_run_without_the_prompt():
    backbone = build_backbone("gpt2")
    hub.enable_prompt_tuning(backbone, P, method="embedding")
    lm = build_task("gpt2", backbone=backbone)  # built around it, not attached
    token_ids = batch("gpt2")["token_ids"]
    with pytest.raises(hub.PromptPathError, match="enable_prompt_tuning\\(task"):
        lm.score(token_ids)
    hub.enable_prompt_tuning(lm, P, method="embedding")  # attaches
    assert lm.score(token_ids).shape == (2, 6, V)


def test_score_intercept_sees_the_callers_layout():
    """`score(layer_intercept_fn=...)` gets `[B, T, H]` activations at the
    text positions, equal to the hard-token base's at the same positions,
    and what it returns replaces them."""
    model, handle = tuned("gpt2", "embedding")
    hard = np.array([11, 22, 33])
    handle.assign_prompt(tf.gather(handle.vocabulary, hard))
    token_ids = batch("gpt2")["token_ids"]
    mask = batch("gpt2")["padding_mask"]

    seen = {}

    def record(x, index):
        seen[index] = np.asarray(x)
        return x

    logits = model.score(token_ids, padding_mask=mask, layer_intercept_fn=record)
    base = build_task("gpt2")
    base_seen = {}

    def base_record(x, index):
        base_seen[index] = np.asarray(x)
        return x

    hard_ids = np.concatenate([np.tile(hard, (2, 1)), token_ids], axis=1)
    hard_mask = np.concatenate([np.ones((2, 3), bool), mask], axis=1)
    base_logits = base.score(
        hard_ids, padding_mask=hard_mask, layer_intercept_fn=base_record
    )
    assert sorted(seen) == sorted(base_seen) == [-1, 0, 1]
    for index in seen:
        assert seen[index].shape == (2, 6, 16)
        np.testing.assert_allclose(seen[index][0], base_seen[index][0, 3:], atol=1e-5)
    np.testing.assert_allclose(logits[0], base_logits[0, 3:], atol=1e-4)

    # What the callback returns is what the next layer gets.
    def zero_last_layer(x, index):
        return x * 0 if index == 1 else x

    zeroed = model.score(
        token_ids, padding_mask=mask, layer_intercept_fn=zero_last_layer
    )
    plain = model.score(token_ids, padding_mask=mask)
    assert np.max(np.abs(np.asarray(zeroed) - np.asarray(plain))) > 1e-2


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "bfloat16"])
def test_prompt_layer_follows_the_dtype_policy(policy):
    model = build_task("gpt2", dtype=policy)
    handle = hub.enable_prompt_tuning(model, P, method="prefix")
    policy = keras.DTypePolicy(policy)
    assert handle.table.compute_dtype == policy.compute_dtype
    assert handle.table.variable_dtype == policy.variable_dtype
    for weight in handle.table.weights:
        assert weight.dtype == policy.variable_dtype
    assert model.backbone(batch("gpt2")).dtype == policy.compute_dtype


def test_keras_hub_from_preset_never_picks_a_prompt_tuned_class(tmp_path):
    """`keras_hub.models.CausalLM.from_preset(...)` (and any Task's) picks
    among the registered subclasses with the preset's backbone class, the
    first of an unordered set: a registered prompt-tuned class must not be a
    candidate, or a plain load would sometimes give a prompt-tuned class
    without its prompt."""
    from keras_hub.src.utils.preset_utils import list_subclasses

    for kind in ("gpt2", "bert"):
        tuned(kind, "embedding")  # registered (as `tf_softprompt.hub` does)
    for task_cls, backbone_cls in (
        (keras_hub.models.CausalLM, keras_hub.models.GPT2Backbone),
        (keras_hub.models.TextClassifier, keras_hub.models.BertBackbone),
    ):
        candidates = [
            c for c in list_subclasses(task_cls) if c.backbone_cls is backbone_cls
        ]
        assert candidates and all(
            getattr(c, "tf_softprompt_base", None) is None for c in candidates
        ), candidates
    model = build_task("gpt2")
    model.save_to_preset(str(tmp_path / "preset"))
    loaded = keras_hub.models.CausalLM.from_preset(str(tmp_path / "preset"))
    assert type(loaded) is keras_hub.models.GPT2CausalLM
