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

import json
import os

import keras
import keras_hub

from tf_softprompt.checkpoints import keras_hub_fixes, settings
from tf_softprompt.classifier import PooledTextClassifier

CAUSAL_LM_FAMILIES = ("gpt2", "llama", "gemma")


class PresetError(ValueError):
    """A preset that cannot be loaded (unknown, or no network to fetch it)."""


def resolve(model):
    """A directory as an absolute path; a preset name as it is.

    Raises:
        PresetError: for a path (it names a folder) that does not exist.
    """
    model = os.fspath(model)
    if os.path.isdir(model):
        return os.path.abspath(model)
    if os.sep in model or model.startswith("."):
        raise PresetError(
            f"The model directory {model!r} does not exist. Pass a keras-hub "
            "preset name, or an existing preset or Hugging Face checkpoint "
            "directory."
        )
    return model


def _reason(error):
    """The first line of the innermost cause of `error`, shortened."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def from_preset(load, model, **kwargs):
    """`load(preset, **kwargs)` (a keras-hub `from_preset`), with a preset
    name that cannot be fetched reported in one line.

    Raises:
        PresetError: naming the preset, why it failed (unknown name, no
            network) and how to pass a local directory instead.
    """
    model = resolve(model)
    if os.path.isdir(model):
        return load(model, **kwargs)
    try:
        return load(model, **kwargs)
    except Exception as e:  # keras-hub chains Kaggle/HF client errors
        raise PresetError(
            f"Could not load the preset {model!r} ({type(e).__name__}: "
            f"{_reason(e)}). Check the name, or, without network access, pass a "
            "local keras-hub preset or Hugging Face checkpoint directory as "
            "--model DIR."
        ) from e


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
        return from_preset(keras_hub.models.Backbone.from_preset, model, **kwargs)
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
        normalize: bool, or `None` for the checkpoint's when `pooling` is
            the checkpoint's own (a sentence-transformers `Normalize` belongs
            to its pooling, not to the BERT pooler or another choice).
        dropout: the head's dropout; `None` keeps 0.1 (keras-hub's BERT).
    """
    default, default_normalize = default_pooling(model)
    pooling = pooling or default
    if normalize is None:
        normalize = default_normalize and pooling == default
    kwargs = {} if dropout is None else {"dropout": dropout}
    return PooledTextClassifier(
        load_backbone(model),
        num_classes,
        pooling=pooling,
        normalize=normalize,
        preprocessor=None,
        **kwargs,
    )


def load_classifier_preprocessor(model, sequence_length):
    """The model's `TextClassifierPreprocessor`, cutting texts to
    `sequence_length` tokens (specials included)."""
    checkpoint = checkpoint_of(model)
    if checkpoint is None or checkpoint.model_type != "bert":
        return from_preset(
            keras_hub.models.TextClassifierPreprocessor.from_preset,
            model,
            sequence_length=sequence_length,
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
        preprocessor = from_preset(
            keras_hub.models.CausalLMPreprocessor.from_preset,
            model,
            sequence_length=sequence_length,
        )
    if checkpoint is not None:
        if not settings.tokenizer_settings(checkpoint).get("add_start_token", True):
            keras_hub_fixes.without_start_token(preprocessor)
    return preprocessor


def causal_lm_class(backbone):
    """The keras-hub `CausalLM` class made for a backbone's class."""
    own = _causal_lm_classes(type(backbone))
    if not own:
        raise settings.CheckpointError(
            f"keras-hub has no CausalLM for `{type(backbone).__name__}`; pass a "
            "GPT-2, Llama or Gemma model."
        )
    return own[0]


def check_causal_lm(model):
    """Refuse, before anything loads, a model `--task causal-lm` cannot
    tune: a Hugging Face checkpoint of another family (or missing a
    tokenizer file), or a keras-hub preset directory whose backbone has no
    `CausalLM`.

    Raises:
        CheckpointError: naming the directory, what it holds and the fix.
    """
    checkpoint = checkpoint_of(model)
    if checkpoint is not None:
        if checkpoint.model_type not in CAUSAL_LM_FAMILIES:
            raise settings.CheckpointError(
                f"{checkpoint.path} is a {checkpoint.model_type!r} checkpoint, not "
                "a causal LM: --task causal-lm takes GPT-2, Llama or Gemma. For a "
                "text classifier, drop --task causal-lm."
            )
        return
    path = resolve(model)
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        return  # a preset name: loading it reports what is wrong
    with open(config_path, encoding="utf-8") as f:
        registered = json.load(f).get("registered_name", "")
    backbone_cls = keras.saving.get_registered_object(registered)
    if backbone_cls is None or not _causal_lm_classes(backbone_cls):
        name = registered.split(">")[-1] or "an unknown class"
        raise settings.CheckpointError(
            f"{path} is a keras-hub preset of {name}, which has no CausalLM: "
            "--task causal-lm takes GPT-2, Llama or Gemma. For a text "
            "classifier, drop --task causal-lm."
        )


def _causal_lm_classes(backbone_cls):
    candidates = []
    pending = [keras_hub.models.CausalLM]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if getattr(cls, "backbone_cls", None) is backbone_cls:
            candidates.append(cls)
    return [c for c in candidates if getattr(c, "tf_softprompt_base", None) is None]


def load_causal_lm(model, sequence_length, preprocessor=None):
    """`(causal_lm, preprocessor)` of a preset or checkpoint directory.

    Args:
        model: preset name or directory.
        sequence_length: the preprocessor's sequence length.
        preprocessor: a preprocessor to use instead of the model's.
    """
    preprocessor = preprocessor or load_causal_lm_preprocessor(model, sequence_length)
    if checkpoint_of(model) is None:
        lm = from_preset(
            keras_hub.models.CausalLM.from_preset, model, preprocessor=preprocessor
        )
        return lm, preprocessor
    backbone = load_backbone(model)
    lm = causal_lm_class(backbone)(backbone=backbone, preprocessor=preprocessor)
    return lm, preprocessor


__all__ = [
    "CAUSAL_LM_FAMILIES",
    "PresetError",
    "causal_lm_class",
    "check_causal_lm",
    "checkpoint_of",
    "default_pooling",
    "from_preset",
    "load_backbone",
    "load_causal_lm",
    "load_causal_lm_preprocessor",
    "load_classifier",
    "load_classifier_preprocessor",
    "resolve",
]
