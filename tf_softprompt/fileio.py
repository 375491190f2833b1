"""Atomic file writes: a reader never sees a half-written file.

Example:
```python
atomic_write("metrics.json", lambda f: f.write(b"{}"))
```
"""

import os
import tempfile


def atomic_write(path, write, suffix=""):
    """Write `path` through a temporary file in the same directory.

    The data is flushed and fsynced, then renamed over `path` with
    `os.replace`, which is atomic on POSIX. On any error the temporary file is
    removed and an existing `path` is left as it was.

    Args:
        path: the destination file.
        write: callable taking the open binary file object.
        suffix: the temporary file's suffix (some writers check it).
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the usual umask permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
