"""Form 1: an extended embedding matrix.

Virtual ids `[V, V + P)` look up a trainable `[P, H]` table; the V frozen rows
pass through `tf.stop_gradient` (`tf_softprompt.ops.prompt_lookup`). The
prompt rows are embedded like any token: they get positions, segment
embeddings and any scaling the model applies (Gemma's sqrt(H)).

Reference:
 - [Lester et al., 2021](https://arxiv.org/abs/2104.08691)
"""

from tf_softprompt import ops
from tf_softprompt.methods.base import InjectionMethod


class EmbeddingMethod(InjectionMethod):
    """`method="embedding"`: trainable rows for virtual ids.

    The prompt takes P sequence slots and P positions; only the embedding
    hook changes.

    Example:
    ```python
    method = tf_softprompt.methods.get("embedding")
    method.prompt_shape(ModelDims(vocab_size=97, hidden_dim=16), 4)  # (4, 16)
    ```
    """

    name = "embedding"

    def prompt_shape(self, dims, num_tokens):
        return (int(num_tokens), int(dims.hidden_dim))

    def shape_metadata(self, dims):
        return {"hidden_dim": int(dims.hidden_dim), "vocab_size": int(dims.vocab_size)}

    def embed(self, token_ids, vocabulary, prompt):
        """`[B, T, H]` embeddings; ids `>= V` read the prompt.

        Args:
            token_ids: int `[B, T]` in `[0, V + P)`.
            vocabulary: `[V, H]` frozen matrix.
            prompt: `[P, H]` prompt values.
        """
        return ops.prompt_lookup(token_ids, vocabulary, prompt)
