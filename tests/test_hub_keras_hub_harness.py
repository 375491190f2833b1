"""keras-hub's own model test harness, run on prompt-tuned models.

`keras_hub.src.tests.test_case.TestCase` is the harness keras-hub's model
tests use (`run_backbone_test` with its serialization, variable-length,
`predict`, mixed-precision and quantization checks; `run_task_test` with
`predict` and `fit` through the preprocessor; `run_model_saving_test`).
Here every model it builds is prompt-tuned right after construction
(`prompt_tuned`), for each family with each method it supports, and the
harness runs unchanged.

keras-hub 0.32's installed `test_case.py` imports `grain` at module level
for its preprocessing checks, which these tests do not run; `grain` is not
a dependency of tf-softprompt, so an empty module stands in for it.
"""

import sys
import types

import keras_hub
import numpy as np
from absl.testing import parameterized
from tiny_causal_lms import word_preprocessor
from tiny_models import V, build_backbone

from tf_softprompt import hub
from tf_softprompt.hub import enable, model_classes

sys.modules.setdefault("grain", types.ModuleType("grain"))
from keras_hub.src.tests.test_case import TestCase  # noqa: E402

P = 3
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
NAMED = [(f"{kind}_{method}", kind, method) for kind, method in CASES]
# `run_task_test` (predict and fit through the preprocessor, about 10 s
# each): every family and every method at least once.
TASK_CASES = [
    ("gpt2", "prepend"),
    ("gpt2", "past_prefix"),
    ("gemma", "prefix"),
    ("llama", "embedding"),
    ("bert", "embedding"),
    ("bert", "prefix"),
]
TASKS = {
    "gpt2": keras_hub.models.GPT2CausalLM,
    "gemma": keras_hub.models.GemmaCausalLM,
    "llama": keras_hub.models.LlamaCausalLM,
    "bert": keras_hub.models.BertTextClassifier,
}
BERT_VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
    "the",
    "quick",
    "brown",
    "fox",
    "a",
    "film",
]


def prompt_tuned(base, method):
    """A stand-in for the class `base` whose instances are prompt-tuned.

    Calling it builds `base(...)` and enables prompt tuning; `isinstance`
    checks against it check against `base`, it carries `base`'s name (the
    harness compares model names with class names), and its other
    attributes (`from_config`, ...) are the prompt-tuned class's.
    """
    tuned_class = model_classes.prompt_tuned_class(base, enable.restore)

    class PromptTunedMeta(type):
        def __instancecheck__(cls, instance):
            return isinstance(instance, base)

        def __getattr__(cls, name):
            return getattr(tuned_class, name)

        def __call__(cls, *args, **kwargs):
            model = base(*args, **kwargs)
            hub.enable_prompt_tuning(model, P, method=method)
            return model

    return PromptTunedMeta(base.__name__, (), {})


def backbone_kwargs(kind):
    config = build_backbone(kind).get_config()
    for key in ("name", "trainable", "dtype"):
        config.pop(key, None)
    return config


def backbone_inputs(kind):
    ids = np.array([[5, 6, 7, 8, 0], [9, 10, 11, 0, 0]], "int32")
    inputs = {"token_ids": ids, "padding_mask": ids > 0}
    if kind == "bert":
        inputs["segment_ids"] = np.zeros_like(ids)
    return inputs


def task_kwargs(kind):
    backbone = TASKS[kind].backbone_cls(**backbone_kwargs(kind))
    if kind == "bert":
        tokenizer = keras_hub.models.BertTokenizer(vocabulary=BERT_VOCABULARY)
        preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
            tokenizer, sequence_length=8
        )
        return {"backbone": backbone, "preprocessor": preprocessor, "num_classes": 2}
    return {"backbone": backbone, "preprocessor": word_preprocessor(8)}


def train_data(kind):
    texts = ["the quick brown fox", "the film"]
    if kind == "bert":
        return (texts, np.array([1, 0]))
    return (texts,)


class PromptTunedKerasHubTest(TestCase):
    @parameterized.named_parameters(*NAMED)
    def test_backbone(self, kind, method):
        base = TASKS[kind].backbone_cls
        hidden = 16
        shape = (
            {"sequence_output": (2, 5, hidden), "pooled_output": (2, hidden)}
            if kind == "bert"
            else (2, 5, hidden)
        )
        self.run_backbone_test(
            cls=prompt_tuned(base, method),
            init_kwargs=backbone_kwargs(kind),
            input_data=backbone_inputs(kind),
            expected_output_shape=shape,
        )

    @parameterized.named_parameters(
        *[(f"{kind}_{method}", kind, method) for kind, method in TASK_CASES]
    )
    def test_task(self, kind, method):
        shape = (2, 2) if kind == "bert" else (2, 8, V)
        self.run_task_test(
            cls=prompt_tuned(TASKS[kind], method),
            init_kwargs=task_kwargs(kind),
            train_data=train_data(kind),
            expected_output_shape=shape,
        )

    @parameterized.named_parameters(*NAMED)
    def test_saved_model(self, kind, method):
        self.run_model_saving_test(
            cls=prompt_tuned(TASKS[kind].backbone_cls, method),
            init_kwargs=backbone_kwargs(kind),
            input_data=backbone_inputs(kind),
        )
