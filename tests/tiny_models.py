"""Tiny random keras-hub models shared by the tests (not a test module).

GPT2 (learned absolute positions), Gemma (RoPE, sqrt(H) scaling, grouped
kv heads), Llama (grouped-query attention, RoPE) and BERT (absolute
positions, segments, pooled [CLS]), built directly from small configs.
"""

import keras
import keras_hub
import numpy as np

V = 97
H = 16
KINDS = ("gpt2", "gemma", "llama", "bert")
CAUSAL_KINDS = ("gpt2", "gemma", "llama")


def build_backbone(kind, seed=0, num_layers=2, **overrides):
    keras.utils.set_random_seed(seed)
    common = dict(vocabulary_size=V, num_layers=num_layers, intermediate_dim=32)
    if kind == "gpt2":
        return keras_hub.models.GPT2Backbone(
            num_heads=2, hidden_dim=H, max_sequence_length=32, **common, **overrides
        )
    if kind == "gemma":
        return keras_hub.models.GemmaBackbone(
            num_query_heads=2,
            num_key_value_heads=1,
            hidden_dim=H,
            head_dim=8,
            **common,
            **overrides,
        )
    if kind == "llama":
        return keras_hub.models.LlamaBackbone(
            num_query_heads=4,
            num_key_value_heads=2,
            hidden_dim=H,
            **common,
            **overrides,
        )
    if kind == "bert":
        return keras_hub.models.BertBackbone(
            num_heads=2, hidden_dim=H, max_sequence_length=32, **common, **overrides
        )
    raise ValueError(kind)


def build_task(kind, seed=0, backbone=None, **overrides):
    backbone = backbone or build_backbone(kind, seed, **overrides)
    if kind == "bert":
        return keras_hub.models.BertTextClassifier(
            backbone=backbone, num_classes=2, preprocessor=None
        )
    task_class = {
        "gpt2": keras_hub.models.GPT2CausalLM,
        "gemma": keras_hub.models.GemmaCausalLM,
        "llama": keras_hub.models.LlamaCausalLM,
    }[kind]
    return task_class(backbone=backbone, preprocessor=None)


def inputs_for(kind, token_ids, padding_mask=None):
    token_ids = np.asarray(token_ids, "int32")
    if padding_mask is None:
        padding_mask = np.ones_like(token_ids)
    inputs = {"token_ids": token_ids, "padding_mask": np.asarray(padding_mask)}
    if kind == "bert":
        inputs["segment_ids"] = np.zeros_like(token_ids)
    return inputs


def sequence(outputs):
    return outputs["sequence_output"] if isinstance(outputs, dict) else outputs
