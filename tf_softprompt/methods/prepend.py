"""Form 2: already-embedded vectors in front of the text.

The `[P, H]` prompt vectors take their slots in the sequence but not a
position: at a prompt slot the vector *replaces* the token + position
(+ segment) sum, and real tokens keep the positions they have without a
prompt. Needs a model with absolute position embeddings (GPT-2, BERT).

Reference:
 - [Li and Liang, 2021](https://arxiv.org/abs/2101.00190) (prompt vectors
   at the input; our form 3 is their method)
"""

import tensorflow as tf

from tf_softprompt.methods.embedding import EmbeddingMethod


class PrependMethod(EmbeddingMethod):
    """`method="prepend"`: prompt vectors that bypass the position sum.

    The slots are still addressed by virtual ids (so packing, multi-task
    tables and the exporter treat it like form 1); what differs is the
    embedding sum: the position embedding gives real tokens their
    unprompted positions and zero vectors at prompt slots (`slot_positions`,
    `mask_slots`), and so does a segment embedding, so the unchanged sum at
    a slot is the prompt vector alone.

    Example:
    ```python
    enable_prompt_tuning(gpt2_lm, 20, method="prepend")
    ```
    """

    name = "prepend"

    def positions_before_text(self, num_tokens):
        return 0

    def missing_structure(self, structure):
        if structure.position_embedding is None or not structure.sums_embeddings:
            return (
                f"method={self.name!r} needs absolute position embeddings "
                "(`position_embedding` and `embeddings_add`, as in GPT2 and "
                "BERT). Use method='embedding' or 'prefix'."
            )
        return None

    def slot_positions(self, layout, start_index, length):
        """`[B, N]` positions of `N` slots from `start_index`: real tokens
        keep their unprompted positions; and which are prompt slots."""
        index = tf.cast(start_index, tf.int32) + tf.range(length)
        return layout.unprompted_positions(index), layout.is_prompt(index)

    def mask_slots(self, embedded, is_prompt):
        """`embedded` (`[B, N, H]` or `[N, H]`) with zeros at prompt slots."""
        embedded = tf.convert_to_tensor(embedded)
        if embedded.shape.rank == 2:
            embedded = tf.broadcast_to(
                embedded[None],
                tf.concat([tf.shape(is_prompt)[:1], tf.shape(embedded)], 0),
            )
        return tf.where(is_prompt[..., None], tf.zeros_like(embedded), embedded)
