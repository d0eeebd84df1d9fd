"""The device agent's worker: the child process that checks and times what the agent receives (or runs a bounded
batch of inputs through it, for accuracy on the device), and the parent's handle on it. Every request carries an
id that its replies repeat, and any failure while waiting kills the child, so no request can ever read another's
answer. The child has a memory cap and ends when the agent ends.

The same child serves the local bench station and the accuracy pass (`Worker.call`, through evaluators/limits.py):
one function call at a time, under the memory cap and a deadline, the child replaced after a kill."""

from __future__ import annotations

import base64
import ctypes
import dataclasses
import io
import itertools
import math
import multiprocessing.connection
import os
import pickle
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable

import numpy as np
import onnx

from evaluators.errors import SlimsweepError
from evaluators.latency import TimingSettings, measure
from evaluators.runtime import make_session

# How often the thread that waits for the worker looks at the request's deadline and whether it was cancelled.
_POLL_SECONDS = 0.1
# How long a call waits for a (re)started worker to take it up: the child's imports, on a busy machine.
_START_SECONDS = 300.0


class Job:
    """One accepted measurement: its id (every reply of the worker carries it), settings, deadlines, cancel flag."""

    _ids = itertools.count(1)

    def __init__(self, settings: TimingSettings, load_seconds: float) -> None:
        self.id = next(self._ids)
        self.settings, self.load_seconds = settings, load_seconds
        self.cancelled = threading.Event()
        self.started: float | None = None  # time.monotonic() when the worker got it
        self.loaded: float | None = None  # when the worker said the model loaded
        self.load_took = 0.0

    @property
    def timing_seconds(self) -> float:
        """Warm-up, the repeat loop and its one retry: each within max_seconds, plus a second's slack."""
        return 3 * self.settings.max_seconds + 1.0

    def deadline(self) -> float:
        """The time.monotonic() past which the measurement is stopped; call only once it has started."""
        if self.loaded is None:
            return self.started + self.load_seconds
        return self.loaded + self.load_took + self.timing_seconds  # measure() loads its own session again

    def seconds_left(self, now: float) -> float:
        """At most how long until this measurement ends, however it ends."""
        if self.started is None:
            return 2 * self.load_seconds + self.timing_seconds
        if self.loaded is None:
            return self.deadline() - now + self.load_seconds + self.timing_seconds
        return self.deadline() - now


class LimitExceeded(SlimsweepError):
    """A model went over its memory cap or past its deadline (or crashed the worker); the worker was replaced."""


def wait_for_reply(conn: multiprocessing.connection.Connection, seconds: float) -> bool:
    """Whether the worker has sent something within seconds (a seam: tests make it fail)."""
    return conn.poll(seconds)


