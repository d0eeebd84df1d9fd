"""Accuracy on the device: the agent's /v1/outputs runs bounded batches of inputs through a model on its own runtime
and sends the outputs back (the labels never leave the driver), under the agent's token and size limit."""

from __future__ import annotations

import socket
import threading

import numpy as np
import onnxruntime as ort
import pytest
import uvicorn
from conftest import wait_for
from onnx import TensorProto, helper, numpy_helper

from evaluators.agent import AgentConfig, create_app
from evaluators.agent_worker import MAX_OUTPUT_ROWS
from evaluators.errors import SlimsweepError
from evaluators.remote import AgentClient

TOKEN = "device-accuracy-token-32-bytes-long"
LIMIT = 2_000_000  # the agent's body limit: a model and its inputs together


def _dense() -> bytes:
    weights = np.random.default_rng(1).normal(size=(64, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "dense",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(weights, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.fixture(scope="module")
def url():
    server = uvicorn.Server(
        uvicorn.Config(create_app(AgentConfig(token=TOKEN, max_model_bytes=LIMIT)), log_level="warning")
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=30, every=0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()


def test_outputs_from_the_device_equal_the_hosts_in_batches(url):
    model = _dense()
    x = np.random.default_rng(2).random((50, 1, 8, 8), dtype=np.float32)
    got = AgentClient(url, TOKEN).outputs(model, x, rows=7)  # 8 requests, the last one short
    here = ort.InferenceSession(model).run(None, {"input": x})[0]
    assert got.shape == (50, 10) and got.dtype == np.float32
    assert np.array_equal(got, here)


def test_a_batch_over_the_agents_rows_is_refused_naming_the_limit(url):
    x = np.zeros((MAX_OUTPUT_ROWS + 1, 1, 8, 8), dtype=np.float32)
    with pytest.raises(SlimsweepError, match=f"send 1 to {MAX_OUTPUT_ROWS} per request"):
        AgentClient(url, TOKEN).outputs(_dense(), x, rows=MAX_OUTPUT_ROWS + 1)


def test_a_body_over_the_size_limit_is_refused(url):
    x = np.zeros((10_000, 1, 8, 8), dtype=np.float32)  # 2.56 MB in one request, over the agent's 2 MB
    with pytest.raises(SlimsweepError, match="413"):
        AgentClient(url, TOKEN).outputs(_dense(), x, rows=10_000)


def test_outputs_need_the_token(url):
    with pytest.raises(SlimsweepError, match="refused the token"):
        AgentClient(url, "not-the-token-but-long-enough-anyway").outputs(_dense(), np.zeros((2, 1, 8, 8), np.float32))


def test_a_body_that_is_not_a_model_and_inputs_is_a_clear_400(url):
    client = AgentClient(url, TOKEN)
    with pytest.raises(SlimsweepError, match="npz of 'model' and 'inputs'"):
        client._call("POST", "/v1/outputs", body=b"not an archive")
    with pytest.raises(SlimsweepError, match="not an ONNX model"):
        client.outputs(b"garbage", np.zeros((2, 1, 8, 8), np.float32))
