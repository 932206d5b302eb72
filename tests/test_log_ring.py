"""The log ring: bounds, filters, level order, followers (fed from threads, dropped when slow)."""

from __future__ import annotations

import asyncio
import io
import json
import threading

import pytest
import structlog

from supervisor.logs.ring import MAX_TEXT, LogRing, TooManyFollowers, level_rank
from supervisor.logs.setup import configure_logging, relay_actor_line
from supervisor.observe.observer import ClusterObserver
from supervisor.serving.contract import BadRequest, LogFilter, QueueFull


def line(event: str, **fields) -> dict:
    return {"event": event, "level": "info", "timestamp": "2025-01-01T00:00:00Z", **fields}


def test_the_ring_keeps_the_newest_lines_oldest_first():
    ring = LogRing(lines=100)
    for i in range(250):
        ring.append(line(f"e{i}"))
    kept = ring.tail(1000)
    assert [x["event"] for x in kept] == [f"e{i}" for i in range(150, 250)]
    assert [x["event"] for x in ring.tail(3)] == ["e247", "e248", "e249"]


def test_filters_match_every_field_given():
    ring = LogRing(lines=100)
    ring.append(line("a", actor_id="gen-0", node="mac1", source="actor"))
    ring.append(line("b", actor_id="gen-1", node="mac2", source="actor"))
    ring.append(line("c", request_id="chatcmpl-1"))
    ring.append(line("d", request_id="chatcmpl-1-0"))  # choice 0 of a request with n=2
    ring.append(line("e", request_id="chatcmpl-12"))
    ring.append(line("f", request_id="chatcmpl-1-x"))

    def events(**where):
        return [x["event"] for x in ring.tail(100, LogFilter(**where))]

    assert events(actor="gen-0") == ["a"]
    assert events(node="mac2") == ["b"]
    assert events(actor="gen-0", node="mac2") == []
    assert events(request_id="chatcmpl-1") == ["c", "d"]
    assert events() == ["a", "b", "c", "d", "e", "f"]
    # the limit counts matching lines, the newest ones
    assert [x["event"] for x in ring.tail(1, LogFilter(request_id="chatcmpl-1"))] == ["d"]


def test_level_means_this_level_and_above():
    ring = LogRing(lines=100)
    for level in ("debug", "info", "warning", "error", "critical"):
        ring.append({**line(level), "level": level})
    assert [x["level"] for x in ring.tail(10, LogFilter(level="warning"))] == [
        "warning",
        "error",
        "critical",
    ]
    assert len(ring.tail(10, LogFilter(level="DEBUG"))) == 5
    assert level_rank("warn") == level_rank("warning")
    with pytest.raises(ValueError, match="unknown level 'loud'"):
        level_rank("loud")


def test_the_observer_refuses_a_bad_level_naming_the_parameter():
    observer = ClusterObserver(state=None, log_ring=LogRing())
    with pytest.raises(BadRequest) as caught:
        observer.logs(10, LogFilter(level="loud"))
    assert caught.value.param == "level" and "\n" not in caught.value.message


def test_a_line_is_a_json_ready_copy_with_long_strings_cut():
    ring = LogRing(lines=100)
    original = line("x", path=object(), nested={"k": (1, 2)}, big="y" * (MAX_TEXT + 50))
    ring.append(original)
    kept = ring.tail(1)[0]
    json.dumps(kept)  # no exotic values left
    assert kept["nested"] == {"k": [1, 2]} and isinstance(kept["path"], str)
    assert len(kept["big"]) == MAX_TEXT + 1
    original["event"] = "changed"
    assert kept["event"] == "x"


def test_structlog_lines_and_relayed_actor_lines_reach_the_ring(capsys):
    ring = LogRing(lines=100)
    configure_logging("json", ring=ring)
    try:
        structlog.get_logger().info("api_listening", port=1)
        structlog.get_logger().debug("hidden")  # below the level: neither printed nor kept
        relay_actor_line(
            json.dumps({"event": "model_loaded", "level": "info", "model": "demo:tiny"}),
            actor_id="gen-0",
            node="localhost",
            stream="stderr",
        )
        relay_actor_line("plain text\n", actor_id="gen-0", node="localhost", stream="stdout")
    finally:
        structlog.reset_defaults()
    kept = ring.tail(10)
    printed = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert kept == printed  # exactly what was printed
    assert [x["event"] for x in kept] == ["api_listening", "model_loaded", "actor_output"]
    assert all(x["timestamp"] and x["level"] == "info" for x in kept)
    assert kept[1]["source"] == "actor" and kept[1]["actor_id"] == "gen-0"
    assert ring.tail(10, LogFilter(actor="gen-0", node="localhost")) == kept[1:]