class Worker:
    """One child process that runs ONNX Runtime on what the agent receives, replaced whenever a wait goes wrong."""

    def __init__(self, max_memory_mb: int | None = 4096) -> None:
        self.max_memory_mb = max_memory_mb  # None: no cap (a GPU runtime reserves address space far beyond any cap)
        self._process: subprocess.Popen | None = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._lock = threading.Lock()  # one request at a time on the one pipe

    def start(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        self.stop()
        # A fresh interpreter (not a fork of a process that runs an event loop and threads), started with the
        # caller's import path but without re-running its main module, as multiprocessing's spawn would: a user's
        # script, a Ray worker's or pytest's, none of which expects to run twice.
        ours, theirs = socket.socketpair()
        code = (
            f"import sys; sys.path[:] = {sys.path!r}; from evaluators.agent_worker import _child_main; "
            f"_child_main({theirs.fileno()}, {self.max_memory_mb!r}, {os.getpid()})"
        )
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", code], pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, close_fds=True
            )
        finally:
            theirs.close()
        self._process, self._conn = process, multiprocessing.connection.Connection(ours.detach())

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._conn.close()
        self._process = self._conn = None

    def _exit_code(self) -> int | None:
        """The worker's exit code once it has ended (a negative signal number when killed), waiting a little."""
        if self._process is None:
            return None
        try:
            return self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def run(self, job: Job, model: bytes, providers: tuple[str, ...], kind: str = "measure") -> dict:
        """{"stats", "providers"} of one measurement (kind "measure"), or {"outputs", "providers"} of one batch of
        inputs run (kind "outputs": body is an npz of the model and the inputs), or {"error"} (and "status" when not
        400) saying why not.

        Any failure while waiting kills the worker, so an answer that arrives late can never be read by the next
        request; and an answer that names another request is refused.
        """
        job.started = time.monotonic()
        if job.cancelled.is_set():
            return {"error": "the measurement was cancelled", "status": 499}
        try:
            self.start()
            self._conn.send((job.id, kind, (model, dataclasses.asdict(job.settings), providers)))
            while True:
                if job.cancelled.is_set():
                    self.stop()
                    return {"error": "the measurement was cancelled", "status": 499}
                left = job.deadline() - time.monotonic()
                if left <= 0:
                    self.stop()
                    return {"error": _overtime(job)}
                if not wait_for_reply(self._conn, min(left, _POLL_SECONDS)):
                    continue
                reply_id, kind, payload = self._conn.recv()
                if reply_id != job.id:
                    self.stop()
                    return {
                        "error": f"the worker answered request {reply_id} to request {job.id}; the answer was "
                        "discarded and the worker restarted",
                        "status": 500,
                    }
                if kind == "loaded":
                    job.loaded, job.load_took = time.monotonic(), min(float(payload), job.load_seconds)
                    continue
                return payload
        except (EOFError, OSError):
            code = self._exit_code()
            self.stop()
            return {
                "error": f"ONNX Runtime crashed on this model (worker exit code {code}); needing more than the "
                f"agent's {self.max_memory_mb} MB of memory is one cause; the agent restarted it"
            }
        except BaseException:
            self.stop()
            raise

    def call(self, fn: Callable[..., Any], *args: Any, seconds: float, what: str, **kwargs: Any) -> Any:
        """fn(*args, **kwargs) run in the worker (fn a module-level function), on this process's cores; its value, or
        its exception raised here. LimitExceeded when it goes over the memory cap, runs past `seconds` (counted
        from when the worker takes it up, not from its start-up) or crashes the worker, which is then replaced."""
        with self._lock:
            request = next(Job._ids)
            try:
                self.start()
                self._conn.send((request, "call", (fn, args, kwargs, sorted(os.sched_getaffinity(0)))))
                deadline, started = time.monotonic() + _START_SECONDS, False
                while True:
                    if time.monotonic() >= deadline:
                        self.stop()
                        if not started:
                            raise SlimsweepError(f"the worker process for {what} did not start in {_START_SECONDS:g} s")
                        raise LimitExceeded(f"{what} was stopped past the {seconds:g} s deadline")
                    if not wait_for_reply(self._conn, min(deadline - time.monotonic(), _POLL_SECONDS)):
                        continue
                    reply_id, kind, payload = self._conn.recv()
                    if reply_id != request:
                        self.stop()
                        raise SlimsweepError(f"the worker answered request {reply_id} to request {request}; retry")
                    if kind == "started":
                        deadline, started = time.monotonic() + seconds, True
                        continue
                    break
            except (EOFError, OSError):
                code = self._exit_code()
                self.stop()
                why = f"exit code {code}; going {self._over_cap()} is a cause"
                raise LimitExceeded(f"{what} crashed the worker process ({why})") from None
            except BaseException:
                self.stop()
                raise
        if "value" in payload:
            return payload["value"]
        if "memory" in payload:
            raise LimitExceeded(f"{what} went {self._over_cap()} ({payload['memory']})")
        raise payload["raise"]

    def _over_cap(self) -> str:
        return "out of memory" if self.max_memory_mb is None else f"over the {self.max_memory_mb} MB memory cap"


def _overtime(job: Job) -> str:
    if job.loaded is None:
        return f"the model did not load within {job.load_seconds:.0f} s and was stopped; send a smaller model"
    return (
        f"the measurement did not finish within {job.timing_seconds:.0f} s of loading (warm-up, the repeat loop "
        "and its retry get max_seconds each) and was stopped; lower warmup or max_seconds, or send a smaller "
        "model"
    )


def _child_main(fd: int, max_memory_mb: int | None, parent: int) -> None:
    """The worker's entry point: its end of the socket pair the parent passed as fd."""
    _worker_main(multiprocessing.connection.Connection(fd), max_memory_mb, parent)


