"""Baked prompts: a causal LM's prompt keys and values, computed once.

In a causal LM whose prompt comes first (forms 1 and 2 at offset 0) the
prompt positions attend only to each other, so their keys and values in
every self-attention are the same for every request. Baking computes them
once per task: the task's virtual ids run alone through the frozen model
while each self-attention's keys (after RoPE) and values are recorded
(`PromptTuning.keys_values`, the same computation a direct
`call_with_cache` uses). A prefix (form 3) already is keys and values: its
rows are taken as they are (a reparameterised prefix's MLP output,
collapsed).

Served, the baked keys and values enter every self-attention in front of
the text, like a prefix (`PromptTuning.call(keys_values=...)`), and the text
starts at the position after the prompt (`position_offsets`): `P_k` for
form 1, whose prompt tokens took positions `0 .. P_k - 1`; 0 for form 2
(prompt vectors take no position) and for a prefix. The served sequence
holds the text alone, so no prompt position runs through the model.

Example:
```python
handle = hub.enable_prompt_tuning(lm, 20)  # ... trained
reason = why_not_baked(lm, handle.method, handle.offset)  # None: bakeable
(keys_values,) = bake_keys_values(handle, [handle.prompt_token_ids])
# keys_values: [L, 2, 20, kv_heads, head_dim]
handle.generate_step(
    inputs, keys_values=keys_values, position_offsets=[20] * batch
)
```
"""

import numpy as np

from tf_softprompt import methods
from tf_softprompt.hub import inspection


def why_not_baked(model, method, offset=0):
    """Why a prompt of `method` at `offset` cannot be baked for `model`.

    Baking needs a causal LM (a prompt in front of the text then attends
    only to itself), self-attention layers whose keys and values can be
    supplied (`_compute_attention`), no sliding window (it would hide the
    prompt from distant text positions, a prefix never), and a position
    mechanism whose positions can be shifted per example.

    Args:
        model: a keras-hub Backbone or Task.
        method: a method name or `InjectionMethod`.
        offset: int, where forms 1 and 2 put the prompt.

    Returns:
        `None` when baking applies, else a sentence saying why not (for the
        export info).
    """
    method = methods.get(method)
    if method.sequence_slots(1) and offset:
        return (
            f"the prompt follows the first {offset} token(s) of each request "
            f"(offset={offset}, e.g. after a BOS token), which the request can "
            "change, so its keys and values are not the same for every request"
        )
    if not inspection.is_causal_lm(model):
        return (
            f"`{type(model).__name__}` is not a causal LM: its prompt positions "
            "attend to the text, so their keys and values differ per request"
        )
    structure = inspection.inspect(model)
    if structure.attention_problem is not None:
        return structure.attention_problem
    if structure.sliding_window:
        return (
            "its sliding-window attention hides the prompt from text positions "
            "beyond the window, which keys and values in front never are"
        )
    if not structure.shiftable_positions:
        return (
            "it has neither a keras-hub PositionEmbedding nor RotaryEmbedding, "
            "so the text's positions cannot be started after the prompt"
        )
    return None


def text_position_offsets(method, lengths):
    """Where each task's text starts once its prompt is baked: `P_k` for a
    prompt that takes positions (form 1), else 0.

    Args:
        method: a method name or `InjectionMethod`.
        lengths: the tasks' prompt lengths `P_k`.

    Returns:
        list of ints, one per task.
    """
    method = methods.get(method)
    return [method.positions_before_text(n) for n in lengths]


def bake_keys_values(handle, prompt_ids):
    """Each prompt's keys and values in every self-attention, computed once.

    Args:
        handle: the `PromptTuning` handle of a causal LM (any method).
        prompt_ids: a list of prompts, each a sequence of virtual ids
            `V + r` naming table rows in order (one task's prompt; e.g.
            `range(V + k * pmax, V + k * pmax + p_k)`).

    Returns:
        list of float32 arrays `[L, 2, P_k, kv_heads, head_dim]`.

    Raises:
        ValueError: where baking does not apply (`why_not_baked`), or for
            ids outside `[V, V + P)`.
    """
    reason = why_not_baked(handle.model, handle.method, handle.offset)
    if reason is not None:
        raise ValueError(f"This prompt cannot be baked: {reason}.")
    values = None if handle.method.sequence_slots(1) else handle.prompt_values()
    baked = []
    for ids in prompt_ids:
        ids = np.asarray(ids, np.int32).reshape(-1)
        rows = ids - handle.vocab_size
        if not len(rows) or rows.min() < 0 or rows.max() >= handle.num_prompt_tokens:
            raise ValueError(
                f"Prompt ids must be virtual ids in [{handle.vocab_size}, "
                f"{handle.vocab_size + handle.num_prompt_tokens}), at least one. "
                f"Received: {ids.tolist()}."
            )
        if values is not None:
            baked.append(np.ascontiguousarray(values[:, :, rows], np.float32))
            continue
        baked.append(handle.keys_values(ids))
    return baked


def check_positions(handle, max_offset, length):
    """Raise unless text of `length` tokens starting at `max_offset` fits
    the model's absolute positions (GPT-2's `max_sequence_length`)."""
    limit = handle.structure.max_sequence_length
    if limit is not None and max_offset + length > limit:
        raise ValueError(
            f"Baked, the text starts at position {max_offset} and holds {length} "
            f"tokens, {max_offset + length} positions, but "
            f"`{type(handle.backbone).__name__}` has max_sequence_length={limit}. "
            f"Use a sequence_length of at most {limit}."
        )


__all__ = [
    "bake_keys_values",
    "check_positions",
    "text_position_offsets",
    "why_not_baked",
]
