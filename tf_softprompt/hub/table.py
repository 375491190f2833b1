"""The trained prompt of a keras-hub model, as a tracked Keras 3 layer."""

import keras
import numpy as np
import tensorflow as tf

from tf_softprompt import attention_ops, initializers, methods
from tf_softprompt.methods.prefix import Reparameterization


class PromptTable(keras.layers.Layer):
    """The trained values of one injection method, as a tracked layer.

    It only owns the weights; the computation lives in the method
    (`tf_softprompt.methods`) and the hooks. It never holds a base weight,
    so making it trainable cannot unfreeze the base model. It follows the
    model's dtype policy (pass the backbone's as `dtype`): its weights take
    the policy's variable dtype (float32 under `mixed_bfloat16` and
    `mixed_float16`), and `values()` is cast to the compute dtype where it
    is used.

    A weights file without this layer (a base preset) leaves the prompt
    unchanged when loaded: see `load_own_variables`.

    Args:
        shape: the method's array shape (`[P, H]`, or `[L, 2, P, kv, hd]`).
        method: the method's name, recorded in the artifact.
        offset: int, recorded in the artifact.
        prompt_initializer: `"uniform"` or a `tf_softprompt.initializers`
            initialiser (for the direct values).
        reparameterization: `None`, or a `methods.prefix.Reparameterization`
            (prefix only): train an embedding and an MLP whose output is the
            prefix.
        embedding_initializer: the reparameterisation's `[P, E]` embedding
            initialiser (default uniform).

    Example:
    ```python
    table = PromptTable((20, 384), method="embedding")
    table.values()  # the [20, 384] float32 prompt
    ```
    """

    def __init__(
        self,
        shape,
        method="embedding",
        offset=0,
        prompt_initializer="uniform",
        reparameterization=None,
        embedding_initializer="uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.shape = tuple(int(d) for d in shape)
        self.method = methods.get(method).name
        self.offset = int(offset)
        if isinstance(reparameterization, dict):
            reparameterization = Reparameterization(**reparameterization)
        if reparameterization is not None and not isinstance(
            methods.get(method), methods.PrefixMethod
        ):
            raise ValueError(
                "`reparameterization` is for a prefix method (Li and Liang's "
                f"MLP). Received it with method={self.method!r}."
            )
        self.reparameterization = reparameterization
        self.prompt_initializer = initializers.get(prompt_initializer)
        self.embedding_initializer = initializers.get(embedding_initializer)
        token_axis = methods.get(self.method).token_axis
        self.num_prompt_tokens = self.shape[token_axis]
        if reparameterization is None:
            self.prompt = self.add_weight(
                name="prompt",
                shape=self.shape,
                initializer=self.prompt_initializer,
                trainable=True,
            )
        else:
            self._add_reparameterization(reparameterization)
        self.built = True

    def _add_reparameterization(self, config):
        layers, two, tokens, heads, head_dim = self.shape
        width = config.embedding_dim or heads * head_dim  # enable() passes H
        outputs = layers * two * heads * head_dim
        glorot = keras.initializers.GlorotUniform(seed=0)
        self.reparameterization_weights = {
            "embedding": self.add_weight(
                name="reparameterization_embedding",
                shape=(tokens, width),
                initializer=self.embedding_initializer,
            ),
            "w1": self.add_weight(
                name="reparameterization_w1",
                shape=(width, config.hidden_dim),
                initializer=glorot,
            ),
            "b1": self.add_weight(
                name="reparameterization_b1",
                shape=(config.hidden_dim,),
                initializer="zeros",
            ),
            "w2": self.add_weight(
                name="reparameterization_w2",
                shape=(config.hidden_dim, outputs),
                initializer=glorot,
            ),
            "b2": self.add_weight(
                name="reparameterization_b2",
                shape=(outputs,),
                initializer="zeros",
            ),
        }

    def values(self):
        """The effective prompt tensor, of `shape` (the variable dtype)."""
        if self.reparameterization is None:
            return self.prompt.value if hasattr(self.prompt, "value") else self.prompt
        w = {
            k: tf.convert_to_tensor(v)
            for k, v in self.reparameterization_weights.items()
        }
        flat = attention_ops.mlp_reparameterization(
            w["embedding"], w["w1"], w["b1"], w["w2"], w["b2"]
        )
        layers, two, tokens, heads, head_dim = self.shape
        per_token = tf.reshape(flat, (tokens, layers, two, heads, head_dim))
        return tf.transpose(per_token, (1, 2, 0, 3, 4))

    def extra_arrays(self):
        """Arrays an artifact stores besides the values (to resume training)."""
        if self.reparameterization is None:
            return {}
        return {
            f"reparameterization/{k}": keras.ops.convert_to_numpy(v)
            for k, v in self.reparameterization_weights.items()
        }

    def assign_values(self, values, arrays=None):
        """Set the prompt from an array (and, reparameterised, its weights)."""
        values = np.asarray(values, np.float32)
        if tuple(values.shape) != self.shape:
            raise ValueError(
                f"The {self.method} prompt has shape {list(values.shape)} but the "
                f"model expects {list(self.shape)}. Both shapes must match."
            )
        if self.reparameterization is None:
            self.prompt.assign(values)
            return
        arrays = arrays or {}
        missing = [
            f"reparameterization/{k}"
            for k in self.reparameterization_weights
            if f"reparameterization/{k}" not in arrays
        ]
        if missing:
            raise ValueError(
                f"This model trains its prefix through an MLP "
                f"(reparameterization), but the prompt has no {missing}: it "
                "holds only the collapsed prefix. Enable prompt tuning without "
                "`reparameterization` to load it."
            )
        for k, variable in self.reparameterization_weights.items():
            value = arrays[f"reparameterization/{k}"]
            if tuple(value.shape) != tuple(variable.shape):
                raise ValueError(
                    f"The saved reparameterization/{k} has shape "
                    f"{list(value.shape)} but the model's is {list(variable.shape)}."
                )
            variable.assign(value)

    def load_own_variables(self, store):
        # A base model's weights file has no entry for the prompt; keep it.
        if store is None or len(store.keys()) == 0:
            return
        super().load_own_variables(store)

    def get_config(self):
        # The values come with the weights; a rebuilt table starts at zero
        # (initialisers that read the model or its vocabulary are not
        # rebuildable from a config).
        zeros = initializers.serialize(keras.initializers.Zeros())
        config = super().get_config()
        config.update(
            {
                "shape": list(self.shape),
                "method": self.method,
                "offset": self.offset,
                "prompt_initializer": zeros,
                "reparameterization": None
                if self.reparameterization is None
                else {
                    "hidden_dim": self.reparameterization.hidden_dim,
                    "embedding_dim": self.reparameterization.embedding_dim,
                },
                "embedding_initializer": zeros,
            }
        )
        return config