def _worker_main(conn: multiprocessing.connection.Connection, max_memory_mb: int | None, parent: int) -> None:
    """The child's loop: one model in, its id and outcome out, until the agent closes the pipe or dies."""
    _die_with(parent)
    _limit_memory(max_memory_mb)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on the agent's terminal is the agent's to handle
    while True:
        try:
            request_id, kind, payload = conn.recv()
        except EOFError:
            return
        if kind == "call":
            conn.send((request_id, "started", None))
            outcome = _call(*payload)
        else:
            model, settings, providers = payload

            def loaded(seconds: float, request_id: int = request_id) -> None:
                conn.send((request_id, "loaded", seconds))

            untrusted = _outputs_untrusted if kind == "outputs" else _measure_untrusted
            outcome = untrusted(model, TimingSettings(**settings), providers, loaded)
            del model
        del payload
        try:
            conn.send((request_id, "done", outcome))
        except (pickle.PicklingError, TypeError, AttributeError) as exc:  # a value that cannot travel back
            conn.send((request_id, "done", {"raise": SlimsweepError(f"the worker's answer cannot be sent: {exc}")}))


def _call(fn: Callable[..., Any], args: tuple, kwargs: dict, cores: list[int]) -> dict:
    """{"value"} of fn(*args, **kwargs), {"memory"} when it ran out of the cap, else {"raise": its exception}."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)  # the caller's cores now (a trial keeps off the station's)
    try:
        return {"value": fn(*args, **kwargs)}
    except MemoryError as exc:
        return {"memory": f"MemoryError: {str(exc)[:300]}"}
    except Exception as exc:  # noqa: BLE001 - told back to the caller, which raises it
        text = f"{type(exc).__name__}: {str(exc)[:2000]}"
        if "alloc" in text.lower():  # ONNX Runtime: "Failed to allocate memory", std::bad_alloc
            return {"memory": text[:300]}
        try:
            pickle.dumps(exc)
        except Exception:  # noqa: BLE001 - an exception that cannot travel is told as its text
            return {"raise": SlimsweepError(text)}
        return {"raise": exc}


def _die_with(parent: int) -> None:
    """End this process when the agent ends, even if the agent is killed with SIGKILL."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the kernel kills us when the parent goes
    if os.getppid() != parent:  # the agent died before the line above took effect
        os._exit(0)

    def watch() -> None:  # elsewhere (and as a second guard): notice being handed to another parent
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="slimsweep-agent-parent-watch", daemon=True).start()


def _limit_memory(max_memory_mb: int | None) -> None:
    """Cap the worker's address space, so a model or batch that needs more fails to allocate (a 400), not the device."""
    if max_memory_mb is None:
        return
    if sys.platform.startswith("linux"):
        try:  # glibc reserves an arena per thread (64 MB each); a few are plenty and keep the cap about real use
            ctypes.CDLL(None).mallopt(-8, 2)  # M_ARENA_MAX
        except (OSError, AttributeError):
            pass
    limit = max_memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _measure_untrusted(
    model: bytes, settings: TimingSettings, providers: tuple[str, ...], loaded: Any = lambda seconds: None
) -> dict:
    """Check that model is a self-contained ONNX model, then time it; any failure is the model's, told back as text."""
    try:
        start = time.monotonic()
        _check_model(model)
        session = make_session(model, threads=settings.threads, providers=providers)
        used = session.get_providers()
        del session
        loaded(time.monotonic() - start)
        if used[:1] != [providers[0]]:
            # ONNX Runtime falls back to the CPU with only a log line; a CPU timing must not pass for the device's.
            return {
                "error": f"ONNX Runtime fell back to {used} for this model instead of {providers[0]}, "
                "so it was not timed"
            }
        stats = dataclasses.asdict(measure(model, settings, providers=providers))
    except _BadModel as exc:
        return {"error": str(exc)}
    except MemoryError:
        return {
            "error": "the model or batch needs more memory than this agent allows its worker (max_memory_mb in "
            "/v1/info); lower batch_size or send a smaller model"
        }
    except SlimsweepError as exc:
        return {"error": f"the model cannot be timed: {exc}"}
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises many types; each is this model's failure, reported
        text = str(exc)[:2000]
        hint = " (over this agent's memory limit: max_memory_mb in /v1/info)" if "alloc" in text.lower() else ""
        return {"error": f"ONNX Runtime cannot load or run the model{hint}: {type(exc).__name__}: {text}"}
    if not all(math.isfinite(v) for v in stats.values() if isinstance(v, float)):
        return {"error": f"the measurement gave non-finite figures {stats}; the model runs too fast to time"}
    return {"stats": stats, "providers": used}


