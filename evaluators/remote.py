"""The client side of the device agent (evaluators/agent.py): ask what a device is, time a model on it, and run
inputs through a model there (its outputs come back; accuracy is scored by the caller, who keeps the labels)."""

from __future__ import annotations

import base64
import dataclasses
import http.client
import io
import ipaddress
import json
import logging
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import numpy as np

from evaluators.errors import ConfigError, SlimsweepError
from evaluators.latency import LatencyStats, TimingSettings

_STATS_FIELDS = {field.name for field in dataclasses.fields(LatencyStats)}
# Fields an agent of an earlier release does not send; their defaults stand.
_STATS_OPTIONAL = {f.name for f in dataclasses.fields(LatencyStats) if f.default is not dataclasses.MISSING}
# The most the client reads of one reply: an agent's answers are a few kB, so a larger one is not an agent's and is
# refused rather than held in memory.
MAX_REPLY_BYTES = 1_000_000
log = logging.getLogger("slimsweep.remote")
_warned: set[str] = set()  # origins already warned about a token sent over plain HTTP (once per process)


class AgentClient:
    """One device agent at url, spoken to with its bearer token."""

    def __init__(self, url: str, token: str, *, timeout: float = 300.0, ca_file: str | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ConfigError(f"device agent url {url!r} is not http(s)://HOST:PORT, e.g. http://jetson.local:8470")
        if not token:
            raise ConfigError(f"the token for the device agent at {url} is empty")
        self.url = url.rstrip("/")
        self._token = token
        self._timeout = timeout
        # TLS is verified: against the system's CAs (SSL_CERT_FILE honoured), or ca_file for a self-signed agent.
        try:
            context = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"CA file {ca_file!r} for the device agent cannot be read: {exc}") from None
        # Straight to the device: a proxy from the environment would see the token and add its own latency and errors.
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context), _SameOriginRedirects()
        )

    def info(self) -> dict:
        """What the device is, its runtimes and the agent's limits."""
        return self._call("GET", "/v1/info")

    def measure(self, model: bytes, settings: TimingSettings = TimingSettings()) -> LatencyStats:
        """Time model on the device with the project's timing method."""
        query = urllib.parse.urlencode(dataclasses.asdict(settings))
        answer = self._call("POST", f"/v1/measure?{query}", body=model)
        stats = answer.get("stats") if isinstance(answer, dict) else None
        if not isinstance(stats, dict) or not _STATS_FIELDS - _STATS_OPTIONAL <= set(stats):
            raise SlimsweepError(f"device agent at {self.url} answered without the statistics: {str(answer)[:300]}")
        return LatencyStats(**{name: stats[name] for name in _STATS_FIELDS if name in stats})

    def outputs(self, model: bytes, inputs: np.ndarray, *, threads: int = 1, rows: int = 256) -> np.ndarray:
        """The model's first output on inputs, run by the device's own runtime in batches of at most `rows` (only the
        inputs travel; the caller keeps the labels and scores the outputs)."""
        if len(inputs) == 0:
            raise SlimsweepError("outputs() got no inputs")
        weights = np.frombuffer(model, dtype=np.uint8)
        parts = []
        for start in range(0, len(inputs), rows):
            buffer = io.BytesIO()
            np.savez(buffer, model=weights, inputs=np.ascontiguousarray(inputs[start : start + rows]))
            answer = self._call("POST", f"/v1/outputs?threads={threads}", body=buffer.getvalue())
            parts.append(self._array(answer, start))
        return np.concatenate(parts)

    def _array(self, answer: Any, start: int) -> np.ndarray:
        """The output array of one /v1/outputs answer."""
        out = answer.get("outputs") if isinstance(answer, dict) else None
        try:
            dtype = np.dtype(out["dtype"])
            if dtype.kind not in "fiu":
                raise ValueError(f"dtype {dtype} is not numeric")
            array = np.frombuffer(base64.b64decode(out["data"], validate=True), dtype=dtype)
            return array.reshape([int(n) for n in out["shape"]])
        except (TypeError, KeyError, ValueError) as exc:
            raise SlimsweepError(
                f"device agent at {self.url} answered the inputs from row {start} without a readable output "
                f"({type(exc).__name__}: {str(exc)[:200]}): {str(answer)[:200]}"
            ) from None

    def _call(self, method: str, path: str, body: bytes | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
        request = urllib.request.Request(self.url + path, data=body, headers=headers, method=method)
        self._warn_plain_http()
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                raw = response.read(MAX_REPLY_BYTES + 1)
            if len(raw) > MAX_REPLY_BYTES:
                raise SlimsweepError(
                    f"device agent at {self.url} answered more than {MAX_REPLY_BYTES} bytes (the client's limit on "
                    "a reply; an agent's answers are a few kB): is this url a slimsweep agent?"
                )
        except urllib.error.HTTPError as exc:
            raise self._refused(exc.code, _message(exc), exc.headers.get("Retry-After")) from None
        except _Redirected as exc:
            raise SlimsweepError(
                f"device agent at {self.url} redirected to {exc.location!r}, another origin; the "
                "token is never sent there: give the agent's own url"
            ) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise SlimsweepError(
                    f"device agent at {self.url}: its TLS certificate is not trusted "
                    f"({reason.verify_message}); for a self-signed agent pass its certificate as "
                    "the CA file (ca_file, or SSL_CERT_FILE)"
                ) from None
            if isinstance(reason, ConnectionRefusedError):
                raise AgentUnreachable(
                    f"device agent is not reachable at {self.url} (connection refused); "
                    "is `slimsweep agent` running there, on that port?"
                ) from None
            if isinstance(reason, ConnectionError):  # reset or broken pipe while the body was still being sent
                raise _dropped(self.url, reason) from None
            raise AgentUnreachable(f"device agent is not reachable at {self.url}: {reason}") from None
        except TimeoutError:
            raise AgentUnreachable(f"device agent at {self.url} did not answer within {self._timeout:g} s") from None
        except (ConnectionError, http.client.HTTPException) as exc:
            raise _dropped(self.url, exc) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise SlimsweepError(
                f"device agent at {self.url} answered something that is not JSON: {raw[:200]!r}"
            ) from None

    def _warn_plain_http(self) -> None:
        """Warn once per process and origin when the token goes over plain HTTP beyond this machine."""
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme != "http" or is_loopback(parts.hostname or "") or self.url in _warned:
            return
        _warned.add(self.url)
        log.warning(
            "sending the device agent's token over plain HTTP to %s: anyone on the network path can read it; "
            "serve the agent with --tls-cert/--tls-key and use an https:// url",
            self.url,
        )

    def _refused(self, status: int, message: str, retry_after: str | None) -> SlimsweepError:
        if status == 401:
            return SlimsweepError(f"device agent at {self.url} refused the token (401): {message}")
        if status == 413:
            return SlimsweepError(f"device agent at {self.url} refused the model as too large (413): {message}")
        if status == 503:
            wait = f"; it asks to retry after {retry_after} s" if retry_after else ""
            return SlimsweepError(f"device agent at {self.url} is busy (503): {message}{wait}")
        return SlimsweepError(f"device agent at {self.url} answered {status}: {message}")


def is_loopback(host: str) -> bool:
    """Whether host names this machine's loopback only (127.0.0.0/8, ::1, localhost); '' and 0.0.0.0 are not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Redirected(urllib.error.URLError):
    def __init__(self, location: str) -> None:
        super().__init__(f"redirected to {location}")
        self.location = location


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect (with the token) only within the agent's own origin; refuse one elsewhere before sending."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        if _origin(newurl) != _origin(req.full_url):
            raise _Redirected(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


class AgentUnreachable(SlimsweepError):
    """The device agent cannot be reached or did not answer in time: says nothing about the model it was sent."""


def _dropped(url: str, exc: BaseException) -> SlimsweepError:
    return SlimsweepError(
        f"device agent at {url} dropped the connection ({exc!r}); a model far over its size "
        "limit is one cause: see limits in its /v1/info"
    )


def _message(error: urllib.error.HTTPError) -> str:
    """The agent's {"error": ...} text, or what else the server said."""
    try:
        raw = error.read(MAX_REPLY_BYTES)
    except (OSError, http.client.HTTPException):
        return error.reason or "no message"
    try:
        data = json.loads(raw)
    except ValueError:
        return raw[:300].decode("utf-8", errors="replace") or str(error.reason)
    if isinstance(data, dict):
        return str(data.get("error") or data.get("detail") or data)
    return str(data)
