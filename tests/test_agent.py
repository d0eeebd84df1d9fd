"""The device agent served for real on loopback: the token, the size limit, bad input, the queue, a measurement
that agrees with a local one, and a fuzzing run after which the agent still answers."""

from __future__ import annotations

import dataclasses
import http.client
import http.server
import io
import json
import random
import socket
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import onnx
import pytest
import torch
import uvicorn
from conftest import BIN, free_port, wait_for
from onnx import TensorProto, helper

from evaluators import ConfigError, SlimsweepError, TimingSettings, agent, agent_worker, measure
from evaluators.agent import AgentConfig, create_app, read_token
from evaluators.remote import AgentClient

TOKEN = "test-token-5f1c-0a9e7d"
LIMIT = 20_000  # the small model fits, the wide one does not
QUICK = TimingSettings(warmup=5, min_repeats=30, max_repeats=300, max_seconds=1.0)
QUICK_QUERY = "warmup=1&min_repeats=5&max_repeats=20&max_seconds=0.05"
# Runs for its whole 3 s whatever the model: the repeat floor is never reached before the time cap; no retry.
SLOW = TimingSettings(warmup=0, min_repeats=10**5, max_repeats=10**5, max_seconds=3.0, max_cv=100)
MEMORY_MB = 1024  # the fixture agent's worker limit


def conv_net(channels: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, channels, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(channels, channels, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(channels, 10),
    ).eval()


def export(model: torch.nn.Module) -> bytes:
    f = io.BytesIO()
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 8, 8),),
        f,
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    return f.getvalue()


@pytest.fixture(scope="module")
def small() -> bytes:
    model = export(conv_net(8))
    assert len(model) < LIMIT
    return model


@pytest.fixture(scope="module")
def wide() -> bytes:
    model = export(conv_net(32))
    assert len(model) > LIMIT
    return model


@pytest.fixture(scope="module")
def port() -> int:
    """A real agent (uvicorn, in a thread it can be stopped from) on a free loopback port; yields the port."""
    config = AgentConfig(token=TOKEN, max_model_bytes=LIMIT, queue_size=1, max_memory_mb=MEMORY_MB)
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=30, every=0.05)
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()
    assert not thread.is_alive()


def call(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    token: str | None = TOKEN,
) -> tuple[int, http.client.HTTPMessage, dict]:
    """One request with exactly the headers given (plus Content-Length and the token unless told otherwise)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        sent = {"Content-Length": str(len(body))} if method == "POST" else {}
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        sent.update(headers or {})
        for name, value in sent.items():
            conn.putheader(name, value)
        conn.endheaders(body or None)
        response = conn.getresponse()
        raw = response.read()
        return response.status, response.headers, json.loads(raw) if raw else {}
    finally:
        conn.close()


def raw_exchange(port: int, data: bytes) -> int | None:
    """Send bytes as they are; the status of the answer, or None if the agent closed without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        try:
            sock.sendall(data)
            response = http.client.HTTPResponse(sock)
            response.begin()
            return response.status
        except (http.client.RemoteDisconnected, ConnectionError):
            return None


def in_flight(port: int) -> int:
    status, _, info = call(port, "GET", "/v1/info")
    assert status == 200
    return info["queue"]["in_flight"]


def test_every_endpoint_wants_the_token(port, small):
    for method, path in [("GET", "/v1/info"), ("POST", "/v1/measure")]:
        for token in [None, "wrong-token", TOKEN + "x", TOKEN[:-1], ""]:
            status, headers, body = call(port, method, path, body=small, token=token)
            assert status == 401, (method, token)
            assert headers["WWW-Authenticate"].startswith("Bearer")
            assert "token" in body["error"]
        for scheme in ["Basic", "Token", f"Bearer {TOKEN} extra", f"Bearer{TOKEN}"]:
            value = scheme if TOKEN in scheme else f"{scheme} {TOKEN}"
            assert call(port, method, path, small, {"Authorization": value}, token=None)[0] == 401, value
    with pytest.raises(SlimsweepError, match=r"refused the token \(401\)"):
        AgentClient(f"http://127.0.0.1:{port}", "wrong").info()