# The most one outputs request may ask: rows of input, and bytes of output sent back (the client reads at most
# 1 MB of a reply, and base64 grows the bytes by a third).
MAX_OUTPUT_ROWS = 4096
MAX_OUTPUT_BYTES = 700_000


def _outputs_untrusted(
    body: bytes, settings: TimingSettings, providers: tuple[str, ...], loaded: Any = lambda seconds: None
) -> dict:
    """Run one bounded batch of inputs through the model sent with them; the first output, or why not, as text."""
    try:
        start = time.monotonic()
        model, inputs = _read_batch(body)
        _check_model(model)
        session = make_session(model, threads=settings.threads, providers=providers)
        used = session.get_providers()
        loaded(time.monotonic() - start)
        if used[:1] != [providers[0]]:
            return {"error": f"ONNX Runtime fell back to {used} for this model instead of {providers[0]}; not run"}
        first = session.get_inputs()[0]
        outputs = np.ascontiguousarray(
            session.run(None, {first.name: inputs.astype(_NUMPY.get(first.type, inputs.dtype))})[0]
        )
    except _BadModel as exc:
        return {"error": str(exc)}
    except MemoryError:
        return {
            "error": "the model or batch needs more memory than this agent allows its worker (max_memory_mb in "
            "/v1/info); send fewer rows per request"
        }
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises many types; each is this request's failure
        return {"error": f"ONNX Runtime cannot run the model on these inputs: {type(exc).__name__}: {str(exc)[:2000]}"}
    if outputs.nbytes > MAX_OUTPUT_BYTES:
        return {
            "error": f"the outputs of {len(inputs)} rows take {outputs.nbytes} bytes, over this agent's "
            f"{MAX_OUTPUT_BYTES} per answer; send fewer rows per request"
        }
    data = base64.b64encode(outputs.tobytes()).decode("ascii")
    return {"outputs": {"dtype": str(outputs.dtype), "shape": list(outputs.shape), "data": data}, "providers": used}


# ONNX Runtime's input type names -> the numpy dtype fed to them (the client sends float32 or the task's own).
_NUMPY = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


def _read_batch(body: bytes) -> tuple[bytes, np.ndarray]:
    """The model and the inputs of an outputs request: an npz holding 'model' (uint8) and 'inputs' (numbers)."""
    try:
        # allow_pickle=False: an npz of plain arrays only; nothing in it can run code here.
        with np.load(io.BytesIO(body), allow_pickle=False) as archive:
            if not {"model", "inputs"} <= set(archive.files):
                raise _BadModel(f"the body's npz holds {archive.files[:5]}; it must hold 'model' and 'inputs'")
            model, inputs = archive["model"], archive["inputs"]
    except _BadModel:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt zip or array header, whatever numpy raises for it
        raise _BadModel(f"the body is not an npz of 'model' and 'inputs': {type(exc).__name__}: {exc}") from None
    if model.dtype != np.uint8 or model.ndim != 1:
        raise _BadModel(f"'model' must be the ONNX file's bytes as a 1-D uint8 array, not {model.dtype} {model.shape}")
    if inputs.dtype.kind not in "fiu" or inputs.ndim < 1:
        raise _BadModel(f"'inputs' must be a numeric array with a batch axis, not {inputs.dtype} {inputs.shape}")
    if not 1 <= len(inputs) <= MAX_OUTPUT_ROWS:
        raise _BadModel(f"'inputs' holds {len(inputs)} rows; send 1 to {MAX_OUTPUT_ROWS} per request")
    return model.tobytes(), inputs


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
        raise _BadModel(
            f"the model refers to external data files for tensors {external[:5]}; the agent reads no "
            "files, so send a self-contained model (onnx.save(..., save_as_external_data=False))"
        )
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
