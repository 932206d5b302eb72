"""Clients that stop reading: what a stream may hold is bounded, and hanging up frees it.

A real `supervisor start` with the demo model; 40 streams with top_logprobs 20 whose
bodies are never read, over sockets with a small receive buffer so the kernel holds
little of them.
"""

from __future__ import annotations

import json
import socket

import psutil

from tests.clients import post_chat
from tests.conftest import demo_hostfile, wait_for

STREAMS = 40
BOUND = 256 * 1024
MB = 1024 * 1024


def _unread_stream(port: int) -> socket.socket:
    body = json.dumps(
        {
            "model": "demo:tiny",
            "messages": [{"role": "user", "content": "tell me a long story"}],
            "stream": True,
            "logprobs": True,
            "top_logprobs": 20,
            "max_tokens": 3500,
            "ignore_eos": True,
        }
    ).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect(("127.0.0.1", port))
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def _too_slow(sup) -> list[dict]:
    return [e for e in sup.log_lines() if e.get("event") == "client_too_slow"]


def _in_flight(sup) -> int:
    return sum(g["in_flight"] for g in sup.status()["groups"])


def _active(sup) -> int:
    return sup.actor("generation")["vitals"]["active_requests"]


def test_unread_streams_are_cut_at_the_bound_and_hanging_up_frees_everything(start_supervisor):
    # body_timeout far away: this test is about the supervisor's bound, not the HTTP one
    hostfile = demo_hostfile(stream_buffer_bytes=BOUND, max_batch=STREAMS)
    sup = start_supervisor({**hostfile, "api": {"body_timeout": 600}})
    sup.wait_healthy()
    process = psutil.Process(sup.proc.pid)
    before = process.memory_info().rss
    peak = before

    def sampled(condition):
        def check():
            nonlocal peak
            peak = max(peak, process.memory_info().rss)
            return condition()

        return check

    socks = [_unread_stream(sup.port) for _ in range(STREAMS)]
    try:
        wait_for(sampled(lambda: len(_too_slow(sup)) >= STREAMS), 300, "every stream cut")
        # cancelled at the actor: it generates for none of them any more
        wait_for(sampled(lambda: _active(sup) == 0), 60, "the actor to drop the requests")
        growth = peak - before
        print(f"supervisor RSS growth at peak: {growth / MB:.1f} MB for {STREAMS} unread streams")
        assert growth < 100 * MB, f"RSS grew {growth / MB:.0f} MB"
        cut = _too_slow(sup)
        assert len({e["request_id"] for e in cut}) == STREAMS
        assert all(BOUND < e["bytes"] < 2 * BOUND for e in cut), cut
        # one client reads at last: its stream ends with the error, then [DONE]
        reader = socks.pop()
        reader.settimeout(30)
        tail = b""
        while not tail.endswith(b"\r\n0\r\n\r\n"):  # the last chunk of the body
            chunk = reader.recv(1 << 16)
            assert chunk, "connection closed before the end of the stream"
            tail = (tail + chunk)[-8192:]
        assert b'"code":"client_too_slow"' in tail and b"data: [DONE]" in tail
        reader.close()
    finally:
        for sock in socks:
            sock.close()
    wait_for(lambda: _in_flight(sup) == 0, 60, "in_flight back to 0 after the hang-ups")
    assert _active(sup) == 0
    # serving is unaffected
    reply = post_chat(sup)
    assert reply.status_code == 200, reply.text