def test_info_reports_the_device_runtimes_and_limits(port):
    status, _, info = call(port, "GET", "/v1/info", headers={"Authorization": f"bearer {TOKEN}"})
    assert status == 200  # the scheme is case-insensitive (RFC 7235)
    assert set(info["device"]) == {"hostname", "machine", "processor", "system", "cpu_count", "python"}
    assert "CPUExecutionProvider" in info["runtimes"]["providers"]
    assert info["runtimes"]["onnxruntime"]
    assert info["limits"] == {
        "max_model_bytes": LIMIT,
        "queue_size": 1,
        "max_memory_mb": MEMORY_MB,
        "timing": agent.TIMING_LIMITS,
        "outputs": {"max_rows": agent.MAX_OUTPUT_ROWS, "max_bytes": agent.MAX_OUTPUT_BYTES},
    }
    assert info["agent"]["protocol"] == 1
    assert info["queue"] == {"in_flight": 0}
    assert AgentClient(f"http://127.0.0.1:{port}/", TOKEN).info() == info


def test_a_model_over_the_limit_is_refused_with_413(port, wide, small):
    status, _, body = call(port, "POST", "/v1/measure", wide)
    assert status == 413 and str(LIMIT) in body["error"]
    # Declared far beyond the limit: refused on the header alone, before any body is read.
    status, _, _ = call(port, "POST", "/v1/measure", small, {"Content-Length": str(10**12)})
    assert status == 413
    # No Content-Length (chunked upload): refused once the bytes read pass the limit.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(
        "POST",
        "/v1/measure",
        body=iter([wide[:8000], wide[8000:]]),
        encode_chunked=True,
        headers={"Authorization": f"Bearer {TOKEN}", "Transfer-Encoding": "chunked"},
    )
    assert conn.getresponse().status == 413
    conn.close()
    with pytest.raises(SlimsweepError, match=r"too large \(413\)"):
        AgentClient(f"http://127.0.0.1:{port}", TOKEN).measure(wide, QUICK)
    assert in_flight(port) == 0


def _not_a_model() -> bytes:
    # A well-formed ModelProto message with nothing a model needs (no graph, no opset).
    return onnx.ModelProto(ir_version=8, producer_name="not a model").SerializeToString()


