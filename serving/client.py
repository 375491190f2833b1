"""Query a TF Serving model exported by `tf_softprompt.export`: REST or gRPC.

Both calls send `serving_default` requests (`text`, and `task` for a
multi-task export) and return `{output name: numpy array}` with the
exporter's outputs: `probabilities [B, C]` (the first `num_classes [B]` are
the row's task's; a multi-task export pads the rest with 0), `label_ids [B]`
and `label_names [B]` for a classifier, `text [B]` for a causal LM. A request TF Serving
rejects raises `ServingError` with its status code (e.g.
`INVALID_ARGUMENT` for an unknown task) and message; a server that cannot
be reached raises `ConnectionError` naming the address, the reason and the
fix.

Exposed on the command line as `tf-softprompt query`.

Example:
```python
outputs = predict_grpc("localhost:8500", "demo", ["a fine film"], tasks=["sst"])
outputs = predict_rest("http://localhost:8501", "demo", ["a fine film"])
outputs["label_names"]  # array([b'positive'], dtype=object)
```
"""

import http.client
import json
import queue
import sys
import urllib.error
import urllib.request

import numpy as np


class ServingError(RuntimeError):
    """A request the server refused.

    Attributes:
        code: the status name (`"INVALID_ARGUMENT"`, ...) or HTTP status.
        message: the server's message.
    """

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _unreachable(address, reason, flag):
    return ConnectionError(
        f"Could not reach TF Serving at {address} ({_one_line(reason)}). "
        f"Start the server (see serving/README.md, 'Run TF Serving') or pass "
        f"the right {flag} address."
    )


def _one_line(text):
    return " ".join(str(text).split())


def _inputs(texts, tasks):
    texts = [t if isinstance(t, str) else t.decode() for t in texts]
    inputs = {"text": texts}
    if tasks is not None:
        if isinstance(tasks, str):
            tasks = [tasks] * len(texts)
        if len(tasks) != len(texts):
            raise ValueError(
                f"Pass one task per text, or one task for all. Received "
                f"{len(tasks)} tasks for {len(texts)} texts."
            )
        inputs["task"] = list(tasks)
    return inputs


def predict_rest(
    url,
    model_name,
    texts,
    tasks=None,
    *,
    signature="serving_default",
    version=None,
    timeout=30,
):
    """POST a columnar `:predict` request to TF Serving's REST API.

    Args:
        url: the REST endpoint, e.g. `"http://localhost:8501"`.
        model_name: the served model's name.
        texts: list of strings.
        tasks: task name(s) for a multi-task export; `None` otherwise.
        signature: the signature to call.
        version: optional version number; default the served latest.
        timeout: seconds.

    Returns:
        `{output name: numpy array}`.

    Raises:
        ServingError: the server answered with an HTTP error; its message is
            the server's `error` text.
        ConnectionError: nothing answered at `url`, or not over HTTP.
        TimeoutError: no answer within `timeout` seconds.
        ValueError: `url` is not an `http://` or `https://` URL.
    """
    if not url.startswith(("http://", "https://")):
        raise ValueError(
            f"The REST address must be a URL such as http://localhost:8501. "
            f"Received: {url!r}"
        )
    path = f"/v1/models/{model_name}"
    if version is not None:
        path += f"/versions/{int(version)}"
    body = {"signature_name": signature, "inputs": _inputs(texts, tasks)}
    request = urllib.request.Request(
        url.rstrip("/") + path + ":predict",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read())
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        try:
            message = json.loads(text)["error"]
        except (ValueError, KeyError, TypeError):  # not TF Serving's JSON
            message = text
        message = _one_line(message) or e.reason
        raise ServingError(_http_code(e.code, message), message) from None
    except urllib.error.URLError as e:  # connecting failed
        reason = getattr(e.reason, "strerror", None) or e.reason
        raise _unreachable(url, reason, "--rest") from None
    except TimeoutError:  # connected, but no answer in time
        raise TimeoutError(
            f"TF Serving at {url} did not answer within {timeout} s. Pass a "
            f"larger --timeout, or check that the server is not overloaded."
        ) from None
    except (ConnectionError, http.client.HTTPException) as e:
        # E.g. the gRPC port, which does not speak HTTP/1.1.
        reason = getattr(e, "strerror", None) or f"{type(e).__name__}: {e}"
        raise _unreachable(url, reason, "--rest") from None
    outputs = payload["outputs"]
    if not isinstance(outputs, dict):  # a single unnamed output
        outputs = {"outputs": outputs}
    return {key: _array(value) for key, value in outputs.items()}


