"""The device agent: a small HTTP service on a target device that times the ONNX models it is sent.

It times with `evaluators.latency.measure`, the same method as a local target, so a remote p50 and a local p50 are
comparable. What it receives is untrusted: it is only ever parsed as ONNX and run by ONNX Runtime (no pickle, no
custom-op libraries, no external-data files), and it runs in a child process, so a model that crashes or hangs the
runtime costs that one request, not the agent.

Protocol 1 (every endpoint wants `Authorization: Bearer <token>`):
  GET  /v1/info     what the device is, its runtimes, the agent's limits and how many measurements are in flight
  POST /v1/measure  body: the ONNX model (application/octet-stream); query: TimingSettings fields; answer: the stats
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import difflib
import hmac
import math
import multiprocessing
import multiprocessing.connection
import os
import platform
import signal
import threading
from collections.abc import Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastapi
import onnx
import onnxruntime as ort
from fastapi.responses import JSONResponse
from starlette.requests import Request

from evaluators.errors import ConfigError, SlimsweepError
from evaluators.latency import TimingSettings, measure
from evaluators.runtime import make_session

PROTOCOL = 1
# A body that has not arrived within this many seconds frees its queue slot (a stalled upload must not hold it).
_BODY_SECONDS = 120.0
# An oversized upload is read and thrown away up to this multiple of the limit before the 413, so an ordinary client
# that sends the whole body before reading the answer sees the 413 rather than a reset connection.
_DRAIN_FACTOR = 4
_TIMING_FIELDS = {field.name: type(field.default) for field in dataclasses.fields(TimingSettings)}


@dataclass(frozen=True)
class AgentConfig:
    """What the agent accepts: its token, the largest model, how many measurements may wait, the providers it uses."""

    token: str
    max_model_bytes: int = 64_000_000
    queue_size: int = 4  # measurements waiting or running; one more -> 503
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    measure_timeout: float = 300.0  # seconds for loading and warm-up, on top of 2 x max_seconds, before it is stopped

    def __post_init__(self) -> None:
        if not self.token:
            raise ConfigError("AgentConfig.token is empty; the agent refuses to run without a token")
        for name, minimum in {"max_model_bytes": 1, "queue_size": 1, "measure_timeout": 1}.items():
            if getattr(self, name) < minimum:
                raise ConfigError(f"AgentConfig.{name} = {getattr(self, name)!r}; it must be >= {minimum}")
        available = ort.get_available_providers()
        unknown = [p for p in self.providers if p not in available]
        if not self.providers or unknown:
            raise ConfigError(f"AgentConfig.providers = {list(self.providers)!r}: {unknown or 'none given'} "
                              f"not available here; ONNX Runtime offers {available}")


def read_token(path: str | os.PathLike) -> str:
    """The bearer token stored in a file, without surrounding whitespace."""
    try:
        token = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"token file {os.fspath(path)!r} cannot be read ({exc}); "
                          "write the agent's token into it (e.g. `openssl rand -hex 32 > FILE`)") from None
    if not token:
        raise ConfigError(f"token file {os.fspath(path)!r} is empty; write the agent's token into it")
    return token


def device_info() -> dict[str, Any]:
    """What this device is, as the agent reports it."""
    return {
        "hostname": platform.node(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "system": platform.system(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def create_app(config: AgentConfig) -> fastapi.FastAPI:
    """The agent's web application (serve it with any ASGI server; `serve` uses uvicorn)."""
    device = device_info()
    gate = _Gate(config.queue_size)
    worker = _Worker()
    # One thread talks to the one worker process: measurements run one at a time and never on the event loop.
    runner = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="slimsweep-agent-measure")

    @asynccontextmanager
    async def lifespan(_: fastapi.FastAPI):
        runner.submit(worker.start)  # pays the child's start-up before the first model arrives
        yield
        runner.shutdown(wait=False, cancel_futures=True)
        worker.stop()

    # No docs or schema endpoints: nothing answers without the token except errors.
    app = fastapi.FastAPI(title="slimsweep device agent", lifespan=lifespan, docs_url=None, redoc_url=None,
                          openapi_url=None)

    @app.exception_handler(_Refusal)
    async def refused(_: Request, exc: _Refusal) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.get("/v1/info")
    async def info(request: Request) -> dict[str, Any]:
        _authorize(request, config.token)
        return {
            "device": device,
            "runtimes": {"onnxruntime": ort.__version__, "onnx": onnx.__version__,
                         "providers": ort.get_available_providers()},
            "limits": {"max_model_bytes": config.max_model_bytes, "queue_size": config.queue_size},
            "queue": {"in_flight": gate.in_flight},
            "agent": {"protocol": PROTOCOL, "providers": list(config.providers)},
        }

    @app.post("/v1/measure")
    async def measure_model(request: Request) -> dict[str, Any]:
        _authorize(request, config.token)
        declared = _declared_length(request)
        if declared is not None and declared > config.max_model_bytes:
            await _drain(request, declared, config.max_model_bytes)
            raise _too_large(config.max_model_bytes, f"Content-Length is {declared} bytes")
        settings = _timing_settings(request.query_params)
        if not gate.try_enter():
            raise _Refusal(503, f"the agent is busy: {config.queue_size} measurement(s) already accepted; retry later",
                           {"Retry-After": str(math.ceil(2 * settings.max_seconds) + 1)})
        try:
            body = await _read_body(request, config.max_model_bytes)
            job = runner.submit(worker.run, body, settings, config.providers,
                                config.measure_timeout + 2 * settings.max_seconds)
        except BaseException:
            gate.leave()
            raise
        # The slot is freed when the measurement ends, even if this request is abandoned before that.
        job.add_done_callback(lambda _: gate.leave())
        outcome = await asyncio.wrap_future(job)
        if "error" in outcome:
            raise _Refusal(400, outcome["error"])
        return {"stats": outcome["stats"], "providers": outcome["providers"], "device": device}

    return app


