"""The classes of prompt-tuned keras-hub models, persisted the Keras way.

Enabling prompt tuning gives the model (and its backbone) a subclass of its
own class, `prompt_tuned_class(type(model))`: `isinstance` holds, the
model's code is its own, and the subclass adds

- on a Backbone: `call` through the prompted call
  (`tf_softprompt.hub.calls.backbone_call`), and the prompt-tuning state in
  `get_config()` under `"prompt_tuning"` (versioned), which `from_config()`
  restores;
- on a `CausalLM`: `generate_step`, `generate`, `score` and
  `call_with_cache` through the prompted calls;
- on any Task: `from_config()` re-attaches the Task to its restored
  backbone.

Each class is registered with Keras under `"tf_softprompt>" + the base's
registered name` (e.g. `"tf_softprompt>keras_hub>GPT2CausalLM"`), so
`model.save()` / `keras.saving.load_model()`, `get_config()` /
`from_config()`, `keras.models.clone_model` and keras-hub presets bring the
prompt back, with its weights in the model's weights. The classes of every
model in `keras_hub.models` are registered when `tf_softprompt.hub` is
imported (`register_all`); load with it imported, as for any custom Keras
class.

`ModelClassHook` swaps a model's class and swaps it back (`disable`).

Example:
```python
cls = prompt_tuned_class(keras_hub.models.GPT2CausalLM, restore)
cls.__name__, issubclass(cls, keras_hub.models.GPT2CausalLM)  # GPT2CausalLM, True
```
"""

import keras
import keras_hub

from tf_softprompt.hub import calls

# The instance attribute that holds a model's `PromptTuning` (on the
# backbone, and on a Task attached to it).
HANDLE_ATTRIBUTE = "_tf_softprompt_handle"
CONFIG_KEY = "prompt_tuning"
PACKAGE = "tf_softprompt"


def prompt_tuning_of(model):
    """The `PromptTuning` of a prompt-tuned Backbone or Task, or `None`."""
    handle = model.__dict__.get(HANDLE_ATTRIBUTE)
    if handle is None:
        backbone = model.__dict__.get("_backbone") or getattr(model, "backbone", None)
        if backbone is not None and backbone is not model:
            handle = getattr(backbone, "__dict__", {}).get(HANDLE_ATTRIBUTE)
    return handle


class _PromptTunedModel:
    """What every prompt-tuned model class adds: its config round trip."""

    # Set per generated class: the keras-hub class it extends, and the
    # function that enables prompt tuning on a rebuilt model from its
    # `"prompt_tuning"` config (`tf_softprompt.hub.enable.restore`).
    tf_softprompt_base = None
    tf_softprompt_restore = None

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        prompt_config = config.pop(CONFIG_KEY, None)
        model = cls.tf_softprompt_base.from_config(config)
        cls.tf_softprompt_restore(model, prompt_config)
        return model


class _PromptTunedBackbone(_PromptTunedModel):
    def call(self, inputs, training=None, mask=None, **kwargs):
        handle = prompt_tuning_of(self)
        if handle is None:
            return super().call(inputs, training=training, mask=mask, **kwargs)
        return calls.backbone_call(
            handle, super().call, inputs, training=training, mask=mask, **kwargs
        )

    def get_config(self):
        config = super().get_config()
        handle = prompt_tuning_of(self)
        if handle is not None:
            config[CONFIG_KEY] = handle.get_config()
        return config


def _parent(model, name):
    """The keras-hub class's own `name` method, bound to `model`."""
    return getattr(super(type(model), model), name)


class _PromptTunedCausalLM(_PromptTunedModel):
    # Copied into each generated class only where its base has the method,
    # so these reach the base's own method through `_parent`.

    def generate_step(self, inputs, stop_token_ids=None):
        return calls.generate_step(
            prompt_tuning_of(self),
            _parent(self, "generate_step"),
            inputs,
            stop_token_ids,
        )

    def generate(self, inputs, *args, **kwargs):
        return calls.generate(
            prompt_tuning_of(self),
            self,
            _parent(self, "generate"),
            inputs,
            *args,
            **kwargs,
        )

    def score(self, token_ids, padding_mask=None, **kwargs):
        return calls.score(
            prompt_tuning_of(self),
            _parent(self, "score"),
            token_ids,
            padding_mask,
            **kwargs,
        )

    def call_with_cache(self, token_ids, cache, cache_update_index, **kwargs):
        return calls.call_with_cache(
            prompt_tuning_of(self),
            _parent(self, "call_with_cache"),
            token_ids,
            cache,
            cache_update_index,
            **kwargs,
        )


