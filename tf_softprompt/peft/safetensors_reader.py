"""Reading a safetensors file with numpy alone (no PyTorch, no framework).

The format: an 8-byte little-endian header length, a JSON header naming
each tensor's dtype, shape and byte range, then the raw little-endian
data. BF16 tensors are widened to float32 bit by bit.

Example:
```python
tensors, dtypes, metadata = read_safetensors("adapter_model.safetensors")
```
"""

import json
import struct

import numpy as np

from tf_softprompt.peft.errors import PeftImportError

_FLOAT_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64}


def read_safetensors(path):
    """`({name: float32 array}, {name: dtype}, metadata)` of a safetensors file.

    Parsed directly (an 8-byte header length, a JSON header, the raw
    little-endian data), so BF16 tensors need no framework either.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])
    except (struct.error, ValueError) as e:
        raise PeftImportError(
            f"{path} is not a safetensors file ({e}). Save the adapter with "
            "`model.save_pretrained(dir)` (safe_serialization=True, the default)."
        ) from None
    body = data[8 + length :]
    metadata = header.pop("__metadata__", None) or {}
    tensors, dtypes = {}, {}
    for name, entry in header.items():
        dtype, shape = entry["dtype"], tuple(entry["shape"])
        start, end = entry["data_offsets"]
        raw = body[start:end]
        if dtype == "BF16":
            bits = np.frombuffer(raw, "<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif dtype in _FLOAT_DTYPES:
            array = np.frombuffer(raw, np.dtype(_FLOAT_DTYPES[dtype]).newbyteorder("<"))
        else:
            raise PeftImportError(
                f"{path}: tensor {name!r} has dtype {dtype}; a prompt adapter's "
                "tensors are floating point (F16, BF16, F32 or F64)."
            )
        tensors[name] = array.reshape(shape).astype(np.float32)
        dtypes[name] = dtype
    return tensors, dtypes, metadata


__all__ = ["read_safetensors"]
