"""The device agent: a small HTTP service on a target device that times the ONNX models it is sent.

It times with `evaluators.latency.measure`, the same method as a local target, so a remote p50 and a local p50 are
comparable. What it receives is untrusted: it is only ever parsed as ONNX and run by ONNX Runtime (no pickle, no
custom-op libraries, no external-data files), and it runs in a child process with a memory limit and a deadline per
request, so a model that crashes, hangs or floods the runtime costs that one request, not the agent. Every timing
setting has an upper bound (TIMING_LIMITS); each reply from the child carries its request's id.

Protocol 1 (every endpoint wants `Authorization: Bearer <token>`):
  GET  /v1/info     what the device is, its runtimes, the agent's limits and how many measurements are in flight
  POST /v1/measure  body: the ONNX model (application/octet-stream); query: TimingSettings fields; answer: the stats
  POST /v1/outputs  body: an npz of 'model' (the ONNX bytes, uint8) and 'inputs' (at most MAX_OUTPUT_ROWS rows);
                    query: threads (and max_seconds: the run's deadline); answer: the first output, base64 with its
                    dtype and shape. Size limit, token, queue and deadlines as for /v1/measure.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hmac
import math
import os
import platform
import stat
import sys
import threading
import time
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

from evaluators.agent_worker import MAX_OUTPUT_BYTES, MAX_OUTPUT_ROWS, Job, Worker
from evaluators.errors import ConfigError, did_you_mean
from evaluators.latency import TimingSettings
from evaluators.remote import is_loopback

PROTOCOL = 1
# A body that has not arrived within this many seconds frees its queue slot (a stalled upload must not hold it).
_BODY_SECONDS = 120.0
# An oversized upload is read and thrown away up to this multiple of the limit before the 413, so an ordinary client
# that sends the whole body before reading the answer sees the 413 rather than a reset connection.
_DRAIN_FACTOR = 4
_TIMING_FIELDS = {field.name: type(field.default) for field in dataclasses.fields(TimingSettings)}
# The most a request may ask of the device (beyond: 400). Threads beyond the cores only measure contention; the rest
# keep one request from holding the device for long or growing the worker without end.
TIMING_LIMITS: dict[str, int | float] = {
    "threads": os.cpu_count() or 1,
    "batch_size": 4096,
    "warmup": 10_000,
    "min_repeats": 100_000,
    "max_repeats": 100_000,
    "max_seconds": 60.0,
    "target_rel_ci": 1.0,
    "max_cv": 100.0,
}
MIN_TOKEN_BYTES = 16


@dataclass(frozen=True)
class AgentConfig:
    """What the agent accepts: its token, the largest model, how many measurements may wait, the providers it uses."""

    token: str
    max_model_bytes: int = 64_000_000
    queue_size: int = 4  # measurements waiting or running; one more -> 503
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    # Seconds to check and load the model; once loaded, warm-up, repeat loop and its retry get 3 x max_seconds
    # (plus the load time again, for the session that measures). Past either deadline the worker is killed: 400.
    measure_timeout: float = 60.0
    max_memory_mb: int = 4096  # the worker's address space; a model or batch that needs more gets 400

    def __post_init__(self) -> None:
        if len(self.token.encode("utf-8")) < MIN_TOKEN_BYTES:
            raise ConfigError(
                f"the agent's token is {len(self.token.encode('utf-8'))} bytes long; it must be at "
                f"least {MIN_TOKEN_BYTES} (e.g. `openssl rand -hex 32 > FILE`)"
            )
        for name, minimum in {
            "max_model_bytes": 1,
            "queue_size": 1,
            "measure_timeout": 1,
            "max_memory_mb": 256,
        }.items():
            if getattr(self, name) < minimum:
                raise ConfigError(f"AgentConfig.{name} = {getattr(self, name)!r}; it must be >= {minimum}")
        available = ort.get_available_providers()
        unknown = [p for p in self.providers if p not in available]
        if not self.providers or unknown:
            raise ConfigError(
                f"AgentConfig.providers = {list(self.providers)!r}: {unknown or 'none given'} "
                f"not available here; ONNX Runtime offers {available}"
            )


def read_token(path: str | os.PathLike) -> str:
    """The bearer token stored in a file only its owner can read, without surrounding whitespace."""
    file = Path(path).expanduser()
    try:
        mode = file.stat().st_mode
        token = file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"token file {os.fspath(path)!r} cannot be read ({exc}); "
            "write the agent's token into it (e.g. `openssl rand -hex 32 > FILE`)"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"token file {os.fspath(path)!r} has mode {stat.filemode(mode)}: others may read the "
            f"secret; run `chmod 600 {os.fspath(path)}`"
        )
    if not token:
        raise ConfigError(f"token file {os.fspath(path)!r} is empty; write the agent's token into it")
    return token


def check_key_file(path: str | os.PathLike) -> None:
    """Refuse a TLS private key that group or others may read or write (as ssh refuses such a key)."""
    mode = Path(path).expanduser().stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"--tls-key {os.fspath(path)!r} has mode {stat.filemode(mode)}: others may read the private key; "
            f"run `chmod 600 {os.fspath(path)}`"
        )


def plain_http_warning(host: str, *, tls: bool) -> str | None:
    """The line to warn with when the agent serves its token-guarded API without TLS beyond loopback, else None."""
    if tls or is_loopback(host):
        return None
    return (
        f"serving plain HTTP on {host}: the token and the models travel unencrypted and anyone on the network "
        "path can read the token; give --tls-cert and --tls-key, or serve on 127.0.0.1 behind an SSH tunnel"
    )


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
    worker = Worker(config.max_memory_mb)
    # One thread talks to the one worker process: measurements run one at a time and never on the event loop.
    runner = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="slimsweep-agent-measure")

    @asynccontextmanager
    async def lifespan(_: fastapi.FastAPI):
        runner.submit(worker.start)  # pays the child's start-up before the first model arrives
        yield
        gate.cancel_all()
        runner.shutdown(wait=False, cancel_futures=True)
        worker.stop()

    # No docs or schema endpoints: nothing answers without the token except errors.
    app = fastapi.FastAPI(
        title="slimsweep device agent", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )

    @app.exception_handler(_Refusal)
    async def refused(_: Request, exc: _Refusal) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.get("/v1/info")
    async def info(request: Request) -> dict[str, Any]:
        _authorize(request, config.token)
        return {
            "device": device,
            "runtimes": {
                "onnxruntime": ort.__version__,
                "onnx": onnx.__version__,
                "providers": ort.get_available_providers(),
            },
            "limits": {
                "max_model_bytes": config.max_model_bytes,
                "queue_size": config.queue_size,
                "max_memory_mb": config.max_memory_mb,
                "timing": TIMING_LIMITS,
                "outputs": {"max_rows": MAX_OUTPUT_ROWS, "max_bytes": MAX_OUTPUT_BYTES},
            },
            "queue": {"in_flight": gate.in_flight},
            "agent": {"protocol": PROTOCOL, "providers": list(config.providers)},
        }

    async def accepted(request: Request, kind: str) -> dict[str, Any]:
        """Authorize, bound, queue and run one request in the worker; its outcome, or the refusal."""
        _authorize(request, config.token)
        declared = _declared_length(request)
        if declared is not None and declared > config.max_model_bytes:
            await _drain(request, declared, config.max_model_bytes)
            raise _too_large(config.max_model_bytes, f"Content-Length is {declared} bytes")
        settings = _timing_settings(request.query_params)
        job = Job(settings, config.measure_timeout)
        if not gate.try_enter(job):
            raise _Refusal(
                503,
                f"the agent is busy: {config.queue_size} measurement(s) already accepted; retry later",
                {"Retry-After": str(gate.retry_after())},
            )
        try:
            body = await _read_body(request, config.max_model_bytes)
            future = runner.submit(worker.run, job, body, config.providers, kind)
        except BaseException:
            gate.leave(job)
            raise
        # The slot is freed when the measurement ends, or at once if it is cancelled before it starts.
        future.add_done_callback(lambda _: gate.leave(job))
        outcome = await _outcome(request, job, future)
        if "error" in outcome:
            raise _Refusal(outcome.get("status", 400), outcome["error"])
        return outcome

    @app.post("/v1/measure")
    async def measure_model(request: Request) -> dict[str, Any]:
        outcome = await accepted(request, "measure")
        return {"stats": outcome["stats"], "providers": outcome["providers"], "device": device}

    @app.post("/v1/outputs")
    async def outputs(request: Request) -> dict[str, Any]:
        # The inputs only: the labels stay with the driver, which scores the outputs itself.
        outcome = await accepted(request, "outputs")
        return {"outputs": outcome["outputs"], "providers": outcome["providers"], "device": device}

    return app


async def _outcome(request: Request, job: "Job", future: concurrent.futures.Future) -> dict:
    """The measurement's outcome; if the client goes away first, the measurement is cancelled (queued or running)."""
    waiting = asyncio.wrap_future(future)
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=0.25)
            if done:
                break
            if await request.is_disconnected():
                job.cancelled.set()
                future.cancel()  # not started yet: never starts; running: the worker sees the flag and is killed
                return {"error": "the client went away; the measurement was cancelled", "status": 499}
        return waiting.result()
    except asyncio.CancelledError:  # the server is stopping this request
        job.cancelled.set()
        future.cancel()
        raise
    except concurrent.futures.CancelledError:
        return {"error": "the measurement was cancelled", "status": 503}
    except Exception as exc:  # noqa: BLE001 - the agent's own failure: the worker was replaced, nothing stale kept
        return {
            "error": f"the agent failed while waiting for the measurement ({type(exc).__name__}); it was "
            "discarded and the worker restarted; retry",
            "status": 500,
        }


