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
    """A tiny random backbone; `overrides` replace any constructor argument."""
    keras.utils.set_random_seed(seed)
    common = dict(vocabulary_size=V, num_layers=num_layers, intermediate_dim=32)
    if kind == "gpt2":
        cls = keras_hub.models.GPT2Backbone
        args = dict(num_heads=2, hidden_dim=H, max_sequence_length=32)
    elif kind == "gemma":
        cls = keras_hub.models.GemmaBackbone
        args = dict(num_query_heads=2, num_key_value_heads=1, hidden_dim=H, head_dim=8)
    elif kind == "llama":
        cls = keras_hub.models.LlamaBackbone
        args = dict(num_query_heads=4, num_key_value_heads=2, hidden_dim=H)
    elif kind == "bert":
        cls = keras_hub.models.BertBackbone
        args = dict(num_heads=2, hidden_dim=H, max_sequence_length=32)
    else:
        raise ValueError(kind)
    return cls(**{**common, **args, **overrides})


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


def _basic_tokens(text):
    import re

    return re.findall(r"\w+|[^\w\s]", text.lower())


def save_tiny_bert_preset(directory, texts, *, seed=0, sequence_length=64):
    """Write a tiny random BERT preset (2 layers, H=16) for fast tests.

    The WordPiece vocabulary is every lower-cased word and punctuation mark
    of `texts` plus BERT's special tokens, so these texts tokenise without
    `[UNK]`. The backbone has no dropout, so runs are exactly reproducible.

    Returns:
        `directory` (a str), loadable with `TextClassifier.from_preset`.
    """
    import os
    import shutil
    import tempfile

    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocabulary += sorted({token for text in texts for token in _basic_tokens(text)})
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary),
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=sequence_length + 32,
        dropout=0.0,
    )
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer=tokenizer, sequence_length=sequence_length
    )
    directory = os.fspath(directory)
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-preset-")
    backbone.save_to_preset(tmp)
    preprocessor.save_to_preset(tmp)
    try:
        os.replace(tmp, directory)
    except OSError:  # another process wrote the same seeded preset first
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def embedded_texts():
    """Every text of the embedded sentiment dataset (train and test)."""
    from tf_softprompt import data

    return [
        t for path in data.default_dataset() for t in data.read_examples(path).texts
    ]