async def test_a_follower_gets_new_matching_lines_even_from_other_threads():
    ring = LogRing(lines=100)
    ring.append(line("before"))
    follower = ring.follow(LogFilter(level="warning"))
    assert ring.follower_count == 1
    ring.append(line("quiet"))  # below the level
    ring.append({**line("loud"), "level": "error"})
    worker = threading.Thread(target=ring.append, args=({**line("threaded"), "level": "warning"},))
    worker.start()
    worker.join()
    got = [await asyncio.wait_for(anext(follower), 5) for _ in range(2)]
    assert [x["event"] for x in got] == ["loud", "threaded"]
    await follower.aclose()
    assert ring.follower_count == 0


async def test_a_follower_that_falls_behind_gets_a_marker_and_is_let_go():
    ring = LogRing(lines=1000, follow_buffer=10)
    slow, fast = ring.follow(), ring.follow()
    fast_got = []

    async def keep_up():
        async for x in fast:
            fast_got.append(x["event"])
            if len(fast_got) == 30:
                return

    reader = asyncio.create_task(keep_up())
    for i in range(30):
        ring.append(line(f"e{i}"))
        await asyncio.sleep(0)  # the fast reader runs between lines; the slow one never does
    await asyncio.wait_for(reader, 5)
    assert fast_got == [f"e{i}" for i in range(30)]  # the slow one held nobody back
    got = [x async for x in slow]
    assert [x["event"] for x in got[:10]] == [f"e{i}" for i in range(10)]
    assert got[-1]["event"] == "logs_follow_dropped" and got[-1]["level"] == "warning"
    assert len(got) == 11
    await fast.aclose()
    assert ring.follower_count == 0


async def test_followers_are_bounded():
    ring = LogRing(followers=2)
    a, b = ring.follow(), ring.follow()
    with pytest.raises(TooManyFollowers, match="logs.followers"):
        ring.follow()
    observer = ClusterObserver(state=None, log_ring=ring)
    with pytest.raises(QueueFull):
        observer.follow_logs(LogFilter())
    await a.aclose()
    c = observer.follow_logs(LogFilter())  # a slot is free again
    for follower in (b, c):
        await follower.aclose()
    assert ring.follower_count == 0


def test_the_ring_takes_its_sizes_from_the_hostfile(tmp_path):
    from supervisor.config.load import HostfileError, parse_hostfile

    base = {"hosts": [{"ssh": "localhost"}], "model": "demo:tiny"}
    spec = parse_hostfile(json.dumps(base).encode(), "h.json")
    assert (spec.logs.lines, spec.logs.follow_buffer, spec.logs.followers) == (5000, 1000, 32)
    spec = parse_hostfile(json.dumps({**base, "logs": {"lines": 200}}).encode(), "h.json")
    assert spec.logs.lines == 200
    with pytest.raises(HostfileError) as caught:
        parse_hostfile(json.dumps({**base, "logs": {"lines": 5}}).encode(), "h.json")
    assert "logs.lines" in str(caught.value) and "\n" not in str(caught.value)


def test_printed_lines_read_as_time_level_event_and_fields():
    from supervisor.cli.observe.logs import human

    text = human(
        {
            "timestamp": "2025-01-01T12:00:00.123456Z",
            "level": "warning",
            "event": "request_ended",
            "status": "error",
            "error": "group lost",
            "request_id": "chatcmpl-1",
        }
    )
    words = text.split(" ")
    assert words[0].count(":") == 2 and words[0].endswith(".123")
    assert words[1] == "warning" and words[2] == "request_ended"
    assert 'request_id=chatcmpl-1 status=error error="group lost"' in text
    assert io.StringIO(text).read().count("\n") == 0
