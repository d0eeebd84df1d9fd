"""The agent and its client keep the token safe and their memory bounded: a TLS key others may read is refused, a token
served or sent over plain HTTP beyond loopback is warned about in one line, and a reply over the client's limit is
refused instead of read whole."""

from __future__ import annotations

import http.server
import logging
import threading

import pytest
from conftest import free_port
from test_agent import QUICK, TOKEN, _self_signed, start_agent, token_file, wait_up

from evaluators import ConfigError, SlimsweepError, agent
from evaluators.remote import MAX_REPLY_BYTES, AgentClient


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_the_agent_refuses_a_tls_key_that_others_may_read(tmp_path, mode):
    cert, key = _self_signed(tmp_path)
    key.chmod(mode)
    with pytest.raises(ConfigError, match=r"--tls-key .* others may read the private key; run `chmod 600"):
        agent.serve(port=free_port(), token_file=str(token_file(tmp_path)), tls_cert=str(cert), tls_key=str(key))


def test_the_agent_warns_in_one_line_when_it_serves_its_token_over_plain_http_beyond_loopback(tmp_path, small):
    lines = {}
    for host in ("0.0.0.0", "127.0.0.1"):
        port = free_port()
        process = start_agent(tmp_path, port, host=host)
        try:
            wait_up(process, AgentClient(f"http://127.0.0.1:{port}", TOKEN, timeout=60))
        finally:
            process.terminate()
            process.wait(timeout=30)
        lines[host] = [line for line in process.stderr.read().decode().splitlines() if "plain HTTP" in line]
    assert len(lines["0.0.0.0"]) == 1 and lines["0.0.0.0"][0].startswith("warning: serving plain HTTP on 0.0.0.0")
    assert "--tls-cert" in lines["0.0.0.0"][0]
    assert lines["127.0.0.1"] == []
    assert agent.plain_http_warning("0.0.0.0", tls=True) is None  # HTTPS anywhere: nothing to warn about


@pytest.fixture(scope="module")
def small() -> bytes:
    from test_agent import conv_net, export

    return export(conv_net(8))


def test_the_client_warns_once_when_it_sends_its_token_over_plain_http_beyond_loopback(caplog):
    caplog.set_level(logging.WARNING, logger="slimsweep.remote")
    far = AgentClient("http://agent.invalid:8470", TOKEN, timeout=5)  # not this machine (and not resolvable)
    for _ in range(2):
        with pytest.raises(SlimsweepError, match="not reachable"):
            far.info()
    warned = [r.getMessage() for r in caplog.records if "plain HTTP" in r.getMessage()]
    assert len(warned) == 1 and "http://agent.invalid:8470" in warned[0] and "https://" in warned[0]
    caplog.clear()
    for url in ("http://127.0.0.1:9", "http://localhost:9", "https://agent.invalid:8470"):
        with pytest.raises(SlimsweepError):
            AgentClient(url, TOKEN, timeout=5).info()
    assert not [r for r in caplog.records if "plain HTTP" in r.getMessage()]


class _Flood(http.server.BaseHTTPRequestHandler):
    """Answers 200 with a JSON body over the client's limit: stated in Content-Length, or streamed without end."""

    endless = False

    def do_GET(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))  # the model, for a POST
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if not self.endless:
            body = b'{"pad": "' + b"x" * (2 * MAX_REPLY_BYTES) + b'"}'
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.end_headers()
        self.wfile.write(b'{"pad": "')
        try:
            while True:
                self.wfile.write(b"x" * 65536)
        except OSError:
            pass  # the client stopped reading and closed

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("endless", [False, True])
def test_the_client_refuses_a_reply_over_its_size_limit(endless, small):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("Flood", (_Flood,), {"endless": endless}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = AgentClient(f"http://127.0.0.1:{server.server_port}", TOKEN, timeout=30)
        for call in (client.info, lambda: client.measure(small, QUICK)):
            with pytest.raises(SlimsweepError, match=rf"answered more than {MAX_REPLY_BYTES} bytes"):
                call()
    finally:
        server.shutdown()
        server.server_close()