def _http_code(status, message):
    # TF Serving's REST API maps InvalidArgument to 400 and puts the status
    # text in the message only; keep the HTTP status as the code.
    return "INVALID_ARGUMENT" if status == 400 else f"HTTP {status}"


def _array(value):
    array = np.array(value)
    if array.dtype.kind == "U":
        return np.array([s.encode() for s in array.reshape(-1)], dtype=object).reshape(
            array.shape
        )
    return array


def predict_grpc(
    target,
    model_name,
    texts,
    tasks=None,
    *,
    signature="serving_default",
    version=None,
    timeout=30,
):
    """Call `PredictionService/Predict` over gRPC.

    Args:
        target: `"host:port"` of TF Serving's gRPC port (8500 by default).
        model_name, texts, tasks, signature, version, timeout: as in
            `predict_rest`.

    Returns:
        `{output name: numpy array}`.

    Raises:
        ServingError: the server refused the request (`e.code` is the gRPC
            status name).
        ConnectionError: the channel could not connect to `target`.
    """
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    for key, values in _inputs(texts, tasks).items():
        array = np.array([v.encode() for v in values], dtype=object)
        request.inputs[key].CopyFrom(tf.make_tensor_proto(array))
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Predict(request, timeout=timeout)
        except grpc.RpcError as e:
            unavailable = e.code() is grpc.StatusCode.UNAVAILABLE
            if unavailable and not _connected(channel):
                raise _unreachable(target, e.details(), "--grpc") from None
            message = _one_line(e.details() or "")
            raise ServingError(e.code().name, message) from None
    return {key: tf.make_ndarray(value) for key, value in response.outputs.items()}


def _connected(channel):
    """Whether `channel` is connected.

    TF Serving itself answers UNAVAILABLE too (e.g. when its batching queue is
    full); that is a refusal, not a connection failure.
    """
    import grpc

    states = queue.SimpleQueue()
    callback = states.put
    channel.subscribe(callback, try_to_connect=False)
    try:
        return states.get(timeout=1) is grpc.ChannelConnectivity.READY
    except queue.Empty:
        return False
    finally:
        channel.unsubscribe(callback)


def add_query_parser(subparsers):
    """Register `query` on the `tf-softprompt` subparsers."""
    parser = subparsers.add_parser(
        "query",
        help="classify texts with a model served by TF Serving",
        description=(
            "Send texts to a TF Serving model exported by `tf-softprompt "
            "export` and print one JSON line per text."
        ),
    )
    parser.add_argument("texts", nargs="+", metavar="TEXT")
    parser.add_argument("--model", required=True, help="served model name")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--grpc", metavar="HOST:PORT", help="e.g. localhost:8500")
    where.add_argument("--rest", metavar="URL", help="e.g. http://localhost:8501")
    parser.add_argument("--task", default=None, help="task of a multi-task model")
    parser.add_argument("--version", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=30)
    parser.set_defaults(func=run_query)


def run_query(args):
    kwargs = {"version": args.version, "timeout": args.timeout}
    try:
        if args.grpc:
            outputs = predict_grpc(
                args.grpc, args.model, args.texts, args.task, **kwargs
            )
        else:
            outputs = predict_rest(
                args.rest, args.model, args.texts, args.task, **kwargs
            )
    except ServingError as e:
        print(f"tf-softprompt query: {e}", file=sys.stderr)
        return 1
    for i, text in enumerate(args.texts):
        if "label_names" in outputs:  # a classifier
            probabilities = [float(p) for p in outputs["probabilities"][i]]
            if "num_classes" in outputs:  # drop the padded classes of its task
                probabilities = probabilities[: int(outputs["num_classes"][i])]
            row = {
                "text": text,
                "label": outputs["label_names"][i].decode(),
                "label_id": int(outputs["label_ids"][i]),
                "probabilities": probabilities,
            }
        else:  # a causal LM (`export_causal_lm`): its output is `text`
            row = {"text": text, "generated": outputs["text"][i].decode()}
        if args.task is not None:
            row["task"] = args.task
        print(json.dumps(row, ensure_ascii=False))
    return 0
