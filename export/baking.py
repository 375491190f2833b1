"""Baked prompts for causal-LM exports: keys and values computed at export.

A causal LM whose prompt comes first (forms 1 and 2 at offset 0) or is a
prefix gives every request the same prompt keys and values in every
self-attention. The exporter computes them once per task
(`tf_softprompt.hub.baking.bake_keys_values`), pads them into one table
laid out like the prompt table (task k's rows `k * Pmax + j`, named by the
same ids `V + k * Pmax + j`, so each example's `task` selects and masks its
rows exactly as before), and serves that table: the served graph runs the
text alone, starting at position `P_k` (form 1) or 0 (form 2, prefix).

Where baking does not apply, the export stays unbaked and its info says
why: a prompt after the first `offset` tokens (e.g. after BOS), which the
request can change; or a model where it cannot be done (an encoder, an
unsupported attention, a sliding window).

Example:
```python
plan = bake_plan(lm, handle, table, bake=True)
plan.info  # {"baked": True, "reason": "...", "text_position_offsets": {...}}
keys_values = BakedKeysValues(plan.table.table)  # tracked by the archive
```
"""

import dataclasses

import keras

from tf_softprompt import methods
from tf_softprompt.export.prompt_table import MultiTaskPromptTable
from tf_softprompt.hub import baking


@dataclasses.dataclass(frozen=True)
class BakePlan:
    """Whether and how an export's prompts are baked.

    Attributes:
        table: a `MultiTaskPromptTable` of method "prefix" holding each
            task's baked keys/values `[L, 2, K * Pmax, kv_heads, head_dim]`
            (same tasks, lengths and ids as the prompt table), or `None`
            when not baked.
        position_offsets: tuple of ints, where each task's text starts.
        info: dict for the export info (`baked`, `reason`, and when baked
            `text_position_offsets` per task).
    """

    table: MultiTaskPromptTable
    position_offsets: tuple
    info: dict

    @property
    def baked(self):
        return self.table is not None


def bake_plan(model, handle, table, bake=True):
    """Bake `table`'s prompts for `model` where it applies.

    Args:
        model: the keras-hub CausalLM being exported.
        handle: its `PromptTuning` handle, holding `table`'s values.
        table: the export's `MultiTaskPromptTable`.
        bake: bool; False exports unbaked.

    Returns:
        A `BakePlan`.
    """
    method = methods.get(table.method)
    if not bake:
        return BakePlan(None, (), {"baked": False, "reason": "disabled (bake=False)"})
    reason = baking.why_not_baked(model, method, table.offset)
    if reason is not None:
        return BakePlan(None, (), {"baked": False, "reason": reason})
    pmax, vocab = table.max_length, table.vocab_size
    prompt_ids = [
        range(vocab + k * pmax, vocab + k * pmax + n)
        for k, n in enumerate(table.lengths)
    ]
    arrays = baking.bake_keys_values(handle, prompt_ids)
    baked = MultiTaskPromptTable.from_arrays(
        dict(zip(table.tasks, arrays)),
        method="prefix",
        vocab_size=vocab,
        fingerprint=table.fingerprint,
    )
    offsets = tuple(baking.text_position_offsets(method, table.lengths))
    if isinstance(method, methods.PrefixMethod):
        why = (
            "a prefix is keys and values already: served from its table as it "
            "is (no reparameterisation runs)"
        )
    else:
        why = (
            "the prompt comes first in a causal LM and attends only to itself, "
            "so its keys and values are the same for every request: computed "
            "at export, and the served graph runs the text alone, starting "
            "at the position after the prompt"
        )
    info = {
        "baked": True,
        "reason": why,
        "text_position_offsets": dict(zip(table.tasks, offsets)),
        "keys_values_shape": list(baked.table.shape),
    }
    return BakePlan(baked, offsets, info)


def check_positions(handle, plan, length):
    """Raise unless the baked text fits the model's positions."""
    if plan.baked:
        baking.check_positions(handle, max(plan.position_offsets), length)


class BakedKeysValues(keras.layers.Layer):
    """The baked keys/values table as a non-trainable float32 weight.

    Tracked by the export archive, so the values live in the SavedModel's
    variables, not as a graph constant.

    Args:
        values: float32 array `[L, 2, N, kv_heads, head_dim]`.
    """

    def __init__(self, values, **kwargs):
        super().__init__(**kwargs)
        self.keys_values = self.add_weight(
            name="keys_values",
            shape=tuple(values.shape),
            initializer="zeros",
            trainable=False,
            dtype="float32",
        )
        self.keys_values.assign(values)
        self.built = True

    def values(self):
        return self.keys_values.value


__all__ = ["BakePlan", "BakedKeysValues", "bake_plan", "check_positions"]
