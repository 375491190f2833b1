"""What a Hugging Face checkpoint directory says, and how keras-hub is told.

`read(path)` reads `config.json`, `tokenizer_config.json` and, for a
sentence-transformers checkpoint, `modules.json` and the pooling module's
config. `backbone_arguments` and `tokenizer_settings` turn the settings
that change what the model computes into keras-hub arguments, or refuse a
setting keras-hub cannot express, naming it (`CheckpointError`).

Honoured, per family (`model_type`):

- `bert`: `hidden_act` (gelu, gelu_new, gelu_pytorch_tanh, relu),
  `layer_norm_eps`, `type_vocab_size`, `hidden_dropout_prob`; the tokenizer's
  `do_lower_case`, `strip_accents` (null follows `do_lower_case`),
  `tokenize_chinese_chars`, and transformers' text cleaning. Refused:
  `position_embedding_type` other than "absolute".
- `gpt2`: `activation_function` gelu_new and `layer_norm_epsilon` 1e-5 are
  what keras-hub's GPT-2 computes; other values, attention scaling by layer
  index, reordered attention upcasting and cross-attention are refused. No
  start token, as Hugging Face's GPT-2 tokenizer adds none.
- `llama`: `rms_norm_eps` (keras-hub's `layer_norm_epsilon`), `rope_theta`
  and "llama3" `rope_scaling` (keras-hub's converter reads them). Refused:
  `hidden_act` other than silu, other `rope_scaling` types, attention or
  MLP biases, a `head_dim` other than `hidden_size / num_attention_heads`.
- `gemma`: `hidden_activation` gelu_pytorch_tanh, `rms_norm_eps` 1e-6 and
  `rope_theta` 10000 are what keras-hub's Gemma computes; other values are
  refused.
- Any other `model_type` loads as keras-hub converts it, unchecked
  (`Checkpoint.checked` is False; the CLI says so).

Example:
```python
checkpoint = read("models/all-MiniLM-L6-v2")
cls, kwargs = backbone_arguments(checkpoint)  # keras_hub_fixes.BertBackbone, ...
checkpoint.pooling  # "mean": what sentence-transformers' modules.json says
```
"""

import dataclasses
import json
import os

from tf_softprompt.checkpoints import keras_hub_fixes

CONFIG_FILE = "config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHECKED_FAMILIES = ("bert", "gpt2", "llama", "gemma")
# The tokenizer files keras-hub's converters read, per family.
TOKENIZER_FILES = {
    "bert": ("vocab.txt",),
    "gpt2": ("vocab.json", "merges.txt"),
    "llama": ("tokenizer.json", TOKENIZER_CONFIG_FILE),
    "gemma": ("tokenizer.model",),
}
# sentence-transformers' pooling modes, as `--pooling` names them.
POOLING_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
}


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded faithfully (names the
    file or the setting, its value, and the way out)."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A Hugging Face checkpoint directory's settings.

    Attributes:
        path: the absolute directory.
        config: the `config.json` dict.
        tokenizer_config: the `tokenizer_config.json` dict (empty if none).
        pooling: the sentence-transformers pooling mode (`"mean"`, `"cls"`,
            `"max"`), or `None` for a plain transformers checkpoint.
        normalize: whether sentence-transformers normalises the pooled
            embedding (a `Normalize` module).
    """

    path: str
    config: dict
    tokenizer_config: dict
    pooling: str = None
    normalize: bool = False

    @property
    def model_type(self):
        return self.config.get("model_type")

    @property
    def checked(self):
        """Whether this family's settings are checked against the reference."""
        return self.model_type in CHECKED_FAMILIES

    def error(self, setting, value, why):
        return CheckpointError(
            f"{self.path}: {setting}={value!r} in {CONFIG_FILE} {why} "
            "tf-softprompt refuses to load it rather than compute something "
            "other than the checkpoint's own implementation."
        )


def _read_json(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); {what}.") from None
    if not isinstance(value, (dict, list)):
        raise CheckpointError(f"{path} must hold a JSON object; {what}.")
    return value


