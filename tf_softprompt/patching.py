"""Temporary instance attributes: how the adapter and `PrefixAttention`
route a frozen layer's method through a prompt without changing its class.

Example:
```python
with patched(attention, "_compute_attention", with_prefix):
    outputs = attention(query, value)  # this call only
```
"""

import contextlib


@contextlib.contextmanager
def patched(owner, attribute, replacement):
    """Set `owner.attribute = replacement` for the duration of a `with`.

    Bypasses Keras' attribute tracking, and restores what was there (an
    earlier instance attribute, or the class's method) even on error.

    Args:
        owner: any object, e.g. a Keras layer.
        attribute: str, the attribute's name.
        replacement: the temporary value.
    """
    had = attribute in owner.__dict__
    previous = owner.__dict__.get(attribute)
    object.__setattr__(owner, attribute, replacement)
    try:
        yield
    finally:
        if had:
            object.__setattr__(owner, attribute, previous)
        else:
            object.__delattr__(owner, attribute)