def serve(*, port: int, token_file: str, host: str = "127.0.0.1", **config_overrides: Any) -> None:
    """Run the agent until stopped (blocking), with the token read from token_file."""
    import uvicorn

    config = AgentConfig(token=read_token(token_file), **config_overrides)
    # A short graceful shutdown: Ctrl-C should not wait for a measurement that may run for minutes.
    uvicorn.run(create_app(config), host=host, port=port, log_level="info", timeout_graceful_shutdown=5)


def _timing_settings(query: Mapping[str, str] | Any) -> TimingSettings:
    """TimingSettings from the request's query parameters; a bad one is a 400 that names it."""
    values: dict[str, Any] = {}
    for name in set(query.keys()):
        if name not in _TIMING_FIELDS:
            near = difflib.get_close_matches(name, list(_TIMING_FIELDS), n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise _Refusal(400, f"unknown query parameter {name!r}; {hint}the parameters are {list(_TIMING_FIELDS)}")
        given = query.getlist(name) if hasattr(query, "getlist") else [query[name]]
        if len(given) != 1:
            raise _Refusal(400, f"query parameter {name!r} is given {len(given)} times; give it once")
        values[name] = _number(name, given[0], _TIMING_FIELDS[name])
    try:
        return TimingSettings(**values)
    except ConfigError as exc:
        raise _Refusal(400, f"bad query parameter: {exc}") from None


def _number(name: str, text: str, kind: type) -> int | float:
    # isascii: Python's int() and float() also read other scripts' digits, which no client means to send.
    try:
        if not text.isascii():
            raise ValueError
        value = kind(text)
    except (ValueError, OverflowError):
        value = None
    if value is None or (kind is float and not math.isfinite(value)):
        what = "an integer" if kind is int else "a finite number"
        raise _Refusal(400, f"query parameter {name!r} = {text[:40]!r} is not {what}")
    return value


class _Refusal(Exception):
    """An answer other than 200, with the message the client gets as {"error": ...}."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def _authorize(request: Request, token: str) -> None:
    # Starlette decodes header values as latin-1, so encoding them back gives the bytes that were sent.
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = token.encode("utf-8")
    sent = given.strip().encode("latin-1", errors="replace")
    # compare_digest even for a wrong scheme, so the answer takes the same time whatever was wrong.
    matches = hmac.compare_digest(sent, expected)
    if scheme.lower() != "bearer" or not matches:
        raise _Refusal(401, "missing or wrong token: send `Authorization: Bearer <token>`",
                       {"WWW-Authenticate": 'Bearer realm="slimsweep-agent"'})


def _declared_length(request: Request) -> int | None:
    # uvicorn has already refused a Content-Length that is not a non-negative integer; another server may not have.
    text = request.headers.get("content-length", "")
    return int(text) if text.isascii() and text.isdigit() else None


def _too_large(limit: int, what: str) -> _Refusal:
    return _Refusal(413, f"the model is too large: {what}, and this agent accepts at most {limit} bytes",
                    {"Connection": "close"})


async def _read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing it (413) as soon as it passes limit bytes, and never holding more than that."""
    body = bytearray()
    complete = False

    async def read() -> None:
        nonlocal complete
        while not complete:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                raise _Refusal(400, "the client disconnected before the body was complete")
            body.extend(message.get("body", b""))
            complete = not message.get("more_body", False)
            if len(body) > limit:
                raise _too_large(limit, "the body passed that size")

    try:
        await asyncio.wait_for(read(), _BODY_SECONDS)
    except TimeoutError:
        raise _Refusal(400, f"the body did not arrive within {_BODY_SECONDS:.0f} s") from None
    except _Refusal as refusal:
        if refusal.status == 413 and not complete:  # once complete, receive() would wait for the disconnect
            body.clear()
            await _drain(request, _DRAIN_FACTOR * limit, limit)
        raise
    return bytes(body)


async def _drain(request: Request, declared: int, limit: int) -> None:
    """Read and drop the rest of an oversized body when that is cheap, so the client gets to read the 413."""
    if declared > _DRAIN_FACTOR * limit or "100-continue" in request.headers.get("expect", "").lower():
        return  # too big to be worth reading, or the client waits for our go-ahead and will not send it

    async def drop() -> None:
        received = 0
        while received <= _DRAIN_FACTOR * limit:
            message = await request.receive()
            received += len(message.get("body", b""))
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                return

    try:
        await asyncio.wait_for(drop(), _BODY_SECONDS)
    except TimeoutError:
        pass  # the connection is closed after the 413 anyway


class _Gate:
    """How many measurements are accepted (waiting or running); entering never waits."""

    def __init__(self, size: int) -> None:
        self.size, self.in_flight = size, 0
        self._lock = threading.Lock()  # left from the measurement thread's done-callback, entered on the event loop

    def try_enter(self) -> bool:
        with self._lock:
            if self.in_flight >= self.size:
                return False
            self.in_flight += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


class _Worker:
    """One child process that runs ONNX Runtime on what the agent receives, restarted when a model kills it."""

    def __init__(self) -> None:
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: multiprocessing.connection.Connection | None = None

    def start(self) -> None:
        if self._process is not None and self._process.is_alive():
            return
        self.stop()
        # spawn: a fresh interpreter, not a fork of a process that runs an event loop and threads.
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(target=_worker_main, args=(theirs,), name="slimsweep-agent-worker", daemon=True)
        process.start()
        theirs.close()
        self._process, self._conn = process, ours

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join()
            self._conn.close()
        self._process = self._conn = None

    def run(self, model: bytes, settings: TimingSettings, providers: tuple[str, ...], timeout: float) -> dict:
        """{"stats", "providers"} of one measurement, or {"error"} saying why the model could not be measured."""
        self.start()
        try:
            self._conn.send((model, dataclasses.asdict(settings), providers))
            if not self._conn.poll(timeout):
                self.stop()
                return {"error": f"the measurement did not finish within {timeout:.0f} s and was stopped; "
                                 "lower warmup, max_repeats or max_seconds, or send a smaller model"}
            return self._conn.recv()
        except (EOFError, OSError):
            self._process.join(timeout=5)
            code = self._process.exitcode
            self.stop()
            return {"error": f"ONNX Runtime crashed on this model (worker exit code {code}); the agent restarted it"}


def _worker_main(conn: multiprocessing.connection.Connection) -> None:
    """The child's loop: one model in, one outcome out, until the agent closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on the agent's terminal is the agent's to handle
    while True:
        try:
            model, settings, providers = conn.recv()
        except EOFError:
            return
        conn.send(_measure_untrusted(model, TimingSettings(**settings), providers))


def _measure_untrusted(model: bytes, settings: TimingSettings, providers: tuple[str, ...]) -> dict:
    """Check that model is a self-contained ONNX model, then time it; any failure is the model's, told back as text."""
    try:
        _check_model(model)
        session = make_session(model, threads=settings.threads, providers=providers)
        used = session.get_providers()
        del session
        if used[:1] != [providers[0]]:
            # ONNX Runtime falls back to the CPU with only a log line; a CPU timing must not pass for the device's.
            return {"error": f"ONNX Runtime fell back to {used} for this model instead of {providers[0]}, "
                             "so it was not timed"}
        stats = dataclasses.asdict(measure(model, settings, providers=providers))
    except _BadModel as exc:
        return {"error": str(exc)}
    except SlimsweepError as exc:
        return {"error": f"the model cannot be timed: {exc}"}
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises many types; each is this model's failure, reported
        return {"error": f"ONNX Runtime cannot load or run the model: {type(exc).__name__}: {str(exc)[:2000]}"}
    if not all(math.isfinite(v) for v in stats.values() if isinstance(v, float)):
        return {"error": f"the measurement gave non-finite figures {stats}; the model runs too fast to time"}
    return {"stats": stats, "providers": used}


class _BadModel(Exception):
    pass


def _check_model(model: bytes) -> None:
    if not model:
        raise _BadModel("the body is empty; send the ONNX model's bytes as the body")
    if model[4:8] == b"ORTM":  # ONNX Runtime would load an ORT-format flatbuffer; only ONNX protobufs are accepted
        raise _BadModel("the body is an ORT-format model; send the ONNX (protobuf) model instead")
    try:
        proto = onnx.load_model_from_string(model)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, or whatever else a corrupt body provokes
        raise _BadModel(f"the body is not an ONNX model: {exc}") from None
    external = [t.name for t in _tensors(proto) if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data]
    if external:
        raise _BadModel(f"the model refers to external data files for tensors {external[:5]}; the agent reads no "
                        "files, so send a self-contained model (onnx.save(..., save_as_external_data=False))")
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # noqa: BLE001 - ValidationError, or a C++ error the checker passes on
        raise _BadModel(f"the body is not a valid ONNX model: {str(exc)[:2000]}") from None


def _tensors(proto: onnx.ModelProto):
    """Every tensor stored in the model: initializers, sparse ones, and those in attributes, in every (sub)graph."""
    graphs = [proto.graph]
    nodes = [node for function in proto.functions for node in function.node]
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            yield from graph.initializer
            for sparse in graph.sparse_initializer:
                yield from (sparse.values, sparse.indices)
            nodes.extend(graph.node)
            continue
        for attribute in nodes.pop().attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for sparse in [attribute.sparse_tensor, *attribute.sparse_tensors]:
                yield from (sparse.values, sparse.indices)
            if attribute.HasField("g"):
                graphs.append(attribute.g)
            graphs.extend(attribute.graphs)
