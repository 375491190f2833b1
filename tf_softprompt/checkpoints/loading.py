"""Loading a base model faithfully: keras-hub presets as keras-hub loads
them, Hugging Face checkpoint directories as their own implementation
computes them.

For a checkpoint directory, keras-hub's converter builds the backbone with
the arguments `settings.backbone_arguments` adds (or the class it names),
and the tokenizer follows `settings.tokenizer_settings`. Everything that
loads a base goes through here: the CLI (`train`, `eval`, `predict`,
`export`), the packaged MiniLM, `import-peft` and the Python API.

Example:
```python
classifier = load_classifier("all-MiniLM-L6-v2/", num_classes=2)  # mean pooling
preprocessor = load_classifier_preprocessor("all-MiniLM-L6-v2/", 64)
lm, lm_preprocessor = load_causal_lm("tiny-llama/", sequence_length=32)
```
"""

import os

import keras_hub

from tf_softprompt.checkpoints import keras_hub_fixes, settings
from tf_softprompt.classifier import PooledTextClassifier


def resolve(model):
    """A directory as an absolute path; a preset name as it is."""
    if os.path.isdir(os.fspath(model)):
        return os.path.abspath(os.fspath(model))
    return model


def checkpoint_of(model):
    """The `settings.Checkpoint` of a Hugging Face directory, else `None`."""
    model = resolve(model)
    if isinstance(model, str) and settings.is_checkpoint_dir(model):
        return settings.read(model)
    return None


def load_backbone(model, **kwargs):
    """The keras-hub backbone of a preset or a checkpoint directory.

    Args:
        model: a keras-hub preset name or directory, or a Hugging Face model
            directory.
        **kwargs: passed to the backbone's constructor (e.g. `dtype`).
    """
    checkpoint = checkpoint_of(model)
    if checkpoint is None:
        return keras_hub.models.Backbone.from_preset(resolve(model), **kwargs)
    from keras_hub.src.utils.preset_utils import get_preset_loader

    cls, arguments = settings.backbone_arguments(checkpoint)
    loader = get_preset_loader(checkpoint.path)
    cls = cls or loader.check_backbone_class()
    return loader.load_backbone(cls, True, **{**arguments, **kwargs})


def default_pooling(model):
    """The representation a classifier reads by default: the pooling a
    sentence-transformers checkpoint says, else the BERT pooler
    (`BertForSequenceClassification`'s, keras-hub's)."""
    checkpoint = checkpoint_of(model)
    if checkpoint is not None and checkpoint.pooling is not None:
        return checkpoint.pooling, checkpoint.normalize
    return "pooler", False


def load_classifier(model, num_classes, pooling=None, normalize=None, dropout=None):
    """A `PooledTextClassifier` over the model's backbone, no preprocessor.

    Args:
        model: preset name or directory.
        num_classes: int.
        pooling: a `classifier.MODES` name, or `None` for `default_pooling`.
        normalize: bool, or `None` for the checkpoint's.
        dropout: the head's dropout; `None` keeps 0.1 (keras-hub's BERT).
    """
    default, default_normalize = default_pooling(model)
    kwargs = {} if dropout is None else {"dropout": dropout}
    return PooledTextClassifier(
        load_backbone(model),
        num_classes,
        pooling=pooling or default,
        normalize=default_normalize if normalize is None else normalize,
        preprocessor=None,
        **kwargs,
    )


def load_classifier_preprocessor(model, sequence_length):
    """The model's `TextClassifierPreprocessor`, cutting texts to
    `sequence_length` tokens (specials included)."""
    checkpoint = checkpoint_of(model)
    if checkpoint is None or checkpoint.model_type != "bert":
        return keras_hub.models.TextClassifierPreprocessor.from_preset(
            resolve(model), sequence_length=sequence_length
        )
    tokenizer = keras_hub_fixes.BertTokenizer(
        vocabulary=os.path.join(checkpoint.path, "vocab.txt"),
        **settings.tokenizer_settings(checkpoint),
    )
    return keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=sequence_length
    )


def load_causal_lm_preprocessor(model, sequence_length):
    """The model's `CausalLMPreprocessor`; a checkpoint whose tokenizer adds
    no start token gets none, for generation too."""
    checkpoint = checkpoint_of(model)
    if checkpoint is not None and checkpoint.model_type == "llama":
        from keras_hub.src.utils.preset_utils import get_preset_loader

        tokenizer = get_preset_loader(checkpoint.path).load_tokenizer(
            keras_hub_fixes.Llama3Tokenizer
        )
        preprocessor = keras_hub.models.Llama3CausalLMPreprocessor(
            tokenizer, sequence_length=sequence_length
        )
    else:
        preprocessor = keras_hub.models.CausalLMPreprocessor.from_preset(
            resolve(model), sequence_length=sequence_length
        )
    if checkpoint is not None:
        if not settings.tokenizer_settings(checkpoint).get("add_start_token", True):
            keras_hub_fixes.without_start_token(preprocessor)
    return preprocessor


def causal_lm_class(backbone):
    """The keras-hub `CausalLM` class made for a backbone's class."""
    candidates = []
    pending = [keras_hub.models.CausalLM]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if getattr(cls, "backbone_cls", None) is type(backbone):
            candidates.append(cls)
    own = [c for c in candidates if getattr(c, "tf_softprompt_base", None) is None]
    if not own:
        raise settings.CheckpointError(
            f"keras-hub has no CausalLM for `{type(backbone).__name__}`; pass a "
            "GPT-2, Llama or Gemma model."
        )
    return own[0]


def load_causal_lm(model, sequence_length, preprocessor=None):
    """`(causal_lm, preprocessor)` of a preset or checkpoint directory.

    Args:
        model: preset name or directory.
        sequence_length: the preprocessor's sequence length.
        preprocessor: a preprocessor to use instead of the model's.
    """
    preprocessor = preprocessor or load_causal_lm_preprocessor(model, sequence_length)
    if checkpoint_of(model) is None:
        lm = keras_hub.models.CausalLM.from_preset(
            resolve(model), preprocessor=preprocessor
        )
        return lm, preprocessor
    backbone = load_backbone(model)
    lm = causal_lm_class(backbone)(backbone=backbone, preprocessor=preprocessor)
    return lm, preprocessor


__all__ = [
    "causal_lm_class",
    "checkpoint_of",
    "default_pooling",
    "load_backbone",
    "load_causal_lm",
    "load_causal_lm_preprocessor",
    "load_classifier",
    "load_classifier_preprocessor",
    "resolve",
]
