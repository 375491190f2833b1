"""What `tf_softprompt.hub` refuses, and the untested-version warning."""

import keras
import keras_hub
import numpy as np
import pytest
from tiny_models import build_backbone

from tf_softprompt import hub


def test_a_non_tensorflow_backend_is_refused_naming_it(monkeypatch):
    monkeypatch.setattr(keras.config, "backend", lambda: "jax")
    with pytest.raises(hub.UnsupportedModelError) as info:
        hub.enable_prompt_tuning(build_backbone("gpt2"), 2)
    assert "'jax'" in str(info.value) and "KERAS_BACKEND=tensorflow" in str(info.value)
    assert "GPT2Backbone" in str(info.value)


@pytest.mark.parametrize("method", ["embedding", "prefix"])
def test_a_quantized_token_embedding_is_refused(method):
    backbone = build_backbone("gpt2")
    backbone.token_embedding.quantize("int8")
    assert backbone.token_embedding.quantization_mode == "int8"
    with pytest.raises(hub.UnsupportedModelError, match="quantized \\(int8\\)"):
        hub.enable_prompt_tuning(backbone, 2, method=method)


def test_an_untested_keras_hub_version_warns_and_still_works(monkeypatch):
    monkeypatch.setattr(keras_hub, "__version__", "0.99.1")
    backbone = build_backbone("gpt2")
    with pytest.warns(UserWarning, match="0.32.*0.99.1 is installed"):
        handle = hub.enable_prompt_tuning(backbone, 2)
    ids = np.array([[5, 6, 7]], "int32")
    out = backbone({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    assert out.shape == (1, 3, 16) and handle.num_prompt_tokens == 2


def test_the_installed_keras_hub_warns_nothing(recwarn):
    hub.enable_prompt_tuning(build_backbone("gpt2"), 2)
    assert not [w for w in recwarn if "tested with keras-hub" in str(w.message)]
