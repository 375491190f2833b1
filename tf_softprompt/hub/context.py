"""The state of the running prompted call, read by the hooked layers.

A prompt-tuned keras-hub model runs its frozen layers unchanged; what a
call adds (the prompt's values, which rows each example uses, where the
prompt slots are, precomputed keys and values, position offsets) is
published here for the duration of the call, and the hooked layers
(`tf_softprompt.hub.layer_hooks`) read it where they run. Nothing threads
through keras-hub's layer signatures.

The state is thread-local: `tf.distribute` runs each replica's step on its
own thread, and every replica opens its own call. Scopes nest and restore
what was there before, also when the call raises.

Example:
```python
with context.scope(CallState(tuning=handle, values=handle.table.values())):
    outputs = functional_call(inputs)  # the hooked layers see the state
```
"""

import contextlib
import dataclasses
import threading


@dataclasses.dataclass
class CallState:
    """What the running call of one prompt-tuned model selected.

    Attributes:
        tuning: the `PromptTuning` the call runs for. Hooked layers of
            another model ignore the state.
        values: the prompt's values for this call, computed once (a
            reparameterised prefix's MLP runs once per call, not once per
            layer).
        prompt_ids, prompt_mask: int/bool `[B, W]`: each example's prompt
            rows (`V + r`) and which are used; `None` for all P rows.
        layout: the `packing.Layout` of the running sequence (where each
            row's prompt slots are), when the sequence holds them.
        keys_values: precomputed `[L, 2, N, kv_heads, head_dim]` keys and
            values every self-attention reads in front of the text instead
            of the prompt (a baked prompt), or `None`.
        position_offsets: int `[B]`: each example's text starts at this
            position, or `None` for 0.
        recorded: `None`, or a list with one slot per self-attention layer
            that the attention hooks fill with `(key, value)` as they
            receive them (before anything is put in front).
        running: False while a request is only being passed down (e.g.
            `PromptTuning.call`'s per-example prompts, before the backbone
            runs); True once the model's layers run with this state.
        in_sequence: whether the running token ids carry the prompt's
            virtual ids (forms 1 and 2, unless `keys_values` stand in).
    """

    tuning: object
    values: object = None
    prompt_ids: object = None
    prompt_mask: object = None
    layout: object = None
    keys_values: object = None
    position_offsets: object = None
    recorded: list = None
    running: bool = False
    in_sequence: bool = False

    def replace(self, **changes):
        """A copy with `changes` (a nested call's state)."""
        return dataclasses.replace(self, **changes)


class _Local(threading.local):
    state = None


_local = _Local()


def current(tuning=None):
    """The running call's `CallState`, or `None` outside a prompted call.

    Args:
        tuning: when given, only a state of this `PromptTuning` counts (a
            hooked layer asks for its own model's call).
    """
    state = _local.state
    if state is not None and tuning is not None and state.tuning is not tuning:
        return None
    return state


@contextlib.contextmanager
def scope(state):
    """Publish `state` for the duration of a `with` block; restores the
    previous state on exit, also on error."""
    previous = _local.state
    _local.state = state
    try:
        yield state
    finally:
        _local.state = previous


__all__ = ["CallState", "current", "scope"]
