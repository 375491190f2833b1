"""Installing prompt tuning on a keras-hub model, and taking it off exactly.

`Installation` does everything `enable_prompt_tuning` changes on a model,
and records it so that `remove()` undoes it: the backbone's layers are
frozen (each layer's and variable's `trainable` flag is recorded first),
the prompt's `PromptTable` is tracked by the backbone, every layer a call
may change gets its hook (`layer_hooks`), and the backbone (and a Task
attached to it) gets its prompt-tuned class (`model_classes`). After
`remove()` the model's classes, layers, variables, flags and outputs are
those it had before.

Example:
```python
installation = Installation(handle, restore)
installation.install()
installation.remove()  # the base model, as it was
```
"""

from tf_softprompt.hub import layer_hooks
from tf_softprompt.hub.model_classes import HANDLE_ATTRIBUTE, ModelClassHook

TABLE_ATTRIBUTE = "prompt_tuning_table"


def reset_compiled_functions(model):
    """Drop functions traced before a change (they would bypass it)."""
    for name in ("train_function", "test_function", "predict_function"):
        if getattr(model, name, None) is not None:
            setattr(model, name, None)
    if getattr(model, "generate_function", None) is not None:
        model.generate_function = None


class Installation:
    """What prompt tuning changed on one model.

    Args:
        handle: the `PromptTuning` (its `structure`, `table`, `backbone`).
        restore: the function rebuilt models restore prompt tuning with
            (`tf_softprompt.hub.enable.restore`), kept by the model classes.
    """

    def __init__(self, handle, restore):
        self.handle = handle
        self.restore = restore
        self.hooks = []
        self.layer_flags = []
        self.variable_flags = []
        self.tasks = []

    def install(self):
        backbone = self.handle.backbone
        self._freeze(backbone)
        # Tracked by the backbone: in trainable_variables, weights files and
        # checkpoints, never inside the token embedding.
        setattr(backbone, TABLE_ATTRIBUTE, self.handle.table)
        object.__setattr__(backbone, HANDLE_ATTRIBUTE, self.handle)
        self.hooks = layer_hooks.hooks_for(self.handle, self.handle.structure)
        self.hooks.append(ModelClassHook(backbone, self.restore))
        for hook in self.hooks:
            hook.install()
        reset_compiled_functions(backbone)

    def attach_task(self, task):
        """Give a Task around the backbone its prompted methods."""
        if task in self.tasks:
            return
        hook = ModelClassHook(task, self.restore)
        hook.install()
        object.__setattr__(task, HANDLE_ATTRIBUTE, self.handle)
        self.hooks.append(hook)
        self.tasks.append(task)
        reset_compiled_functions(task)

    def remove(self):
        """Undo `install` and `attach_task`, in reverse order."""
        backbone = self.handle.backbone
        for hook in reversed(self.hooks):
            hook.remove()
        self.hooks = []
        for model in [*self.tasks, backbone]:
            if HANDLE_ATTRIBUTE in model.__dict__:
                object.__delattr__(model, HANDLE_ATTRIBUTE)
            reset_compiled_functions(model)
        self.tasks = []
        table = backbone.__dict__.get(TABLE_ATTRIBUTE)
        if table is not None:
            delattr(backbone, TABLE_ATTRIBUTE)
            backbone._layers[:] = [x for x in backbone._layers if x is not table]
        for layer, flag in self.layer_flags:
            layer._trainable = flag
        for variable, flag in self.variable_flags:
            variable.trainable = flag
        self.layer_flags, self.variable_flags = [], []

    def _freeze(self, backbone):
        """Freeze every layer of the backbone, keeping `backbone.trainable`
        (False would also freeze the prompt table, which it tracks)."""
        layers = backbone._flatten_layers(include_self=False)
        self.layer_flags = [(layer, layer.trainable) for layer in layers]
        self.variable_flags = [(v, v.trainable) for v in backbone.weights]
        for layer in layers:
            layer.trainable = False
        backbone.trainable = True


__all__ = ["TABLE_ATTRIBUTE", "Installation", "reset_compiled_functions"]
