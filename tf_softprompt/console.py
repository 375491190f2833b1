"""What the command line shows: TensorFlow's log lines held back, and
results printed for people and for scripts.

TensorFlow and its C++ libraries (absl, oneDNN, XLA) write log lines such as
`E0000 00:00:... util.cc:131] oneDNN supports DT_INT64 only on platforms
with AVX-512...` straight to file descriptor 2, at import and later while
ops run, whatever Python's `sys.stderr` is. `filtered_stderr` puts a pipe
in front of descriptor 2 and forwards every line except those, so the
errors and warnings of tf-softprompt itself (and Python tracebacks) still
reach the terminal. `--verbose` turns the filter off.

Example:
```python
with filtered_stderr():
    import tensorflow as tf  # no start-up lines
    print_result(["Accuracy 0.86"], {"accuracy": 0.86})
```
"""

import contextlib
import json
import logging
import os
import re
import sys
import threading
import warnings

# absl's C++ log prefix (`I0000 00:00:1796.. 123 file.cc:45] `) and the
# lines TensorFlow prints around it at start-up.
_LOG_LINE = re.compile(
    rb"^(?:[IWEF]\d{4} [\d:. ]+\s*\d+ [\w./-]+:\d+\]"
    rb"|WARNING: All log messages before absl::InitializeLog"
    rb"|To enable the following instructions:"
    rb"|Could not find cuda drivers"
    rb"|TF-TRT Warning)"
)
_FRAMEWORKS = r"(keras|keras_hub|keras_nlp|tensorflow|tf_keras|tensorflow_text)(\..*)?"


def is_framework_log_line(line):
    """Whether a stderr line (bytes) is a TensorFlow/absl log line."""
    return bool(_LOG_LINE.match(line))


@contextlib.contextmanager
def filtered_stderr():
    """Forward file descriptor 2 through a filter that drops TensorFlow's
    log lines; restored (and every line written) on exit."""
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward():
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            pending = b""
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if not is_framework_log_line(line):
                        os.write(saved, line + b"\n")
            if pending and not is_framework_log_line(pending):
                os.write(saved, pending)

    thread = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the thread ends
        thread.join(timeout=5)
        os.close(saved)


def quiet_python_logs():
    """Hold back the frameworks' Python warnings and absl/TF logging."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore", module=_FRAMEWORKS)
    for name in ("absl", "tensorflow", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)


def dumps(record):
    """One JSON line, non-ASCII text as it is (`ensure_ascii=False`)."""
    return json.dumps(record, sort_keys=True, ensure_ascii=False)


def print_json(record):
    print(dumps(record), flush=True)


def print_result(lines, record, json_only=False):
    """Human-readable lines, then the JSON line scripts read (last);
    `json_only`: the JSON line alone."""
    if not json_only:
        for line in lines:
            print(line)
    print_json(record)


def warn(command, message):
    """A one-line warning on stderr, as `tf-softprompt CMD: warning: ...`."""
    print(f"tf-softprompt {command}: warning: {message}", file=sys.stderr, flush=True)
