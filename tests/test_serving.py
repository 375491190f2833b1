"""The serving client and assets.

No TF Serving binary can be installed here. The client is tested against
loopback TEST DOUBLES of TF Serving's gRPC `PredictionService` and REST
`:predict` API, both backed by `loaders.SessionLoaderBackend`: the TF1
session loader (the way TF Serving holds a SavedModel), with TF Serving's
request checks (the signature exists, the inputs are the signature's; the
only emulated part) and inputs fed unconverted to `TF_SessionRun`, so a bad
dtype or a bad task is answered by the SavedModel or the TF runtime, as in
TF Serving. They are test doubles, not TF Serving: they check the client's
requests and decoding and the exported model's answers, not TF Serving's
HTTP/gRPC layers.
"""

import concurrent.futures
import http.server
import json
import threading
from importlib import resources

import grpc
import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from tf_softprompt import PromptEmbedding, cli
from tf_softprompt.export import export_model
from tf_softprompt.serving import client, loaders

WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
] + "good bad film plot not".split()
V, H, P = len(WORDS), 8, 2
LABELS = ["negative", "positive"]
TEXTS = ["good film", "bad plot", "not good", ""]
TASKS = ["a", "b", "b", "a"]


def _model(prompt):
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    padding_mask = keras.Input((None,), dtype="int32", name="padding_mask")
    layer = PromptEmbedding(P, input_dim=V, output_dim=H)
    x = layer(token_ids)
    weights = keras.ops.expand_dims(keras.ops.cast(padding_mask, "float32"), -1)
    pooled = keras.ops.sum(x * weights, 1) / keras.ops.sum(weights, 1)
    model = keras.Model(
        {"token_ids": token_ids, "padding_mask": padding_mask},
        keras.layers.Dense(len(LABELS))(pooled),
    )
    layer.prompt.assign(prompt)
    return model, layer


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A two-task export, its expected outputs and the two test doubles."""
    root = tmp_path_factory.mktemp("serving")
    keras.utils.set_random_seed(11)
    rng = np.random.default_rng(1)
    prompts = {t: rng.normal(0, 1, (P, H)).astype(np.float32) for t in "ab"}
    model, layer = _model(prompts["a"])
    paths = {}
    for task in "ab":
        layer.prompt.assign(prompts[task])
        paths[task] = str(root / f"{task}.prompt.npz")
        layer.save_prompt(paths[task], task=task)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=WORDS)
    directory = export_model(
        model,
        root / "demo",
        1,
        tokenizer=tokenizer,
        sequence_length=10,
        labels=LABELS,
        prompts=paths,
        offset=1,
        ensembles={"ab": ["a", "b"]},
    )
    expected = []
    for text, task in zip(TEXTS, TASKS):
        layer.prompt.assign(prompts[task])
        ids = [2, V, V + 1] + [WORDS.index(w) for w in text.split()] + [3]
        logits = model(
            {"token_ids": np.array([ids]), "padding_mask": np.ones((1, len(ids)))}
        )
        expected.append(tf.nn.softmax(logits)[0].numpy())
    backend = loaders.SessionLoaderBackend(directory)
    grpc_server, grpc_target = _start_grpc_double(backend, "demo")
    http_server, url = _start_rest_double(backend, "demo")
    yield {
        "expected": np.stack(expected),
        "prompts": prompts,
        "model": model,
        "layer": layer,
        "backend": backend,
        "grpc": grpc_target,
        "rest": url,
    }
    grpc_server.stop(None)
    http_server.shutdown()


# --- TEST DOUBLES of TF Serving (not TF Serving) ---------------------------


class _PredictionServiceDouble(prediction_service_pb2_grpc.PredictionServiceServicer):
    """TEST DOUBLE: gRPC `Predict` over a session-loaded SavedModel."""

    def __init__(self, backend, name):
        self.backend = backend
        self.name = name

    def Predict(self, request, context):
        if request.model_spec.name != self.name:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"Servable not found: {request.model_spec.name}",
            )
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        signature = request.model_spec.signature_name or "serving_default"
        try:
            outputs = self.backend.run(signature, inputs)
        except tf.errors.OpError as e:  # TF status codes are gRPC's
            context.abort(grpc.StatusCode[loaders.error_code(e)], e.message)
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(request.model_spec)
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response


def _start_grpc_double(backend, name):
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        _PredictionServiceDouble(backend, name), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def _start_rest_double(backend, name):
    """TEST DOUBLE: TF Serving's REST `:predict` (columnar `inputs` only)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            if self.path != f"/v1/models/{name}:predict":
                return self._reply(404, {"error": f"Servable not found: {self.path}"})
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            signature = body.get("signature_name", "serving_default")
            inputs = {
                k: np.array([s.encode() for s in v], dtype=object)
                for k, v in body["inputs"].items()
            }
            try:
                outputs = backend.run(signature, inputs)
            except tf.errors.OpError as e:
                status = 404 if loaders.error_code(e) == "NOT_FOUND" else 400
                return self._reply(status, {"error": e.message})
            self._reply(200, {"outputs": {k: _jsonable(v) for k, v in outputs.items()}})

        def _reply(self, status, payload):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _jsonable(array):
    if array.dtype == object:
        return [s.decode() for s in array.tolist()]
    return array.tolist()