def is_checkpoint_dir(path):
    """Whether `path` is a Hugging Face model directory (a `config.json`
    with a `model_type`), as opposed to a keras-hub preset."""
    config = os.path.join(os.fspath(path), CONFIG_FILE)
    if not os.path.isfile(config):
        return False
    try:
        with open(config, encoding="utf-8") as f:
            return "model_type" in json.load(f)
    except (OSError, ValueError):
        return False


def _pooling(path):
    modules_path = os.path.join(path, "modules.json")
    if not os.path.isfile(modules_path):
        return None, False
    modules = _read_json(modules_path, "sentence-transformers' module list")
    pooling, normalize = None, False
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith(".Pooling"):
            config = _read_json(
                os.path.join(path, module.get("path", ""), CONFIG_FILE),
                "the pooling module's config",
            )
            modes = [name for key, name in POOLING_MODES.items() if config.get(key)]
            others = sorted(
                key
                for key, value in config.items()
                if key.startswith("pooling_mode") and value and key not in POOLING_MODES
            )
            if others or len(modes) != 1:
                raise CheckpointError(
                    f"{path}: the sentence-transformers pooling {modes + others} "
                    "is not one of mean, cls or max alone. Pass --pooling to "
                    "choose the classifier's representation."
                )
            pooling = modes[0]
        elif kind.endswith(".Normalize"):
            normalize = True
    return pooling, normalize