def serve(
    *,
    port: int,
    token_file: str,
    host: str = "127.0.0.1",
    tls_cert: str | None = None,
    tls_key: str | None = None,
    **config_overrides: Any,
) -> None:
    """Run the agent until stopped (blocking), with the token read from token_file; HTTPS when given a cert and key."""
    import uvicorn

    config = AgentConfig(token=read_token(token_file), **config_overrides)
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("give both --tls-cert and --tls-key (PEM files), or neither")
    for flag, path in {"--tls-cert": tls_cert, "--tls-key": tls_key}.items():
        if path is not None and not Path(path).expanduser().is_file():
            raise ConfigError(f"{flag}: {path!r} is not a file")
    if tls_key is not None:
        check_key_file(tls_key)
    tls = {"ssl_certfile": tls_cert, "ssl_keyfile": tls_key} if tls_cert else {}
    warning = plain_http_warning(host, tls=bool(tls))
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    # A short graceful shutdown: Ctrl-C should not wait for a measurement that may run for minutes.
    uvicorn.run(create_app(config), host=host, port=port, log_level="info", timeout_graceful_shutdown=5, **tls)


def _timing_settings(query: Mapping[str, str] | Any) -> TimingSettings:
    """TimingSettings from the request's query parameters; a bad one, or one over its limit, is a 400 that names it."""
    values: dict[str, Any] = {}
    for name in set(query.keys()):
        if name not in _TIMING_FIELDS:
            raise _Refusal(
                400,
                f"unknown query parameter {_cut(name)!r}{did_you_mean(name, _TIMING_FIELDS)}; "
                f"the parameters are {list(_TIMING_FIELDS)}",
            )
        given = query.getlist(name) if hasattr(query, "getlist") else [query[name]]
        if len(given) != 1:
            raise _Refusal(400, f"query parameter {name!r} is given {len(given)} times; give it once")
        values[name] = _number(name, given[0], _TIMING_FIELDS[name])
        if values[name] > TIMING_LIMITS[name]:
            raise _Refusal(
                400,
                f"query parameter {name!r} = {given[0][:40]!r} is over this agent's limit "
                f"{TIMING_LIMITS[name]!r}; the limits are in /v1/info",
            )
    try:
        return TimingSettings(**values)
    except ConfigError as exc:
        raise _Refusal(400, f"bad query parameter: {exc}") from None