# --- client ----------------------------------------------------------------


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_client_returns_the_exported_models_answers(served, transport):
    predict = client.predict_grpc if transport == "grpc" else client.predict_rest
    outputs = predict(served[transport], "demo", TEXTS, TASKS)
    np.testing.assert_allclose(outputs["probabilities"], served["expected"], atol=1e-5)
    ids = served["expected"].argmax(-1)
    np.testing.assert_array_equal(outputs["label_ids"], ids)
    assert list(outputs["label_names"]) == [LABELS[i].encode() for i in ids]


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_unknown_task_raises_invalid_argument_naming_known_tasks(served, transport):
    predict = client.predict_grpc if transport == "grpc" else client.predict_rest
    with pytest.raises(client.ServingError) as error:
        predict(served[transport], "demo", ["good film"], ["c"])
    assert error.value.code == "INVALID_ARGUMENT"
    assert "Known tasks: a, b" in error.value.message


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_an_ensemble_is_queried_like_a_task(served, transport):
    predict = client.predict_grpc if transport == "grpc" else client.predict_rest
    outputs = predict(served[transport], "demo", TEXTS, "ab")
    # The mean of the two prompts' answers, computed with the Keras model.
    expected = []
    for task in "ab":
        served["layer"].prompt.assign(served["prompts"][task])
        rows = []
        for text in TEXTS:
            ids = [2, V, V + 1] + [WORDS.index(w) for w in text.split()] + [3]
            logits = served["model"](
                {"token_ids": np.array([ids]), "padding_mask": np.ones((1, len(ids)))}
            )
            rows.append(tf.nn.softmax(logits)[0].numpy())
        expected.append(np.stack(rows))
    mean = (expected[0] + expected[1]) / 2
    np.testing.assert_allclose(outputs["probabilities"], mean, atol=1e-5)
    assert list(outputs["label_names"]) == [LABELS[i].encode() for i in mean.argmax(-1)]


def test_session_backend_checks_only_what_tf_serving_checks(served):
    backend = served["backend"]
    ids = np.array([[2, 5, 3, 0, 0, 0, 0, 0]], np.int32)
    tokens = {"token_ids": ids, "padding_mask": (ids != 0).astype(np.int32)}
    # TF Serving's own request checks (predict_util.cc): emulated here.
    with pytest.raises(tf.errors.FailedPreconditionError, match="not found"):
        backend.run("classify", {"text": np.array([b"x"], dtype=object)})
    with pytest.raises(tf.errors.InvalidArgumentError, match="Missing but required"):
        backend.run("predict_tokens", tokens)
    # No dtype or shape check in front of the session: these reach the
    # SavedModel, whose runtime and in-graph checks answer.
    task_id = np.array([0], np.int32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="int32 but float"):
        backend.run(
            "predict_tokens",
            {**tokens, "token_ids": ids.astype(np.float32), "task_id": task_id},
        )
    with pytest.raises(tf.errors.InvalidArgumentError, match="predict_tokens takes"):
        backend.run(
            "predict_tokens",
            {k: v[:, :-1] for k, v in tokens.items()} | {"task_id": task_id},
        )
    outputs = backend.run("predict_tokens", {**tokens, "task_id": task_id})
    assert set(outputs) == {"probabilities", "label_ids", "num_classes"}


