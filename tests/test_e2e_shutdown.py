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


async def test_open_live_streams_end_cleanly_when_the_supervisor_stops(start_supervisor):
    """A dashboard's feed and a ``logs -f`` end by themselves on SIGTERM (the feed with the
    drain's event), instead of holding the HTTP server until it cuts them off."""
    import asyncio

    import httpx

    from tests.clients import sse_events

    sup = start_supervisor({"hosts": [{"ssh": "localhost"}], "model": "fake:quick"})
    sup.wait_healthy()
    async with httpx.AsyncClient(base_url=sup.url, timeout=30) as client:
        async with (
            client.stream("GET", "/api/cluster/events") as feed,
            client.stream("GET", "/api/cluster/logs", params={"follow": "true"}) as logs,
        ):
            assert feed.status_code == 200 and logs.status_code == 200
            kinds: list[str] = []
            events = sse_events(feed)
            kinds.append((await anext(events))["event"])  # the snapshot: the feed is live
            sup.proc.send_signal(signal.SIGTERM)

            async def read_feed() -> None:
                async for event in events:  # raises if the server cuts the stream off
                    kinds.append(event.get("event", ""))

            async def read_logs() -> int:
                return len([line async for line in logs.aiter_lines()])

            await asyncio.wait_for(asyncio.gather(read_feed(), read_logs()), 30)
    assert kinds[0] == "snapshot" and kinds[-1] == "DrainStarted", kinds
    wait_for(lambda: sup.proc.poll() is not None, 30, "the supervisor to exit")
    assert sup.proc.returncode == 0