def _reads_a_file() -> bytes:
    """A model whose weight would be read from a file on the device: the agent must not open it."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1, 4], [0.0] * 4)
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="/etc/hostname")
    graph = helper.make_graph(
        [helper.make_node("Add", ["input", "w"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _custom_op() -> bytes:
    """Passes the ONNX checker (unknown domains are not checked) but needs a custom-op library to run."""
    graph = helper.make_graph(
        [helper.make_node("Boom", ["input"], ["logits"], domain="com.example")],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.mark.parametrize(
    "make, says",
    [
        (lambda small: b"", "empty"),
        (lambda small: random.Random(0).randbytes(3000), "not an ONNX model"),
        (lambda small: small[: len(small) // 2], "not"),
        (lambda small: _not_a_model(), "not a valid ONNX model"),
        (lambda small: _reads_a_file(), "external data"),
        (lambda small: _custom_op(), "ONNX Runtime cannot load"),
    ],
    ids=["empty", "garbage", "truncated", "protobuf-not-model", "external-data", "custom-op"],
)
def test_a_body_that_is_not_a_runnable_model_gets_400_with_a_message(port, small, make, says):
    status, _, body = call(
        port, "POST", f"/v1/measure?{QUICK_QUERY}", make(small), {"Content-Type": "application/octet-stream"}
    )
    assert status == 400
    assert says in body["error"]
    assert in_flight(port) == 0


@pytest.mark.parametrize(
    "query, names",
    [
        ("threads=0", "threads"),
        ("threads=abc", "threads"),
        ("batch_size=1.5", "batch_size"),
        ("max_seconds=nan", "max_seconds"),
        ("max_seconds=inf", "max_seconds"),
        ("warmup=-1", "warmup"),
        ("thread=2", "threads"),
        ("warmup=1&warmup=2", "warmup"),
        ("min_repeats=10&max_repeats=5", "min_repeats"),
    ],
)
def test_a_bad_query_parameter_gets_400_naming_it(port, small, query, names):
    status, _, body = call(port, "POST", f"/v1/measure?{query}", small)
    assert status == 400
    assert names in body["error"]


def test_a_full_queue_answers_503_while_info_still_answers(port, small):
    client = AgentClient(f"http://127.0.0.1:{port}", TOKEN)
    outcome: dict = {}
    slow = threading.Thread(target=lambda: outcome.update(stats=client.measure(small, SLOW)))
    slow.start()
    try:
        wait_for(lambda: in_flight(port) == 1, timeout=10, every=0.02)  # info answers while the measurement runs
        status, headers, body = call(port, "POST", f"/v1/measure?{QUICK_QUERY}", small)
        assert status == 503
        # Until the running one is sure to end: its load allowance (60 s by default) at most, plus 3 x max_seconds.
        assert 1 <= int(headers["Retry-After"]) <= 2 * 60 + 3 * SLOW.max_seconds + 1
        assert "busy" in body["error"]
        with pytest.raises(SlimsweepError, match=r"busy \(503\)"):
            client.measure(small, QUICK)
    finally:
        slow.join(timeout=60)
    assert outcome["stats"].repeats > 100
    wait_for(lambda: in_flight(port) == 0, timeout=10, every=0.02)


def test_a_measurement_on_the_agent_agrees_with_a_local_one(port, small):
    remote = AgentClient(f"http://127.0.0.1:{port}", TOKEN).measure(small, QUICK)
    local = measure(small, QUICK)
    assert 0 < remote.p50_ms <= remote.p90_ms <= remote.p95_ms <= remote.p99_ms
    assert QUICK.min_repeats <= remote.repeats <= QUICK.max_repeats
    assert 0.1 < remote.p50_ms / local.p50_ms < 10
    query = urllib.parse.urlencode({"warmup": 2, "min_repeats": 10, "max_repeats": 40, "batch_size": 4})
    status, _, body = call(port, "POST", f"/v1/measure?{query}", small)
    assert status == 200
    assert body["providers"] == ["CPUExecutionProvider"]
    assert body["device"] == call(port, "GET", "/v1/info")[2]["device"]
    assert body["stats"]["throughput"] == pytest.approx(4 / (body["stats"]["mean_ms"] / 1e3))


def _fuzz_case(rng: random.Random, small: bytes) -> tuple[str, bytes, set[int | None]]:
    """One random request as raw bytes, with the answers it may get (None: closed without an answer)."""

    def request(
        body: bytes, headers: list[tuple[str, str]], path: str = f"/v1/measure?{QUICK_QUERY}", method: str = "POST"
    ) -> bytes:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode("latin-1")
        head += b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers)
        return head + b"\r\n" + body

    auth = ("Authorization", f"Bearer {TOKEN}")
    kind = rng.choice(["random", "truncated", "mutated", "auth", "length", "query", "route", "raw", "chunked"])
    if kind == "random":
        body = rng.randbytes(rng.randint(0, 3000))
        return kind, request(body, [auth, ("Content-Length", str(len(body)))]), {400}
    if kind == "truncated":
        body = small[: rng.randrange(len(small))]
        return kind, request(body, [auth, ("Content-Length", str(len(body)))]), {400}
    if kind == "mutated":
        body = bytearray(small)
        for _ in range(rng.randint(1, 8)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        return kind, request(bytes(body), [auth, ("Content-Length", str(len(body)))]), {200, 400}
    if kind == "auth":
        value = rng.choice(
            [
                "",
                "Bearer",
                "Bearer ",
                "Basic dXNlcjpwYXNz",
                f"Basic {TOKEN}",
                f"Bearer {TOKEN[::-1]}",
                f"Bearer  {TOKEN}x",
                "Bearer " + "A" * 4000,
                "Bearer " + rng.randbytes(40).hex(),
                "Bearer " + "".join(chr(rng.randint(0x80, 0xFF)) for _ in range(20)),
            ]
        )
        return kind, request(small, [("Authorization", value), ("Content-Length", str(len(small)))]), {401}
    if kind == "length":
        value = rng.choice(["-1", "abc", "1e3", "0x10", "", " ", "99999999999999999999999", "10, 20", "+5"])
        return kind, request(small, [auth, ("Content-Length", value)]), {400, 413, None}
    if kind == "query":
        keys = ["threads", "batch_size", "min_repeats", "target_rel_ci", "max_cv", "thread", "", "%00", "a[]", "é"]
        values = ["1", "2", "3", "0", "-1", "", "nan", "inf", "1e999", "0x10", "abc", "\u0663", "1.5", "%ff", "1_0"]
        extra = "&".join(
            f"{rng.choice(keys)}={urllib.parse.quote(rng.choice(values))}" for _ in range(rng.randint(1, 3))
        )
        return (
            kind,
            request(small, [auth, ("Content-Length", str(len(small)))], path=f"/v1/measure?{QUICK_QUERY}&{extra}"),
            {200, 400},
        )
    if kind == "route":
        method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
        path = rng.choice(
            [
                "/v1/info",
                "/v1/measure",
                "/",
                "/v1",
                "/v1/../v1/info",
                "//v1/info",
                "/docs",
                "/openapi.json",
                "/v1/info?x=1",
                "/%00",
                "/v1/measure/../../etc/passwd",
            ]
        )
        return kind, request(b"", [auth, ("Content-Length", "0")], path, method), {200, 400, 401, 404, 405}
    if kind == "raw":
        data = rng.choice(
            [
                rng.randbytes(rng.randint(1, 500)) + b"\r\n\r\n",
                b"GET /\r\n\r\n",
                b"POST /v1/measure HTTP/1.1\r\n" + b"X: " + b"y" * 70_000 + b"\r\n\r\n",
                b"GET /v1/info HTTP/9.9\r\n\r\n",
                b"\r\n\r\n",
                b"POST /v1/measure HTTP/1.1\r\nHost\r\n\r\n",
            ]
        )
        return kind, data, {400, 401, 404, 405, 413, 431, 505, None}
    chunk = rng.choice([b"zz\r\nabc\r\n0\r\n\r\n", b"5\r\nab\r\n0\r\n\r\n", b"-1\r\n\r\n", b"1\r\n\x08\r\n0\r\n\r\n"])
    return kind, request(chunk, [auth, ("Transfer-Encoding", "chunked")]), {400, None}


def test_fuzzed_requests_get_4xx_and_the_agent_keeps_answering(port, small):
    rng = random.Random(20240611)
    seen: dict[str, set] = {}
    for i in range(300):
        kind, data, allowed = _fuzz_case(rng, small)
        status = raw_exchange(port, data)
        assert status in allowed, (i, kind, status, data[:200])
        seen.setdefault(kind, set()).add(status)
    assert len(seen) == 9 and 200 in seen["mutated"] | seen["query"]  # every kind ran, and valid ones were timed
    wait_for(lambda: in_flight(port) == 0, timeout=10, every=0.05)
    assert call(port, "GET", "/v1/info")[0] == 200
    assert AgentClient(f"http://127.0.0.1:{port}", TOKEN).measure(small, QUICK).p50_ms > 0


def token_file(folder, token: str = TOKEN, mode: int = 0o600):
    path = folder / "token"
    path.write_text(f"  {token}\n")
    path.chmod(mode)
    return path


def start_agent(folder, port: int, **options) -> subprocess.Popen:
    """`serve` in its own process, as `slimsweep agent` runs it."""
    args = ", ".join(f"{k}={v!r}" for k, v in {"port": port, "token_file": str(token_file(folder)), **options}.items())
    return subprocess.Popen(
        [sys.executable, "-c", f"from evaluators.agent import serve; serve({args})"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_up(process: subprocess.Popen, client: AgentClient) -> None:
    def up() -> bool:
        assert process.poll() is None, process.stderr.read().decode()
        try:
            return client.info()["agent"]["protocol"] == 1
        except SlimsweepError:
            return False

    wait_for(up, timeout=60, every=0.1)


def children(pid: int) -> list[int]:
    """The live processes whose parent is pid (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if entry.name.isdigit() and fields[1] == str(pid) and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def square(size: int) -> bytes:
    """X @ X on a (batch, size, size) input, no weights: milliseconds per run, a few hundred bytes of model."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "input"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", size, size])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_serve_reads_the_token_file_and_stops_a_warm_up_that_runs_too_long(tmp_path, small):
    port = free_port()
    process = start_agent(tmp_path, port, measure_timeout=30.0)
    client = AgentClient(f"http://127.0.0.1:{port}", TOKEN, timeout=60)
    try:
        wait_up(process, client)
        # 10,000 warm-up runs of a model that takes milliseconds: far past 3 x max_seconds, so it is stopped.
        with pytest.raises(SlimsweepError, match="did not finish within 1 s of loading"):
            client.measure(square(256), TimingSettings(warmup=10_000, min_repeats=1, max_seconds=0.1))
        assert client.measure(small, QUICK).p50_ms > 0  # the worker was restarted
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_worker_ends_with_a_sigkilled_agent(tmp_path, small):
    port = free_port()
    process = start_agent(tmp_path, port)
    try:
        wait_up(process, AgentClient(f"http://127.0.0.1:{port}", TOKEN, timeout=60))
        assert AgentClient(f"http://127.0.0.1:{port}", TOKEN).measure(small, QUICK).p50_ms > 0
        spawned = children(process.pid)
        assert spawned  # the worker (and multiprocessing's helper)
    finally:
        process.kill()
        process.wait(timeout=30)
    wait_for(lambda: all(gone(pid) for pid in spawned), timeout=30, every=0.1)


def test_an_agent_that_is_not_running_is_reported_unreachable():
    closed = free_port()
    with pytest.raises(SlimsweepError, match="not reachable"):
        AgentClient(f"http://127.0.0.1:{closed}", TOKEN, timeout=5).info()
    with pytest.raises(ConfigError, match="http"):
        AgentClient("jetson.local:8470", TOKEN)


def test_token_and_config_are_checked_before_serving(tmp_path):
    assert read_token(token_file(tmp_path, "\n  abc ")) == "abc"
    (tmp_path / "blank").write_text(" \n")
    (tmp_path / "blank").chmod(0o600)
    with pytest.raises(ConfigError, match="empty"):
        read_token(tmp_path / "blank")
    with pytest.raises(ConfigError, match="cannot be read"):
        read_token(tmp_path / "missing")
    for mode in (0o644, 0o640, 0o604, 0o660):
        with pytest.raises(ConfigError, match=r"others may read the secret; run `chmod 600"):
            read_token(token_file(tmp_path, TOKEN, mode))
    for short in ("", "t", "x" * 15):
        with pytest.raises(ConfigError, match="at least 16"):
            AgentConfig(token=short)
    with pytest.raises(ConfigError, match="queue_size"):
        AgentConfig(token=TOKEN, queue_size=0)
    with pytest.raises(ConfigError, match="NoSuchExecutionProvider"):
        AgentConfig(token=TOKEN, providers=("NoSuchExecutionProvider",))


@pytest.mark.parametrize(
    "token, mode, says",
    [
        (TOKEN, 0o644, "others may read"),
        ("short-token", 0o600, "at least 16"),
    ],
)
def test_slimsweep_agent_refuses_to_start_on_a_weak_token_file(tmp_path, token, mode, says):
    path = token_file(tmp_path, token, mode)
    done = subprocess.run(
        [str(BIN / "slimsweep"), "agent", "--port", str(free_port()), "--token-file", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert says in done.stderr and "Traceback" not in done.stderr


def _bad_values(name: str, kind: type) -> list[str]:
    """Values every timing parameter must refuse: over its limit, huge, negative, NaN/inf, non-ASCII digits, and
    for an integer one a float."""
    limit = agent.TIMING_LIMITS[name]
    values = [
        str(limit * 2 if kind is int else limit * 1.5),
        "1" + "0" * 30,
        "1e308",
        "-1",
        "-1e9",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "1e999",
        "\u0663",
        "\uff11",
        "1\u00a0",
        "ｉｎｆ",
    ]
    if kind is int:
        values += ["1.5", "2.0", "1e3", "0x10"]
    return values


def test_every_timing_parameter_refuses_bad_values_with_400_and_nothing_left_running(port, small):
    timing = {f.name: type(f.default) for f in dataclasses.fields(TimingSettings)}
    assert set(timing) == set(agent.TIMING_LIMITS)  # every parameter has a limit
    refused = 0
    for name, kind in timing.items():
        for value in _bad_values(name, kind):
            query = urllib.parse.urlencode({name: value})
            status, _, body = call(port, "POST", f"/v1/measure?{query}", small)
            assert status == 400, (name, value, body)
            assert name in body["error"]
            refused += 1
    assert refused > 100
    assert in_flight(port) == 0
    # The issue's own case: a time cap of weeks is refused up front, and the agent answers the next caller.
    status, _, body = call(port, "POST", "/v1/measure?max_seconds=1100000", small)
    assert status == 400 and "over this agent's limit" in body["error"]
    assert AgentClient(f"http://127.0.0.1:{port}", TOKEN).measure(small, QUICK).p50_ms > 0


def test_a_failure_while_waiting_for_the_worker_never_hands_its_answer_to_the_next_request(port, small, monkeypatch):
    real = agent_worker.wait_for_reply
    calls = []

    def fail_once(conn, seconds):
        calls.append(seconds)
        if len(calls) == 1:
            raise OverflowError("timeout value is too large")  # what a huge wait once raised
        return real(conn, seconds)

    monkeypatch.setattr(agent_worker, "wait_for_reply", fail_once)
    status, _, body = call(port, "POST", f"/v1/measure?{QUICK_QUERY}", small)
    assert status == 500 and "restarted" in body["error"]
    # The next caller sends a model that must be refused: it gets its own 400, not the stranded 200.
    status, _, body = call(port, "POST", f"/v1/measure?{QUICK_QUERY}", _custom_op())
    assert status == 400 and "ONNX Runtime cannot load" in body["error"]
    # And a good request gets statistics of its own settings (batch 3, at most 20 repeats).
    status, _, body = call(port, "POST", f"/v1/measure?{QUICK_QUERY}&batch_size=3", small)
    assert status == 200 and body["stats"]["repeats"] <= 20
    assert body["stats"]["throughput"] == pytest.approx(3 / (body["stats"]["mean_ms"] / 1e3))
    assert in_flight(port) == 0


def _constant(elements: int) -> bytes:
    """A model of about 200 bytes whose output is a float tensor of `elements` zeros."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [1, elements])
    graph = helper.make_graph(
        [
            helper.make_node("ConstantOfShape", ["shape"], ["big"]),
            helper.make_node("Add", ["input", "big"], ["logits"]),
        ],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", elements])],
        [shape],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_a_model_or_batch_over_the_workers_memory_limit_gets_400(port, small):
    bomb = _constant(2**31)  # 8 GiB of zeros from a model of a few hundred bytes
    assert len(bomb) < 400
    status, _, body = call(port, "POST", f"/v1/measure?{QUICK_QUERY}", bomb)
    assert status == 400 and "memory" in body["error"], body
    # A batch whose input alone is 4 GiB on a model that takes a (batch, 1024, 256) input.
    status, _, body = call(port, "POST", f"/v1/measure?{QUICK_QUERY}&batch_size=4096", square_input(1024, 256))
    assert status == 400 and "memory" in body["error"], body
    assert in_flight(port) == 0
    assert AgentClient(f"http://127.0.0.1:{port}", TOKEN).measure(small, QUICK).p50_ms > 0


def square_input(rows: int, cols: int) -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", rows, cols])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", rows, cols])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_a_client_that_goes_away_cancels_its_measurement(port, small):
    # A minute-long measurement; the client hangs up as soon as it is accepted.
    query = urllib.parse.urlencode(
        {"warmup": 0, "min_repeats": 10**5, "max_repeats": 10**5, "max_seconds": 60, "max_cv": 100}
    )
    head = (
        f"POST /v1/measure?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Length: {len(small)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head + small)
        wait_for(lambda: in_flight(port) == 1, timeout=10, every=0.02)
    wait_for(lambda: in_flight(port) == 0, timeout=30, every=0.1)  # long before the minute is up
    assert AgentClient(f"http://127.0.0.1:{port}", TOKEN).measure(small, QUICK).p50_ms > 0


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every request: a redirect to `location`, or (location None) records the headers it got."""

    location: str | None = None
    seen: list = []

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).seen.append(dict(self.headers))
        if self.location:
            self.send_response(307)
            self.send_header("Location", self.location)
            self.end_headers()
        else:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

    do_POST = do_GET

    def log_message(self, *args):
        pass


def _http_server(handler) -> http.server.HTTPServer:
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_the_client_never_sends_its_token_across_a_redirect_to_another_origin():
    elsewhere = _http_server(type("Elsewhere", (_Recorder,), {"location": None, "seen": []}))
    target = f"http://127.0.0.1:{elsewhere.server_port}/v1/info"
    redirector = _http_server(type("Redirector", (_Recorder,), {"location": target, "seen": []}))
    try:
        client = AgentClient(f"http://127.0.0.1:{redirector.server_port}", TOKEN, timeout=10)
        for call_it in (client.info, lambda: client.measure(b"model", QUICK)):
            with pytest.raises(SlimsweepError, match="another origin; the token is never sent there"):
                call_it()
        assert [h["Authorization"] for h in redirector.RequestHandlerClass.seen] == [f"Bearer {TOKEN}"] * 2
        assert elsewhere.RequestHandlerClass.seen == []  # the other port never heard from the client
    finally:
        elsewhere.shutdown()
        redirector.shutdown()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "slimsweep test agent")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "agent.crt", folder / "agent.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def test_tls_on_loopback_is_served_and_verified(tmp_path, small, monkeypatch):
    cert, key = _self_signed(tmp_path)
    port = free_port()
    process = start_agent(tmp_path, port, tls_cert=str(cert), tls_key=str(key))
    trusting = AgentClient(f"https://127.0.0.1:{port}", TOKEN, timeout=60, ca_file=str(cert))
    try:
        wait_up(process, trusting)
        assert trusting.measure(small, QUICK).p50_ms > 0
        with pytest.raises(SlimsweepError, match="TLS certificate is not trusted"):
            AgentClient(f"https://127.0.0.1:{port}", TOKEN, timeout=30).info()  # the system CAs do not know it
        with pytest.raises(SlimsweepError):
            AgentClient(f"http://127.0.0.1:{port}", TOKEN, timeout=30).info()  # no plain HTTP on the TLS port
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # how a sweep's remote target trusts a self-signed agent
        assert AgentClient(f"https://127.0.0.1:{port}", TOKEN, timeout=30).info()["agent"]["protocol"] == 1
    finally:
        process.terminate()
        process.wait(timeout=30)
    with pytest.raises(ConfigError, match="both --tls-cert and --tls-key"):
        agent.serve(port=port, token_file=str(token_file(tmp_path)), tls_cert=str(cert))