def test_one_task_for_all_texts_and_mismatched_tasks(served):
    outputs = client.predict_grpc(served["grpc"], "demo", TEXTS[:2], "b")
    alone = client.predict_grpc(served["grpc"], "demo", TEXTS[:2], ["b", "b"])
    np.testing.assert_array_equal(outputs["probabilities"], alone["probabilities"])
    with pytest.raises(ValueError, match="one task per text"):
        client.predict_grpc(served["grpc"], "demo", TEXTS, ["a", "b"])


def test_query_subcommand_prints_one_json_line_per_text(served, capsys):
    argv = ["query", "bad plot", "not good", "--model", "demo", "--task", "b"]
    assert cli.main([*argv, "--grpc", served["grpc"]]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["bad plot", "not good"]
    assert all(r["task"] == "b" for r in rows)
    np.testing.assert_allclose(
        [r["probabilities"] for r in rows], served["expected"][1:3], atol=1e-5
    )
    assert [r["label"] for r in rows] == [
        LABELS[i] for i in served["expected"][1:3].argmax(-1)
    ]
    code = cli.main(
        ["query", "x", "--model", "demo", "--task", "zzz", "--rest", served["rest"]]
    )
    assert code == 1
    assert "Known tasks: a, b" in capsys.readouterr().err


# --- assets ----------------------------------------------------------------


def _asset(name):
    return resources.files("tf_softprompt.serving").joinpath(name).read_text()


def test_models_config_is_a_valid_model_server_config():
    config = text_format.Parse(
        _asset("models.config"), model_server_config_pb2.ModelServerConfig()
    )
    models = {c.name: c for c in config.model_config_list.config}
    assert set(models) == {"demo", "multi", "baseline"}
    assert all(c.model_platform == "tensorflow" for c in models.values())
    assert list(models["multi"].model_version_policy.specific.versions) == [1, 2]


def test_batching_parameters_name_only_batching_fields():
    # BatchingParameters is not in tensorflow-serving-api; these are its
    # fields (tensorflow_serving/servables/tensorflow/session_bundle_config.proto).
    known = {
        "max_batch_size",
        "batch_timeout_micros",
        "max_enqueued_batches",
        "num_batch_threads",
        "allowed_batch_sizes",
        "pad_variable_length_inputs",
        "thread_pool_name",
        "enable_large_batch_splitting",
    }
    fields = {}
    for line in _asset("batching_parameters.txt").splitlines():
        name = line.split()[0].rstrip(":")
        assert name in known, line
        fields.setdefault(name, []).append(line)
    sizes = [int(line.split(":")[1]) for line in fields["allowed_batch_sizes"]]
    assert sizes == sorted(sizes)
    assert f"{{ value: {sizes[-1]} }}" in fields["max_batch_size"][0]


def test_readme_gives_the_docker_and_tpu_commands():
    readme = _asset("README.md")
    for needle in (
        "tensorflow/serving",
        "latest-gpu",
        "--gpus all",
        "--model_config_file=/config/models.config",
        "--batching_parameters_file=/config/batching_parameters.txt",
        "--enable_model_warmup",
        'function_alias: "tpu_func"',
    ):
        assert needle in readme, needle


def test_query_prints_generated_text_for_causal_lm_exports(monkeypatch, capsys):
    # The formatting only: the served LM outputs themselves are checked in
    # tests/test_export_generation.py.
    def fake_predict(where, model, texts, task, **kwargs):
        assert (where, model, texts, task) == ("h:1", "writer", ["Once"], None)
        return {"text": np.array([b"Once upon a time"], dtype=object)}

    monkeypatch.setattr(client, "predict_grpc", fake_predict)
    assert cli.main(["query", "Once", "--model", "writer", "--grpc", "h:1"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row == {"text": "Once", "generated": "Once upon a time"}