def _cut(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


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
        raise _Refusal(
            401,
            "missing or wrong token: send `Authorization: Bearer <token>`",
            {"WWW-Authenticate": 'Bearer realm="slimsweep-agent"'},
        )


def _declared_length(request: Request) -> int | None:
    # uvicorn has already refused a Content-Length that is not a non-negative integer; another server may not have.
    text = request.headers.get("content-length", "")
    return int(text) if text.isascii() and text.isdigit() else None


def _too_large(limit: int, what: str) -> _Refusal:
    return _Refusal(
        413, f"the model is too large: {what}, and this agent accepts at most {limit} bytes", {"Connection": "close"}
    )


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
    """The measurements accepted (waiting or running); entering never waits."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._jobs: list[Job] = []
        self._lock = threading.Lock()  # left from the measurement thread's done-callback, entered on the event loop

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    def try_enter(self, job: Job) -> bool:
        with self._lock:
            if len(self._jobs) >= self.size:
                return False
            self._jobs.append(job)
            return True

    def leave(self, job: Job) -> None:
        with self._lock:
            if job in self._jobs:
                self._jobs.remove(job)

    def retry_after(self) -> int:
        """Whole seconds until a slot is sure to be free: when the measurement that runs now must have ended."""
        now = time.monotonic()
        with self._lock:
            left = [job.seconds_left(now) for job in self._jobs]
        return max(1, math.ceil(min(left, default=0)))

    def cancel_all(self) -> None:
        with self._lock:
            for job in self._jobs:
                job.cancelled.set()
