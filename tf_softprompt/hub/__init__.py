"""Prompt tuning for keras-hub models: one call on a Backbone or a Task.

- `enable_prompt_tuning(model, P, method=...)` (`enable`): adds the
  method's trainable weights (`table.PromptTable`), freezes the base and
  patches the model's instances (`adapter`, the only module that touches
  keras-hub internals).
- `PromptTuning` (`handle`): the public handle: the prompt, artifacts,
  per-example prompts for multi-task serving, `generate_step`.
- The packing of rows is plain TensorFlow in `tf_softprompt.packing`, and
  each method's computation in `tf_softprompt.methods`.

What `enable_prompt_tuning` changes, all on the instances it is given:

1. `backbone.token_embedding.call`: ids are range-checked; for forms 1 and
   2 the virtual ids `[V, V + P)` read the trainable prompt. The reverse
   (logits) path is the original one, so logits cover the V real ids only
   and no sampler can emit a virtual id.
2. `backbone.call`: inputs are packed (valid positions first), forms 1 and
   2 insert the virtual ids after the first `offset` valid tokens of each
   row, the original functional graph runs, and prompt positions are
   removed from every sequence output before the rows are put back in the
   caller's layout. Packing makes left padding, right padding and mixed
   lengths give the per-example unpadded results, also for learned absolute
   positions (GPT-2, BERT).
3. For a `CausalLM`: `generate_step` and `score` get the same treatment;
   `call_with_cache` is left alone, as it embeds and attends through the
   patched layers.
4. `method="prepend"`: the position (and segment) embedding gives real
   tokens their unprompted positions and zero vectors at prompt slots, so
   the embedding sum at a slot is the prompt vector alone.
5. `method="prefix"`: each self-attention's `_compute_attention` gets the
   layer's keys and values prepended and its mask extended.

The weights live in a small tracked layer attached to the backbone
(`backbone.prompt_tuning_table`), so they are in
`model.trainable_variables`, are updated by `fit`, and are saved by
`model.save_weights` and TF checkpoints. Loading a weights file without a
prompt (a base preset) into an enabled model leaves the prompt as it is; a
plain model ignores the prompt in an enabled model's file. No variable is
added to a keras-hub layer, so `from_preset` works before and after
enabling.

Example:
```python
lm = keras_hub.models.GPT2CausalLM.from_preset("gpt2_base_en")
handle = tf_softprompt.hub.enable_prompt_tuning(lm, 20, method="prefix")
lm.compile(optimizer=keras.optimizers.Adam(1e-2))
lm.fit(texts, epochs=3)
lm.generate("The movie was", max_length=30)
handle.save_prompt("review.prompt.npz", task="review")
```
"""

from tf_softprompt.hub.adapter import (
    TESTED_KERAS_HUB_VERSIONS,
    UnsupportedModelError,
    base_identity,
    classifier_head,
    is_causal_lm,
    is_hub_model,
    set_dropout,
    transformer_layers,
)
from tf_softprompt.hub.enable import enable_prompt_tuning
from tf_softprompt.hub.handle import PromptTuning, get_prompt_tuning
from tf_softprompt.hub.table import PromptTable

__all__ = [
    "PromptTable",
    "PromptTuning",
    "TESTED_KERAS_HUB_VERSIONS",
    "UnsupportedModelError",
    "base_identity",
    "classifier_head",
    "enable_prompt_tuning",
    "get_prompt_tuning",
    "is_causal_lm",
    "is_hub_model",
    "set_dropout",
    "transformer_layers",
]
