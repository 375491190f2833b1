"""What a prompt must match to load into a keras-hub model: its dims and
the fingerprint of its frozen base.

Example:
```python
identity = base_identity(classifier, methods.get("prefix"))
identity["fingerprint"]  # "sha256:..." over every frozen weight
```
"""

from tf_softprompt.hub import inspection
from tf_softprompt.hub.enable import get_prompt_tuning


def base_identity(model, method):
    """What a prompt of `method` must match to load into `model`.

    Works on a model with or without prompt tuning enabled.

    Returns:
        dict with `dims` (`ModelDims`), `dims_metadata`, `fingerprint_key`,
        `fingerprint` and `vocab_size`.
    """
    handle = get_prompt_tuning(model)
    if handle is not None and handle.method is method:
        dims, fingerprint = handle.dims, handle.fingerprint
    else:
        structure = inspection.inspect(model)
        inspection.check_method(structure, method)
        dims = structure.dims
        exclude = handle.table.weights if handle is not None else ()
        fingerprint = method.fingerprint(
            inspection.frozen_base(structure.backbone, exclude)
        )
    return {
        "dims": dims,
        "dims_metadata": method.shape_metadata(dims),
        "fingerprint_key": method.fingerprint_key,
        "fingerprint": fingerprint,
        "vocab_size": dims.vocab_size,
    }


__all__ = ["base_identity"]