# Methods a CausalLM mixin overrides only where the base class has them.
_CAUSAL_LM_METHODS = ("generate_step", "generate", "score", "call_with_cache")

_CLASSES = {}


def _mixin(base):
    if issubclass(base, keras_hub.models.Backbone):
        return _PromptTunedBackbone
    if issubclass(base, keras_hub.models.CausalLM):
        return _PromptTunedCausalLM
    if issubclass(base, keras_hub.models.Task):
        return _PromptTunedModel
    raise TypeError(f"{base.__name__} is not a keras-hub Backbone or Task.")


def registered_name(base):
    """The Keras registered name of the prompt-tuned class of `base`."""
    return f"{PACKAGE}>{keras.saving.get_registered_name(base)}"


def prompt_tuned_class(base, restore):
    """The prompt-tuned subclass of a keras-hub Backbone or Task class.

    Made once per class and registered with Keras (`registered_name`).

    Args:
        base: a keras-hub Backbone or Task class (not itself prompt-tuned).
        restore: `(model, prompt_config) -> None`, enabling prompt tuning
            on a rebuilt model from its config (for a Task, `None`: attach
            to its backbone's).

    Returns:
        The class, named like `base`.
    """
    if getattr(base, "tf_softprompt_base", None) is not None:
        return base
    if base in _CLASSES:
        return _CLASSES[base]
    mixin = _mixin(base)
    namespace = {
        "tf_softprompt_base": base,
        "tf_softprompt_restore": staticmethod(restore),
        "__module__": __name__,
        "__qualname__": base.__qualname__,
        "__doc__": base.__doc__,
    }
    if issubclass(base, keras_hub.models.Task):
        # keras-hub's `Task.from_preset` picks, among the registered Task
        # subclasses with the preset's `backbone_cls`, the first of an
        # unordered set: a registered prompt-tuned class would sometimes be
        # picked for a plain `CausalLM.from_preset(...)`. Without a
        # `backbone_cls` it is never a candidate.
        namespace["backbone_cls"] = None
    if mixin is _PromptTunedCausalLM:
        # Only what the base class has (e.g. no `score` on some CausalLMs).
        bases = (_PromptTunedModel, base)
        for name in _CAUSAL_LM_METHODS:
            if hasattr(base, name):
                namespace[name] = mixin.__dict__[name]
    else:
        bases = (mixin, base)
    cls = type(base.__name__, bases, namespace)
    keras.saving.register_keras_serializable(
        package=PACKAGE, name=keras.saving.get_registered_name(base)
    )(cls)
    _CLASSES[base] = cls
    return cls


def register_all(restore):
    """Register the prompt-tuned class of every Backbone and Task class
    defined so far (keras-hub's, and tf-softprompt's own in
    `tf_softprompt.classifier` and `tf_softprompt.checkpoints`), so their
    saved models load in a fresh process."""
    pending = [keras_hub.models.Backbone, keras_hub.models.Task]
    seen = set()
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls in seen or getattr(cls, "tf_softprompt_base", None) is not None:
            continue
        seen.add(cls)
        if cls.__module__.startswith(("keras_hub.", "tf_softprompt.")):
            prompt_tuned_class(cls, restore)


class ModelClassHook:
    """Gives a Backbone or Task its prompt-tuned class, and takes it back.

    Args:
        model: the keras-hub model.
        restore: as in `prompt_tuned_class`.
    """

    def __init__(self, model, restore):
        self.model = model
        self.restore = restore
        self.original_class = None

    def install(self):
        self.original_class = type(self.model)
        self.model.__class__ = prompt_tuned_class(self.original_class, self.restore)

    def remove(self):
        if self.original_class is not None:
            self.model.__class__ = self.original_class
            self.original_class = None


__all__ = [
    "CONFIG_KEY",
    "HANDLE_ATTRIBUTE",
    "ModelClassHook",
    "prompt_tuned_class",
    "prompt_tuning_of",
    "register_all",
    "registered_name",
]
