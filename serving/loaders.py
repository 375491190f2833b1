"""Run SavedModel signatures the way TF Serving loads them, without TF Serving.

TF Serving loads a SavedModel with C++ `LoadSavedModel`: a session over the
MetaGraph that runs the restore op, then `Session::Run` on the signature's
tensor names. Python's `tf.saved_model.load` takes another path and can
succeed where the server fails, so exports are checked here two ways:

- `SessionLoaderBackend`: the TF1 session loader
  (`tf.compat.v1.saved_model.loader.load`), in-process or, for a clean
  process, through `run_session_loader(jobs)`.
- `run_c_loader(jobs)`: `serving/c_loader.c` built against the wheel's C API
  (`TF_LoadSessionFromSavedModel` + `TF_SessionRun`), with the
  tensorflow-text kernels loaded by `TF_LoadLibrary`.

Neither compares inputs with the SignatureDef, as TF Serving does not: a
float `token_ids` or a wrong length reaches the SavedModel, and the error
(or answer) is the SavedModel's own. The session loader adds only TF
Serving's request checks (`SessionLoaderBackend`).

A job is `{"label", "export_dir", "signature", "inputs": {key: array}}`; a
result is `{"outputs": {key: array}}` or `{"error": {"code", "message"}}`
(`code` is the TF error code name, e.g. `"INVALID_ARGUMENT"`).

Example:
```python
jobs = [{"label": "a", "export_dir": "models/demo/1",
         "signature": "serving_default", "inputs": {"text": np.array([b"hi"])}}]
results = run_c_loader(jobs, build_c_loader("/tmp/c_loader"))
```
"""

import glob
import os
import pickle
import subprocess
import sys
import tempfile

import numpy as np

C_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "c_loader.c")
_C_DTYPES = {"int32": np.int32, "int64": np.int64, "float": np.float32, "bool": bool}
_ERROR_CODES = {
    3: "INVALID_ARGUMENT",
    5: "NOT_FOUND",
    9: "FAILED_PRECONDITION",
    13: "INTERNAL",
}


