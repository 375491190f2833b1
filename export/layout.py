"""The TF Serving directory layout: versioned, atomic, never overwritten.

TF Serving watches a base directory and serves its integer-named
subdirectories (`BASE/1/`, `BASE/2/`, ...), loading a new one as soon as it
appears. A half-written version must therefore never carry an integer name:
the SavedModel is written into a hidden temporary directory inside `BASE`
(same filesystem) and renamed to `BASE/<version>` only when complete. An
existing version is never replaced; TF Serving may be serving it.

Warmup requests (`assets.extra/tf_serving_warmup_requests`) are a TFRecord of
`tensorflow_serving.apis.PredictionLog` protos, replayed by the server before
the version takes traffic, so the first client request does not pay for
graph initialisation.

Example:
```python
with publish_version("models/demo", 3) as tmp:
    archive.write_out(tmp)
    write_warmup_requests(tmp, "demo", {"serving_default": {"text": ["hi"]}})
# models/demo/3 now exists, complete.
```
"""

import contextlib
import os
import shutil
import tempfile

import tensorflow as tf

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def version_dir(base_dir, version):
    """`BASE/<version>`, checking that `version` is a positive integer."""
    text = str(version).strip()
    if isinstance(version, bool) or not text.isdigit() or int(text) <= 0:
        raise ValueError(
            "TF Serving versions are positive integers (the directory name "
            f"under the base path). Received: version={version!r}. Pass "
            "e.g. `version=1`."
        )
    return os.path.join(os.fspath(base_dir), str(int(text)))


@contextlib.contextmanager
def publish_version(base_dir, version):
    """Yield a temporary directory; rename it to `BASE/<version>` on success.

    Args:
        base_dir: the model's base path (created if missing).
        version: positive int.

    Yields:
        The temporary directory to write the SavedModel into.

    Raises:
        FileExistsError: if `BASE/<version>` exists (before or after writing).
    """
    target = check_new_version(base_dir, version)
    os.makedirs(base_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=base_dir, prefix=f".tmp-{os.path.basename(target)}-")
    try:
        yield tmp
        check_new_version(base_dir, version)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_new_version(base_dir, version):
    """`BASE/<version>`; raises `FileExistsError` if it exists."""
    target = version_dir(base_dir, version)
    if os.path.exists(target):
        raise FileExistsError(
            f"The model version directory {target!r} already exists and TF "
            "Serving may be serving it, so it is never overwritten. Export to "
            "a new version number (e.g. `--version "
            f"{int(os.path.basename(target)) + 1}`), or delete {target!r} "
            "yourself if it is not in use."
        )
    return target


def predict_request(model_name, signature_name, inputs):
    """A `PredictRequest` for `model_name`/`signature_name` from numpy-likes."""
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def write_warmup_requests(export_dir, model_name, requests):
    """Write one warmup `PredictionLog` per signature.

    Args:
        export_dir: the SavedModel directory being written.
        model_name: the name the model is served under.
        requests: dict `{signature_name: {input_name: array}}`.

    Returns:
        The path of the TFRecord file.
    """
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(export_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature_name, inputs in requests.items():
            request = predict_request(model_name, signature_name, inputs)
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(export_dir):
    """The `PredictRequest`s in an export's warmup file, in order."""
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(os.fspath(export_dir), WARMUP_FILE)
    requests = []
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog.FromString(record)
        requests.append(log.predict_log.request)
    return requests
