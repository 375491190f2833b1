"""Prompt tuning for keras-hub models: one call on a Backbone or a Task.

- `enable_prompt_tuning(model, P, method=...)` (`enable`) adds the method's
  trainable weights (`table.PromptTable`), freezes the base and installs
  the hooks (`installation`); `disable_prompt_tuning(model)` takes them off
  again, exactly.
- `PromptTuning` (`handle`): the public handle: the prompt, artifacts,
  per-example prompts for multi-task serving, `generate_step`.

Underneath, one module per concept, imports running one way:

- `context`: the running call's state, read by the hooked layers;
- `inspection`: what the model offers (layers and dims), found once;
- `layer_hooks`: one hook per layer a prompt changes (the token embedding,
  position, segment and rotary embeddings, each self-attention), each
  asking the injection method (`tf_softprompt.methods`) what to compute;
- `calls`: the prompted calls (packing, the call's state, restoring the
  caller's layout) behind the backbone's `call` and a `CausalLM`'s
  `generate_step`, `generate`, `score` and `call_with_cache`;
- `model_classes`: the prompt-tuned model classes, which persist the
  prompt tuning in the model's config (`model.save()`,
  `keras.saving.load_model()`, `from_config`, `clone_model`);
- `baking`, `identity`, `model_parts`: baked keys/values, what a prompt
  must match to load, classifier heads and dropout.

The weights live in a small tracked layer attached to the backbone
(`backbone.prompt_tuning_table`), so they are in
`model.trainable_variables`, are updated by `fit`, and are saved by
`model.save`, `model.save_weights` and TF checkpoints. Loading a weights
file without a prompt (a base preset) into an enabled model leaves the
prompt as it is. No variable is added to a keras-hub layer, so
`from_preset` works before and after enabling.

Example:
```python
lm = keras_hub.models.GPT2CausalLM.from_preset("gpt2_base_en")
handle = tf_softprompt.hub.enable_prompt_tuning(lm, 20, method="prefix")
lm.compile(optimizer=keras.optimizers.Adam(1e-2))
lm.fit(texts, epochs=3)
lm.save("review.keras")  # keras.saving.load_model("review.keras") later
handle.save_prompt("review.prompt.npz", task="review")
tf_softprompt.hub.disable_prompt_tuning(lm)  # the base model again
```
"""

from tf_softprompt.hub.enable import (
    disable_prompt_tuning,
    enable_prompt_tuning,
    get_prompt_tuning,
)
from tf_softprompt.hub.handle import PromptTuning
from tf_softprompt.hub.identity import base_identity
from tf_softprompt.hub.inspection import (
    TESTED_KERAS_HUB_VERSIONS,
    PromptPathError,
    UnsupportedModelError,
    is_causal_lm,
    is_hub_model,
    transformer_layers,
)
from tf_softprompt.hub.model_parts import classifier_head, set_dropout
from tf_softprompt.hub.table import PromptTable

__all__ = [
    "PromptPathError",
    "PromptTable",
    "PromptTuning",
    "TESTED_KERAS_HUB_VERSIONS",
    "UnsupportedModelError",
    "base_identity",
    "classifier_head",
    "disable_prompt_tuning",
    "enable_prompt_tuning",
    "get_prompt_tuning",
    "is_causal_lm",
    "is_hub_model",
    "set_dropout",
    "transformer_layers",
]
