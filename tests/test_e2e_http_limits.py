"""The HTTP server's limits on a real `supervisor start`: half-open connections, slow
bodies, bodies over max_body_bytes, and more connections than max_connections."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import time

import httpx
import psutil

from tests.clients import post_chat
from tests.conftest import demo_hostfile, wait_for

CHAT = {"model": "demo:tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


@contextlib.contextmanager
def _nofile_soft_limit(soft: int):
    """Children started inside inherit ``soft`` open files, as a process on macOS starts."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


def _connect(port: int, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if data:
        sock.sendall(data)
    return sock


def _answer(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def _ended(sock: socket.socket, answers: dict[socket.socket, bytes]) -> bool:
    """Whether the server has answered or closed ``sock``; what it sent goes in ``answers``."""
    if sock not in answers:
        sock.settimeout(0)
        try:
            sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        answers[sock] = _answer(sock)  # the server closes right after its answer
    return True


def _ready(sup) -> bool:
    return all(g["state"] == "ready" for g in sup.status()["groups"])


def _api_connections(sup) -> int:
    conns = psutil.Process(sup.proc.pid).net_connections("tcp")
    return sum(1 for c in conns if c.laddr.port == sup.port and c.status == "ESTABLISHED")


def test_300_half_open_connections_leave_serving_and_supervision_working(start_supervisor):
    header_timeout = 45  # longer than the restart below, on a loaded machine too
    with _nofile_soft_limit(256):  # the supervisor raises it; at 256, 300 sockets would fail
        sup = start_supervisor({**demo_hostfile(), "api": {"header_timeout": header_timeout}})
    sup.wait_healthy()
    opened = time.monotonic()
    half = [
        _connect(sup.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost")
        for _ in range(300)
    ]
    idle = [_connect(sup.port) for _ in range(20)]
    try:
        wait_for(lambda: _api_connections(sup) >= 320, 30, "the 320 connections to be accepted")
        assert sup.health()[0] == 200
        assert post_chat(sup, max_tokens=8).status_code == 200
        assert _ready(sup)
        # spawning still works: the generation actor dies and its group restarts and serves
        old = sup.actor("generation")
        os.kill(old["pid"], signal.SIGKILL)
        wait_for(
            lambda: sup.actor("generation")["pid"] not in (None, old["pid"]) and _ready(sup),
            120,
            "the group to restart",
        )
        assert post_chat(sup, max_tokens=8).status_code == 200
        assert time.monotonic() - opened < header_timeout, "the restart outlasted the timeout"
        answers: dict[socket.socket, bytes] = {}
        assert not any(_ended(s, answers) for s in half + idle), "closed before header_timeout"
        # then the header timeout ends them all: a partial head gets 408, silence nothing
        wait_for(lambda: all(_ended(s, answers) for s in half + idle), 60, "the header timeout")
        assert time.monotonic() - opened >= header_timeout - 1
        assert all(answers[s].startswith(b"HTTP/1.1 408 ") for s in half)
        assert all(answers[s] == b"" for s in idle)
        body = json.loads(answers[half[0]].split(b"\r\n\r\n", 1)[1])
        assert body["error"]["message"] == f"request head not received within {header_timeout} s"
    finally:
        for sock in half + idle:
            sock.close()
    assert _api_connections(sup) <= 1
    log = sup.log_path.read_text()
    assert "Too many open files" not in log and "EMFILE" not in log


def test_a_body_over_max_body_bytes_is_413_announced_or_chunked(start_supervisor):
    sup = start_supervisor({**demo_hostfile(), "api": {"max_body_bytes": 4096}})
    sup.wait_healthy()
    big = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}).encode()
    announced = httpx.post(
        sup.url + "/v1/chat/completions",
        content=big,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    chunked = httpx.post(
        sup.url + "/v1/chat/completions",
        content=iter([big[i : i + 1000] for i in range(0, len(big), 1000)]),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    for reply in (announced, chunked):
        assert reply.status_code == 413, reply.text
        assert reply.json()["error"]["message"] == (
            "request body is larger than 4096 bytes (the hostfile's api.max_body_bytes)"
        )
    assert "transfer-encoding" not in announced.request.headers
    assert chunked.request.headers["transfer-encoding"] == "chunked"
    # nothing was generated, and a body within the bound is served
    assert sup.status()["requests_total"] == 0
    assert post_chat(sup, max_tokens=8).status_code == 200


def test_a_slow_body_is_answered_408_and_closed_after_body_timeout(start_supervisor):
    sup = start_supervisor({**demo_hostfile(), "api": {"body_timeout": 2}})
    sup.wait_healthy()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"
    )
    started = time.monotonic()
    answer = _answer(_connect(sup.port, head + b'{"model": "demo:tiny", '), 30)
    took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"request body not received within 2 s" in answer
    assert 2 <= took < 10
    assert sup.status()["requests_total"] == 0
    events = [e.get("event") for e in sup.log_lines()]
    assert "http_read_timeout" in events
    assert "api.unhandled_error" not in events, "a timeout is no server error"
    assert post_chat(sup, max_tokens=8).status_code == 200


def test_past_max_connections_a_new_one_gets_503_with_retry_after(start_supervisor):
    sup = start_supervisor({**demo_hostfile(), "api": {"max_connections": 20}})
    sup.wait_healthy()
    held = [_connect(sup.port) for _ in range(20)]
    try:
        wait_for(lambda: _api_connections(sup) >= 20, 30, "the 20 connections")
        refused = httpx.get(sup.url + "/health", timeout=10)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert "api.max_connections" in refused.json()["error"]["message"]
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: _api_connections(sup) == 0, 30, "the held connections to close")
    assert sup.health()[0] == 200
