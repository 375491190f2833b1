"""`tf-softprompt query` errors: one line each, naming the address and the fix.

Nothing here needs TF Serving. An unreachable server is a free port with
nothing listening; the servers that answer are stand-ins that only return
errors the way TF Serving's REST and gRPC APIs do.
"""

import concurrent.futures
import http.server
import json
import socket
import threading
import time

import grpc
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc

from tf_softprompt import cli
from tf_softprompt.serving import client


@pytest.fixture
def free_port():
    """A local port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def rest_double():
    """An HTTP server answering every POST with `replies[path]`:
    `(status, body bytes)`, or sleeping `delay` seconds first."""
    replies, settings = {}, {"delay": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(settings["delay"])
            status, body = replies[self.path]
            try:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting (the timeout test)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", replies, settings
    server.shutdown()
    server.server_close()


@pytest.fixture
def grpc_unavailable():
    """A gRPC server whose Predict answers UNAVAILABLE, as TF Serving does
    when its batching queue is full."""

    class Service(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            context.abort(grpc.StatusCode.UNAVAILABLE, "The batch queue is full")

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=1))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        Service(), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def _query(*argv):
    """`tf-softprompt query ARGV` up to its `run_query`, without `main`'s
    error printing."""
    args = cli.build_parser().parse_args(["query", "a fine film", *argv])
    return args.func(args)


def test_rest_with_no_server_raises_one_line_connection_error(free_port):
    url = f"http://127.0.0.1:{free_port}"
    with pytest.raises(ConnectionError) as info:
        _query("--model", "demo", "--rest", url)
    assert str(info.value) == (
        f"Could not reach TF Serving at {url} (Connection refused). Start the "
        "server (see serving/README.md, 'Run TF Serving') or pass the right "
        "--rest address."
    )
    assert isinstance(info.value, OSError)  # what `main` prints without traceback


def test_grpc_with_no_server_raises_the_same_kind_of_error(free_port):
    target = f"127.0.0.1:{free_port}"
    with pytest.raises(ConnectionError) as info:
        _query("--model", "demo", "--grpc", target)
    message = str(info.value)
    assert message.startswith(f"Could not reach TF Serving at {target} (")
    assert "Connection refused" in message
    assert message.endswith(
        "Start the server (see serving/README.md, 'Run TF Serving') or pass the "
        "right --grpc address."
    )
    assert "\n" not in message


def test_grpc_unavailable_from_a_connected_server_is_a_serving_error(
    grpc_unavailable,
):
    with pytest.raises(client.ServingError) as info:
        client.predict_grpc(grpc_unavailable, "demo", ["x"])
    assert str(info.value) == "UNAVAILABLE: The batch queue is full"


def test_rest_on_a_grpc_port_is_a_connection_error(grpc_unavailable):
    url = f"http://{grpc_unavailable}"
    with pytest.raises(ConnectionError, match=f"TF Serving at {url} .*--rest"):
        client.predict_rest(url, "demo", ["x"], timeout=5)


def test_grpc_on_a_rest_port_is_a_connection_error(rest_double):
    target = rest_double[0].removeprefix("http://")
    with pytest.raises(ConnectionError, match=f"TF Serving at {target} .*--grpc"):
        client.predict_grpc(target, "demo", ["x"], timeout=5)


@pytest.mark.parametrize(
    "status, body, code, message",
    [
        (
            404,
            {"error": "Servable not found for request: Latest(nosuch)"},
            "HTTP 404",
            "Servable not found for request: Latest(nosuch)",
        ),
        (
            400,
            {"error": "Unknown task 'zzz'.\n\tKnown tasks: a, b"},
            "INVALID_ARGUMENT",
            "Unknown task 'zzz'. Known tasks: a, b",
        ),
        (502, "<html>\n<h1>Bad Gateway</h1>\n</html>", "HTTP 502", None),
        (503, "", "HTTP 503", "Service Unavailable"),
    ],
)
def test_rest_http_errors_raise_one_line_with_the_servers_text(
    rest_double, status, body, code, message
):
    url, replies, _ = rest_double
    body = json.dumps(body) if isinstance(body, dict) else body
    replies["/v1/models/demo:predict"] = (status, body.encode())
    with pytest.raises(client.ServingError) as info:
        client.predict_rest(url, "demo", ["x"])
    expected = message or " ".join(body.split())
    assert (info.value.code, info.value.message) == (code, expected)
    assert str(info.value) == f"{code}: {expected}"


def test_query_prints_an_http_error_as_one_line(rest_double, capsys):
    url, replies, _ = rest_double
    error = {"error": "Servable not found for request: Latest(nosuch)"}
    replies["/v1/models/nosuch:predict"] = (404, json.dumps(error).encode())
    assert _query("--model", "nosuch", "--rest", url) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "tf-softprompt query: HTTP 404: "
        "Servable not found for request: Latest(nosuch)\n"
    )


def test_rest_without_an_answer_in_time_raises_timeout_error(rest_double):
    url, replies, settings = rest_double
    replies["/v1/models/demo:predict"] = (200, b'{"outputs": {}}')
    settings["delay"] = 1
    with pytest.raises(TimeoutError, match=f"{url} did not answer within 0.2 s"):
        client.predict_rest(url, "demo", ["x"], timeout=0.2)


def test_rest_address_without_a_scheme_is_a_value_error():
    with pytest.raises(ValueError, match="http://localhost:8501. Received: 'h:8501'"):
        client.predict_rest("h:8501", "demo", ["x"])
