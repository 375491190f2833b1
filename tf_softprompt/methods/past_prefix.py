"""A prefix that stands for P past positions: the text starts at position P.

This is Hugging Face's `past_key_values` reading of prefix tuning, and
PEFT's PREFIX_TUNING layout: the per-layer keys and values are those of P
earlier positions of the sequence, so the text that follows them runs at
positions `P..P+T-1` (GPT-2 and BERT: learned position rows; Llama and
Gemma: RoPE angles), and the P positions count against the model's position
limit. Everything else is `method="prefix"` (`prefix.PrefixMethod`): the
trained array, the attention masks, the initialisers, multi-task tables.

Use it to reproduce a PEFT prefix adapter exactly (`tf_softprompt.peft`).
For new prompts `method="prefix"` is the better choice: real tokens keep the
positions they were pretrained with, and no position budget is spent.

Example:
```python
handle = hub.enable_prompt_tuning(lm, 20, method="past_prefix")
lm.generate("the film")  # the text runs at positions 20, 21, ...
```
"""

from tf_softprompt.methods.prefix import PrefixMethod


class PastPrefixMethod(PrefixMethod):
    """`method="past_prefix"`: prefix keys and values that take positions.

    Example:
    ```python
    handle = hub.enable_prompt_tuning(gpt2_lm, 10, method="past_prefix")
    handle.prompt.shape  # (num_layers, 2, 10, heads, head_dim)
    ```
    """

    name = "past_prefix"

    def positions_before_text(self, num_tokens):
        return int(num_tokens)

    def position_shift(self, num_tokens):
        return int(num_tokens)

    def missing_structure(self, structure):
        problem = super().missing_structure(structure)
        if problem is None and not structure.shiftable_positions:
            problem = (
                f"method={self.name!r} starts the text after the prefix's "
                "positions, but the backbone has neither a keras-hub "
                "PositionEmbedding nor RotaryEmbedding to shift. Use "
                "method='prefix'."
            )
        return problem
