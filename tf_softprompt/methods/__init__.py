"""Injection methods: the ways a soft prompt enters a frozen model.

keras-hub issue #889 names three, and each is one module here:

- `"embedding"` (`embedding`): `[P, H]` rows for virtual ids `>= V`; the
  prompt takes sequence slots and positions.
- `"prepend"` (`prepend`): `[P, H]` vectors that replace the position sum;
  slots, but no positions.
- `"prefix"` (`prefix`): per-layer keys and values
  `[L, 2, P, kv_heads, head_dim]`; no slots, and the text keeps its
  positions.
- `"past_prefix"` (`past_prefix`): the same keys and values, standing for P
  past positions as Hugging Face's `past_key_values` do (PEFT's
  PREFIX_TUNING): the text starts at position P.

A method is an `InjectionMethod` object (`base`): the shape of its trained
array, what identifies the frozen base it belongs to (its fingerprint), what
its artifacts record, and the TensorFlow computation at each point of a
model it changes. The keras-hub adapter (`tf_softprompt.hub`), the
training workflow, the artifact, the CLI and the exporter all go through
`get(name)`; a fourth method is one new module registered here.

Example:
```python
from tf_softprompt import methods
method = methods.get("prefix")
method.prompt_shape(dims, 20)  # (L, 2, 20, kv_heads, head_dim)
```
"""

from tf_softprompt import names
from tf_softprompt.methods.base import AttentionDims, InjectionMethod, ModelDims
from tf_softprompt.methods.embedding import EmbeddingMethod
from tf_softprompt.methods.past_prefix import PastPrefixMethod
from tf_softprompt.methods.prefix import PrefixMethod
from tf_softprompt.methods.prepend import PrependMethod

_REGISTRY = {
    m.name: m
    for m in (
        EmbeddingMethod(),
        PrependMethod(),
        PrefixMethod(),
        PastPrefixMethod(),
    )
}
NAMES = tuple(_REGISTRY)
assert NAMES == names.METHODS, (NAMES, names.METHODS)


def get(method):
    """The `InjectionMethod` for a name (or the object itself).

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if isinstance(method, InjectionMethod):
        return method
    if method not in _REGISTRY:
        raise ValueError(
            f"`method` must be one of {list(NAMES)}. Received: method={method!r}."
        )
    return _REGISTRY[method]


__all__ = [
    "NAMES",
    "AttentionDims",
    "EmbeddingMethod",
    "InjectionMethod",
    "ModelDims",
    "PastPrefixMethod",
    "PrefixMethod",
    "PrependMethod",
    "get",
]