def signature_defs(export_dir):
    """`{name: SignatureDef}` of the `serve` MetaGraph, read from the proto."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    for meta_graph in proto.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ValueError(f"{export_dir!r} has no MetaGraph tagged 'serve'.")


def function_aliases(export_dir):
    """The `serve` MetaGraph's function aliases `{function_name: alias}`
    (the proto's layout; one alias may name several traced functions)."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    return dict(proto.meta_graphs[0].meta_info_def.function_aliases)


class SessionLoaderBackend:
    """One SavedModel in a TF1 session, run the way TF Serving's Predict runs it.

    TF Serving's Predict (`servables/tensorflow/predict_util.cc`,
    `RunPredict`, with `saved_model::GetInputValues` from
    `tensorflow/cc/saved_model/util.cc`) checks only the *request*: the
    signature exists (else FAILED_PRECONDITION), the request has as many
    inputs as the signature and only its aliases (else INVALID_ARGUMENT),
    and each TensorProto parses. It never compares dtypes or shapes with the
    SignatureDef: the tensors go as they are to `Session::Run`, so a wrong
    dtype or a wrong length is whatever the SavedModel's own graph and the
    TF runtime answer. This class does the same request checks (the only
    emulated part, with TF Serving's codes) and then feeds the arrays
    unconverted through `TF_SessionRun` (the session's `_do_run`: Python's
    `Session.run` would cast a float feed to int32 and refuse a wrong shape
    client-side, which TF Serving does not do).

    Args:
        export_dir: a SavedModel version directory.
    """

    def __init__(self, export_dir):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401 - registers the text kernels

        self.export_dir = export_dir
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(
                self.session, ["serve"], export_dir
            )
        self.signatures = dict(meta_graph.signature_def)

    def run(self, signature, inputs):
        """Run `signature` on `{key: array}`; returns `{key: array}`.

        Raises:
            tf.errors.OpError: FAILED_PRECONDITION for an unknown signature,
                INVALID_ARGUMENT for missing or extra inputs (TF Serving's
                request checks), else whatever `TF_SessionRun` raises.
        """
        import tensorflow as tf

        if signature not in self.signatures:
            raise tf.errors.FailedPreconditionError(
                None, None, f'Serving signature key "{signature}" not found.'
            )
        spec = self.signatures[signature]
        _check_request_inputs(spec, inputs)
        feeds = {
            self.graph.get_tensor_by_name(info.name).ref(): _as_tensor_value(
                inputs[key]
            )
            for key, info in spec.inputs.items()
        }
        keys = sorted(spec.outputs)
        fetches = [self.graph.get_tensor_by_name(spec.outputs[k].name) for k in keys]
        values = self.session._do_run(None, [], fetches, feeds, None, None)
        return dict(zip(keys, values))


def _check_request_inputs(spec, inputs):
    """TF Serving's request checks (`VerifyRequestInputsSize`,
    `GetInputValues`): the request names exactly the signature's inputs."""
    import tensorflow as tf

    sent, wanted = set(inputs), set(spec.inputs)
    if sent != wanted:
        raise tf.errors.InvalidArgumentError(
            None,
            None,
            f"input size does not match signature: {len(sent)}!={len(wanted)} "
            f"len({{{','.join(sorted(sent))}}}) != "
            f"len({{{','.join(sorted(wanted))}}}). Sent extra: "
            f"{{{','.join(sorted(sent - wanted))}}}. Missing but required: "
            f"{{{','.join(sorted(wanted - sent))}}}.",
        )


def _as_tensor_value(value):
    """The array a TensorProto of `value` would decode to (its own dtype)."""
    value = np.asarray(value)
    if value.dtype.kind in "SU":
        value = np.array(
            [v.encode() if isinstance(v, str) else bytes(v) for v in value.ravel()],
            dtype=object,
        ).reshape(value.shape)
    return value


def _run_jobs_in_session(jobs):
    import tensorflow as tf

    backends, results = {}, []
    for job in jobs:
        directory = job["export_dir"]
        if directory not in backends:
            backends[directory] = SessionLoaderBackend(directory)
        try:
            outputs = backends[directory].run(job["signature"], job["inputs"])
            results.append({"outputs": outputs})
        except tf.errors.OpError as e:
            results.append({"error": {"code": error_code(e), "message": e.message}})
    return results


def _code_name(exception_name):
    names = {
        "InvalidArgumentError": "INVALID_ARGUMENT",
        "NotFoundError": "NOT_FOUND",
        "FailedPreconditionError": "FAILED_PRECONDITION",
    }
    return names.get(exception_name, exception_name)


def error_code(error):
    """The TF status name (`"INVALID_ARGUMENT"`, ...) of a `tf.errors.OpError`."""
    return _code_name(type(error).__name__)


def run_session_loader(jobs, timeout=600):
    """Run `jobs` in a fresh Python process through the TF1 session loader."""
    with tempfile.TemporaryDirectory() as tmp:
        jobs_path = os.path.join(tmp, "jobs.pkl")
        results_path = os.path.join(tmp, "results.pkl")
        with open(jobs_path, "wb") as f:
            pickle.dump(jobs, f)
        result = subprocess.run(
            [sys.executable, "-m", __name__, jobs_path, results_path],
            # `-m` puts the working directory first on sys.path; from a
            # source checkout that would shadow the installed package (whose
            # `serving` and `export` live inside it) with the source tree.
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"The session-loader process failed ({result.returncode}):\n"
                f"{result.stderr[-4000:]}"
            )
        with open(results_path, "rb") as f:
            return pickle.load(f)


def tensorflow_paths():
    """`(tensorflow_dir, [tensorflow-text kernel .so files])`, without
    importing TensorFlow."""
    import importlib.util

    tf_dir = importlib.util.find_spec("tensorflow").submodule_search_locations[0]
    text_dir = importlib.util.find_spec("tensorflow_text").submodule_search_locations[0]
    kernels = sorted(glob.glob(os.path.join(text_dir, "python", "ops", "*.so")))
    return tf_dir, kernels


def build_c_loader(output_path, source=C_SOURCE):
    """Compile `c_loader.c` with gcc against the TensorFlow wheel's C API."""
    tf_dir, _ = tensorflow_paths()
    command = [
        "gcc",
        "-O1",
        source,
        "-o",
        output_path,
        f"-I{tf_dir}/include",
        f"-L{tf_dir}",
        "-l:libtensorflow_cc.so.2",
        "-l:libtensorflow_framework.so.2",
        f"-Wl,-rpath,{tf_dir}",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"gcc failed: {' '.join(command)}\n{result.stderr}")
    return output_path


def _encode_value(value):
    if isinstance(value, (bytes, np.bytes_)):
        return "x" + bytes(value).hex()
    if isinstance(value, str):
        return "x" + value.encode().hex()
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    return repr(value.item() if hasattr(value, "item") else value)


def _c_dtype(array):
    if array.dtype.kind in "OSU":
        return "string"
    return {"int32": "int32", "int64": "int64", "float32": "float", "bool": "bool"}[
        array.dtype.name
    ]


def write_c_jobs(jobs, path):
    """Write `jobs` in `c_loader`'s text format (see `c_loader.c`)."""
    lines, current = [], None
    for i, job in enumerate(jobs):
        if job["export_dir"] != current:
            current = job["export_dir"]
            lines.append(f"model {current}")
        spec = signature_defs(current)[job["signature"]]
        lines.append(f"run job{i}")
        for key, info in spec.inputs.items():
            array = np.asarray(job["inputs"][key])
            dims = " ".join(str(d) for d in array.shape)
            values = " ".join(_encode_value(v) for v in array.reshape(-1))
            lines.append(f"feed {info.name} {_c_dtype(array)} {array.ndim} {dims}")
            lines.append(values)
        for _key, info in sorted(spec.outputs.items()):
            lines.append(f"fetch {info.name}")
        lines.append("go")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _decode_tensor(fields):
    dtype, ndims = fields[0], int(fields[1])
    shape = [int(d) for d in fields[2 : 2 + ndims]]
    values = fields[2 + ndims :]
    if dtype == "string":
        array = np.array([bytes.fromhex(v[1:]) for v in values], dtype=object)
    else:
        array = np.array([float(v) for v in values]).astype(_C_DTYPES[dtype])
    return array.reshape(shape)


def parse_c_output(text, jobs):
    """Results from `c_loader`'s stdout, one per job, keyed like the jobs."""
    results, names, current = [], {}, None
    for line in text.splitlines():
        fields = line.split(" ")
        if fields[0] == "run" and fields[1].startswith("job"):
            index = int(fields[1][3:])
            job = jobs[index]
            spec = signature_defs(job["export_dir"])[job["signature"]]
            names = {info.name: key for key, info in spec.outputs.items()}
            if fields[2] == "ok":
                current = {"outputs": {}}
            else:
                code = int(fields[3])
                current = {
                    "error": {
                        "code": _ERROR_CODES.get(code, str(code)),
                        "message": " ".join(fields[4:]),
                    }
                }
            results.append(current)
        elif fields[0] == "out":
            current["outputs"][names[fields[1]]] = _decode_tensor(fields[2:])
    return results


def run_c_loader(jobs, binary, timeout=600):
    """Run `jobs` through the compiled `c_loader` (one process)."""
    _, kernels = tensorflow_paths()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "jobs.txt")
        write_c_jobs(jobs, path)
        result = subprocess.run(
            [binary, path, *kernels],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
    if result.returncode != 0:
        raise RuntimeError(
            f"c_loader failed ({result.returncode}):\n{result.stdout[-2000:]}\n"
            f"{result.stderr[-4000:]}"
        )
    results = parse_c_output(result.stdout, jobs)
    if len(results) != len(jobs):
        raise RuntimeError(
            f"c_loader answered {len(results)} of {len(jobs)} jobs:\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return results


def run_both_loaders(jobs, binary, timeout=600):
    """`{"session": results, "c_api": results}` of `jobs`, the two loader
    processes run at once (each waits mostly on its own graph set-up).

    Args:
        jobs: list of `{"export_dir", "signature", "inputs"}`.
        binary: the `build_c_loader` output.
        timeout: seconds for each process.

    Returns:
        Each loader's results, one per job, in the jobs' order.

    Example:
    ```python
    results = run_both_loaders(jobs, build_c_loader("/tmp/c_loader"))
    results["session"][0]["outputs"]["probabilities"]
    ```
    """
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        session = pool.submit(run_session_loader, jobs, timeout)
        c_api = pool.submit(run_c_loader, jobs, binary, timeout)
        return {"session": session.result(), "c_api": c_api.result()}


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as f:
        _jobs = pickle.load(f)
    _results = _run_jobs_in_session(_jobs)
    with open(sys.argv[2], "wb") as f:
        pickle.dump(_results, f)
