"""End to end failures: a real supervisor, real actors killed and frozen, real clients."""

from __future__ import annotations

import os
import signal
import threading

import httpx
import openai
import pytest

from tests.clients import chat, client_for
from tests.conftest import demo_hostfile, run_cli, wait_for

MODEL = "demo:tiny"


def test_kill_9_generation_actor_is_restarted_and_serves(start_supervisor):
    sup = start_supervisor(demo_hostfile(restart={"backoff_initial": 0.1}))
    sup.wait_healthy()
    before = sup.actor("generation")
    os.kill(before["pid"], signal.SIGKILL)
    wait_for(lambda: sup.actor("generation")["restarts"] >= 1, 30, "a restart")
    sup.wait_healthy()
    after = sup.actor("generation")
    assert after["pid"] != before["pid"]
    assert chat(client_for(sup), max_tokens=8).choices[0].finish_reason in ("stop", "length")


def test_sigstop_detected_by_heartbeat_and_the_stream_goes_on_after_the_restart(
    start_supervisor,
):
    sup = start_supervisor(demo_hostfile(restart={"backoff_initial": 0.1, "heartbeat_timeout": 3}))
    sup.wait_healthy()
    pid = sup.actor("generation")["pid"]
    stream = client_for(sup).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "go on"}],
        max_tokens=1000,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    first = next(iter(stream))
    assert first.choices[0].delta.role == "assistant"
    os.kill(pid, signal.SIGSTOP)
    try:
        chunks = list(stream)  # the only group: the stream waits for it to come back
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert [f for f in finishes if f] == ["length"]
        assert chunks[-1].usage.completion_tokens == 1000  # resumed, not truncated
        assert sup.actor("generation")["pid"] != pid
        (silent,) = [
            line["reason"]
            for line in sup.log_lines()
            if line.get("event") == "supervisor_child_failed" and "heartbeat" in line["reason"]
        ]
        seconds = float(silent.rsplit("for ", 1)[1].split(" s")[0])
        assert 3 <= seconds < 8, silent
        (moved,) = [line for line in sup.log_lines() if line.get("event") == "request_failover"]
        assert moved["from_group"] == moved["to_group"] == "main"
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_restart_intensity_exceeded_fails_the_group_and_health_says_so(start_supervisor):
    sup = start_supervisor(
        demo_hostfile(restart={"intensity": 1, "period": 60, "backoff_initial": 0.05})
    )
    sup.wait_healthy()
    first = sup.actor("generation")["pid"]
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: sup.actor("generation")["pid"] not in (None, first), 30, "a second pid")
    sup.wait_healthy()
    os.kill(sup.actor("generation")["pid"], signal.SIGKILL)
    wait_for(lambda: sup.actor("generation")["state"] == "failed", 30, "the actor failed")
    code, health = sup.health()
    assert code == 503
    assert health["status"] == "failed"
    assert "exceeds intensity 1" in health["groups"]["main"]["reason"]
    with pytest.raises(openai.APIStatusError) as info:
        chat(client_for(sup), max_tokens=8)
    assert info.value.status_code == 503


def test_queue_full_is_429_with_retry_after(start_supervisor):
    sup = start_supervisor(demo_hostfile(queue_limit=1))
    sup.wait_healthy()
    started = threading.Event()
    holder: dict = {}

    def long_stream():
        with httpx.stream(
            "POST",
            sup.url + "/v1/completions",
            timeout=120,
            json={
                "model": MODEL,
                "prompt": "x",
                "max_tokens": 100000,
                "stream": True,
                "ignore_eos": True,
            },
        ) as r:
            for _ in r.iter_lines():
                started.set()
                if holder.get("done"):
                    return

    t = threading.Thread(target=long_stream, daemon=True)
    t.start()
    assert started.wait(60)
    r = httpx.post(
        sup.url + "/v1/completions",
        timeout=30,
        json={"model": MODEL, "prompt": "y", "max_tokens": 2},
    )
    holder["done"] = True
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    t.join(60)
    wait_for(lambda: sup.status()["queue_depth"] == 0, 30, "the cancelled stream to end")


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"hosts": [{"ssh": "localhost"}], "restart": {"intensity": "x"}}', "intensity"),
        ('{"hosts": []}', "host"),
        ('{"hosts": [{"ssh": "localhost"}], "bogus": 1}', "bogus"),
        ('{"hosts": [{"ssh": "localhost"}], "api": {"port": 99999}}', "port"),
        ("{not json", "JSON"),
    ],
)
def test_bad_hostfile_is_one_line_exit_2(tmp_path, content, expected):
    path = tmp_path / "bad.json"
    path.write_text(content)
    result = run_cli("start", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "bad.json" in lines[0] and expected in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (["start"], "hostfile"),
        (["start", "hostfiles/demo.json", "--port", "abc"], "port"),
        (["start", "hostfiles/demo.json", "--bogus"], "--bogus"),
        (["frobnicate"], "frobnicate"),
        (["start", "/no/such/file.json"], "no such file"),
    ],
)
def test_bad_cli_flags_are_one_line_exit_2(args, expected):
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]


def test_sigterm_stops_every_actor(start_supervisor):
    sup = start_supervisor(demo_hostfile())
    sup.wait_healthy()
    # One node: its generation rank, its memory reporter and its sync actor.
    wait_for(
        lambda: (
            sorted((a["kind"], bool(a["pid"])) for a in sup.status()["actors"])
            == [("generation", True), ("memory", True), ("sync", True)]
        ),
        30,
        "the node's three actors to run",
    )
    pids = [a["pid"] for a in sup.status()["actors"]]
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.proc.wait(30) == 0
    for pid in pids:
        wait_for(lambda p=pid: not _alive(p), 10, f"actor {pid} to end")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"
