"""Package attributes imported on first use.

The command line imports `tf_softprompt`, `tf_softprompt.training` and
`tf_softprompt.export` to build its parser; their public names pull in
TensorFlow, so they are resolved only when first read.

Example:
```python
# in a package's __init__.py
__getattr__, __dir__ = lazy.attributes(__name__, {"Trainer": "trainer"})
```
"""

import importlib
import sys


def attributes(package, exports):
    """`(__getattr__, __dir__)` for `package`.

    Args:
        package: the package's `__name__`.
        exports: `{name: module}`: the submodule (relative to `package`)
            that defines each name, or `None` for a submodule itself.
    """

    def __getattr__(name):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = exports[name]
        if module is None:
            value = importlib.import_module(f"{package}.{name}")
        else:
            value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
