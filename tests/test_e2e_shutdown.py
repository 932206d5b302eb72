"""Stopping by signal: the first SIGTERM drains, a second one stops at once, and no actor
is left running either way."""

from __future__ import annotations

import json
import signal
import socket
import time

import psutil

from tests.conftest import wait_for

# 2 tokens a second: the request below would take minutes, far past the test
SLOW = {"hosts": [{"ssh": "localhost"}], "model": "fake:slow?tokens_per_second=2"}


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _long_stream(port: int) -> socket.socket:
    body = json.dumps(
        {
            "model": "fake:slow",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "max_tokens": 1000,
        }
    ).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")  # headers go with the first token
    return sock


def test_a_second_sigterm_skips_the_drain_and_leaves_no_actor(start_supervisor):
    sup = start_supervisor(SLOW, extra_args=["--drain-timeout", "300"])
    sup.wait_healthy()
    children = [psutil.Process(pid) for pid in sup.remember_children() if pid != sup.proc.pid]
    assert len(children) >= 2  # the memory reporter and the fake engine
    stream = _long_stream(sup.port)
    try:
        assert sum(g["in_flight"] for g in sup.status()["groups"]) == 1
        sup.proc.send_signal(signal.SIGTERM)
        # draining: new work is refused, the request goes on, the process stays
        wait_for(lambda: sup.health()[0] == 503, 30, "the supervisor to start draining")
        stream.settimeout(30)
        assert b"data: " in stream.recv(65536)  # tokens still flow while it drains
        assert sup.proc.poll() is None, "the first SIGTERM must drain, not exit"
        assert sum(g["in_flight"] for g in sup.status()["groups"]) == 1
        asked = time.monotonic()
        sup.proc.send_signal(signal.SIGTERM)
        assert sup.proc.wait(30) == 0
        took = time.monotonic() - asked
    finally:
        stream.close()
    print(f"second SIGTERM to exit: {took:.2f} s")
    assert took < 10, f"the second SIGTERM took {took:.1f} s to stop the supervisor"
    left = [p.pid for p in children if not _gone(p)]
    assert not left, f"actors left running: {left}"
    events = [e.get("event") for e in sup.log_lines()]
    assert "stopping_now" in events and "cluster_stopped" in events