def read(path):
    """The `Checkpoint` of a Hugging Face model directory.

    Raises:
        CheckpointError: for a missing `config.json` or tokenizer file, or
            unreadable JSON, naming the file.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(os.path.join(path, CONFIG_FILE)):
        raise CheckpointError(
            f"{path} has no {CONFIG_FILE}; pass a Hugging Face model directory "
            "(config.json, model.safetensors, tokenizer files) or a keras-hub "
            "preset."
        )
    config = _read_json(os.path.join(path, CONFIG_FILE), "the model's config")
    tokenizer_config = {}
    if os.path.isfile(os.path.join(path, TOKENIZER_CONFIG_FILE)):
        tokenizer_config = _read_json(
            os.path.join(path, TOKENIZER_CONFIG_FILE), "the tokenizer's config"
        )
    for name in TOKENIZER_FILES.get(config.get("model_type"), ()):
        if not os.path.isfile(os.path.join(path, name)):
            raise CheckpointError(
                f"{path} has no {name}, which the {config.get('model_type')} "
                "tokenizer reads. Copy the tokenizer files from the model's "
                "repository into the directory."
            )
    if not any(name.endswith(".safetensors") for name in os.listdir(path)):
        raise CheckpointError(
            f"{path} has no model.safetensors (or shards); keras-hub reads "
            "safetensors weights only. Save the model with "
            "`save_pretrained(dir, safe_serialization=True)`."
        )
    pooling, normalize = _pooling(path)
    return Checkpoint(path, config, tokenizer_config, pooling, normalize)


def _check_equal(checkpoint, key, expected, why):
    value = checkpoint.config.get(key, expected)
    if value != expected:
        raise checkpoint.error(key, value, why)


def backbone_arguments(checkpoint):
    """`(backbone_class, kwargs)` that make keras-hub compute what the
    checkpoint's implementation computes: the class to build (`None`: the
    converter's own) and the arguments it takes beyond the converter's.

    Raises:
        CheckpointError: for a setting keras-hub cannot express.
    """
    config, kind = checkpoint.config, checkpoint.model_type
    if kind == "bert":
        position = config.get("position_embedding_type", "absolute")
        if position != "absolute":
            raise checkpoint.error(
                "position_embedding_type",
                position,
                "is not supported: keras-hub's BERT has absolute positions only.",
            )
        activation = config.get("hidden_act", "gelu")
        if activation not in keras_hub_fixes.ACTIVATIONS:
            raise checkpoint.error(
                "hidden_act",
                activation,
                f"is not one of {sorted(keras_hub_fixes.ACTIVATIONS)}.",
            )
        return keras_hub_fixes.BertBackbone, {
            "hidden_activation": activation,
            "layer_norm_epsilon": float(config.get("layer_norm_eps", 1e-12)),
            "num_segments": int(config.get("type_vocab_size", 2)),
            "dropout": float(config.get("hidden_dropout_prob", 0.1)),
        }
    if kind == "gpt2":
        fixed = "is fixed in keras-hub's GPT2Backbone to"
        _check_equal(
            checkpoint, "activation_function", "gelu_new", f"{fixed} gelu_new."
        )
        _check_equal(checkpoint, "layer_norm_epsilon", 1e-5, f"{fixed} 1e-5.")
        _check_equal(checkpoint, "scale_attn_weights", True, "is not supported.")
        for key in (
            "scale_attn_by_inverse_layer_idx",
            "reorder_and_upcast_attn",
            "add_cross_attention",
        ):
            _check_equal(checkpoint, key, False, "is not supported.")
        inner = config.get("n_inner")
        if inner is not None and inner != 4 * config.get("n_embd", 0):
            raise checkpoint.error(
                "n_inner", inner, "is fixed to 4 * n_embd in keras-hub."
            )
        return None, {}
    if kind == "llama":
        _check_equal(checkpoint, "hidden_act", "silu", "is not supported (silu only).")
        for key in ("attention_bias", "mlp_bias"):
            _check_equal(
                checkpoint, key, False, "is not supported by keras-hub's Llama."
            )
        scaling = config.get("rope_scaling")
        if (
            scaling is not None
            and scaling.get("rope_type", scaling.get("type")) != "llama3"
        ):
            raise checkpoint.error(
                "rope_scaling", scaling, "is not supported (llama3 scaling only)."
            )
        heads = config.get("num_attention_heads")
        head_dim = config.get("head_dim")
        if (
            head_dim is not None
            and heads
            and head_dim * heads != config.get("hidden_size")
        ):
            raise checkpoint.error(
                "head_dim", head_dim, "must be hidden_size / num_attention_heads."
            )
        return None, {"layer_norm_epsilon": float(config.get("rms_norm_eps", 1e-6))}
    if kind == "gemma":
        fixed = "is fixed in keras-hub's Gemma to"
        activation = config.get("hidden_activation") or "gelu_pytorch_tanh"
        if activation != "gelu_pytorch_tanh":
            raise checkpoint.error(
                "hidden_activation", activation, f"{fixed} gelu_pytorch_tanh."
            )
        _check_equal(checkpoint, "rms_norm_eps", 1e-6, f"{fixed} 1e-6.")
        _check_equal(checkpoint, "rope_theta", 10000.0, f"{fixed} 10000.")
        return None, {}
    return None, {}


def tokenizer_settings(checkpoint):
    """What the tokenizer must do beyond keras-hub's converter, as a dict:
    for BERT `lowercase`, `strip_accents`, `split_on_cjk`; for causal LMs
    `add_start_token` (whether the reference tokenizer adds a BOS)."""
    kind, config = checkpoint.model_type, checkpoint.tokenizer_config
    if kind == "bert":
        lowercase = bool(config.get("do_lower_case", True))
        strip = config.get("strip_accents")
        return {
            "lowercase": lowercase,
            "strip_accents": lowercase if strip is None else bool(strip),
            "split_on_cjk": bool(config.get("tokenize_chinese_chars", True)),
        }
    if kind == "gpt2":
        return {"add_start_token": bool(config.get("add_bos_token", False))}
    if kind in ("llama", "gemma"):
        return {"add_start_token": bool(config.get("add_bos_token", True))}
    return {}


__all__ = [
    "CHECKED_FAMILIES",
    "Checkpoint",
    "CheckpointError",
    "backbone_arguments",
    "is_checkpoint_dir",
    "read",
    "tokenizer_settings",
]
