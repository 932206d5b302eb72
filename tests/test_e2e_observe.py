"""End to end: request history, errors, time series and the live feed of a real
`supervisor start` on the demo model, read over HTTP after real openai and Ollama traffic."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest

from tests.clients import MODEL, async_client_for, chat, client_for, sse_events
from tests.conftest import demo_hostfile, wait_for

FIELDS = {
    "id", "created", "dialect", "endpoint", "model", "groups", "status", "finish_reason",
    "prompt_tokens", "cached_tokens", "completion_tokens", "queue_ms", "ttft_ms",
    "duration_ms", "tokens_per_second", "error",
}  # fmt: skip


def history(sup, **params) -> list[dict]:
    response = httpx.get(sup.url + "/api/cluster/requests", params=params, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def rows_of(sup, ids: list[str]) -> list[dict]:
    """Our requests' records (others' requests share the supervisor), once all are there."""

    def ours():
        rows = [r for r in history(sup, limit=1000) if r["id"] in ids]
        return rows if len(rows) == len(ids) else None

    return wait_for(ours, 10, f"records of {ids}")


def test_history_rows_match_what_the_clients_saw(sup):
    client = client_for(sup)
    prompt = "the history of a long and winding prompt " * 4
    first = chat(client, prompt, max_tokens=6)
    again = chat(client, prompt, max_tokens=6)  # the same prompt: served from the cache
    stream = client.completions.create(
        model=MODEL, prompt="count", max_tokens=5, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    streamed_id, streamed_usage = chunks[0].id, chunks[-1].usage
    two = chat(client, "two choices", max_tokens=4, n=2)
    ollama = httpx.post(
        sup.url + "/api/chat",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False,
              "options": {"num_predict": 3}},
        timeout=60,
    )  # fmt: skip
    ollama_id = ollama.headers["x-request-id"]
    ids = [first.id, again.id, streamed_id, f"{two.id}-0", f"{two.id}-1", ollama_id]
    rows = {r["id"]: r for r in rows_of(sup, ids)}
    assert all(set(r) == FIELDS for r in rows.values())  # no prompt: keep_prompts is off

    for reply in (first, again):
        row = rows[reply.id]
        assert (row["dialect"], row["endpoint"]) == ("openai", "/v1/chat/completions")
        assert (row["status"], row["finish_reason"]) == ("ok", reply.choices[0].finish_reason)
        assert row["prompt_tokens"] == reply.usage.prompt_tokens
        assert row["completion_tokens"] == reply.usage.completion_tokens
        assert row["cached_tokens"] == reply.usage.prompt_tokens_details.cached_tokens
        assert row["model"] == MODEL and row["groups"] == ["main"] and row["error"] == ""
        assert 0 <= row["queue_ms"] <= row["ttft_ms"] <= row["duration_ms"]
    assert rows[again.id]["cached_tokens"] > 0
    row = rows[streamed_id]
    assert (row["endpoint"], row["completion_tokens"]) == ("/v1/completions", 5)
    assert row["prompt_tokens"] == streamed_usage.prompt_tokens
    for i, choice in enumerate(two.choices):  # one record per choice, id <response id>-<i>
        assert rows[f"{two.id}-{i}"]["finish_reason"] == choice.finish_reason
    assert sum(rows[f"{two.id}-{i}"]["completion_tokens"] for i in (0, 1)) == (
        two.usage.completion_tokens
    )
    body = ollama.json()
    row = rows[ollama_id]
    assert (row["dialect"], row["endpoint"]) == ("ollama", "/api/chat")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        body["prompt_eval_count"], body["eval_count"],
    )  # fmt: skip

    newest = [r["id"] for r in history(sup, limit=1000) if r["id"] in ids]
    assert newest[0] == ollama_id and newest[-2:] == [again.id, first.id]  # newest first
    assert len(history(sup, limit=1)) == 1
    assert all(r["status"] == "ok" for r in history(sup, status="ok"))
    assert history(sup, model="no-such-model") == []


def test_a_cancelled_stream_is_recorded_as_cancelled(sup):
    stream = client_for(sup).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "go on"}], max_tokens=2000,
        stream=True, extra_body={"ignore_eos": True},
    )  # fmt: skip
    rid = next(iter(stream)).id
    stream.close()
    (row,) = rows_of(sup, [rid])
    assert row["status"] == "cancelled"
    assert rid in [r["id"] for r in history(sup, status="cancelled")]
    assert rid not in [r["id"] for r in history(sup, status="ok")]


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/api/cluster/requests?limit=1001", "limit"),
        ("/api/cluster/requests?limit=ten", "limit"),
        ("/api/cluster/requests?status=failed", "status"),
        ("/api/cluster/errors?limit=0", "limit"),
        ("/api/cluster/timeseries?metric=tps", "metric"),
        ("/api/cluster/timeseries?metric=throughput&window=5m", "window"),
    ],
)
def test_bad_query_parameters_are_one_line_400s(sup, path, param):
    response = httpx.get(sup.url + path, timeout=10)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"].startswith(param + ":")
    assert "\n" not in error["message"]


def test_throughput_series_has_points_after_traffic(sup):
    chat(client_for(sup), "make some tokens", max_tokens=32, extra_body={"ignore_eos": True})
    url = sup.url + "/api/cluster/timeseries"

    def busy_point():
        body = httpx.get(url, params={"metric": "throughput"}, timeout=10).json()
        return body if any(v for _, v in body["points"]) else None

    body = wait_for(busy_point, 15, "a throughput point above 0")
    assert body["metric"] == "throughput" and body["unit"] == "tok/s"
    times = [t for t, _ in body["points"]]
    assert times == sorted(times) and abs(times[-1] - time.time()) < 30
    for window in ("15m", "1h", "24h"):
        response = httpx.get(url, params={"metric": "in_flight", "window": window}, timeout=10)
        assert response.status_code == 200 and response.json()["unit"] == "requests"


async def next_event(events, within: float, kind=None) -> dict:
    """The next event (not a heartbeat) of ``kind`` if given, within ``within`` seconds."""
    async with asyncio.timeout(within):
        async for event in events:
            if "event" in event and (kind is None or event["event"] in kind):
                return event
    raise AssertionError("the feed ended")


async def test_feed_snapshot_then_changes_and_a_resume_repeats_nothing(sup):
    client = async_client_for(sup)
    url = sup.url + "/api/cluster/events"
    seen: list[int] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as http:
        async with http.stream("GET", url) as response:
            events = sse_events(response)
            snapshot = await next_event(events, 1.0)
            assert snapshot["event"] == "snapshot" and snapshot["id"]
            seen.append(int(snapshot["id"]))
            sent = asyncio.create_task(
                client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "feed"}], max_tokens=4
                )
            )
            started = time.monotonic()
            change = await next_event(events, 1.0, ("RequestAdmitted", "RequestStarted"))
            assert time.monotonic() - started < 1.0
            rid = (await sent).id
            while True:  # to this request's end, every id above the one before
                event = await next_event(events, 10)
                if "id" in event:
                    assert int(event["id"]) > seen[-1], (event, seen[-1])
                    seen.append(int(event["id"]))
                if event["event"] == "RequestEnded" and rid in event["data"]:
                    break
            assert change["event"] in ("RequestAdmitted", "RequestStarted")
        missed = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "while away"}], max_tokens=4
        )
        headers = {"Last-Event-ID": str(seen[-1])}
        async with http.stream("GET", url, headers=headers) as response:
            events = sse_events(response)
            resumed: list[dict] = []
            while not any(e["event"] == "RequestEnded" and missed.id in e["data"] for e in resumed):
                resumed.append(await next_event(events, 10))
    assert resumed[0]["event"] != "snapshot"  # resumed: what was missed, not the state again
    ids = [int(e["id"]) for e in resumed if "id" in e]
    assert ids and ids[0] > seen[-1] and ids == sorted(set(ids)), (seen[-1], ids)
    assert any(e["event"] == "RequestAdmitted" and missed.id in e["data"] for e in resumed)


def test_kill_9_of_a_generation_actor_is_in_the_errors_naming_it(start_supervisor):
    sup = start_supervisor(demo_hostfile(restart={"backoff_initial": 0.1}))
    sup.wait_healthy()
    actor = sup.actor("generation")
    os.kill(actor["pid"], signal.SIGKILL)

    def the_death():
        errors = httpx.get(sup.url + "/api/cluster/errors", timeout=10).json()
        mine = [e for e in errors if e["actor"] == actor["id"] and e["kind"] != "restart"]
        return mine or None

    (death, *_) = wait_for(the_death, 30, "the actor's death in /api/cluster/errors")
    assert death["kind"] in ("actor_exited", "actor_killed"), death
    assert death["node"] == actor["node"] and death["group"] == actor["group"]
    assert "SIGKILL" in death["message"] or "-9" in death["message"], death
    assert time.time() - death["time"] < 60
    wait_for(lambda: sup.actor("generation")["restarts"] >= 1, 30, "a restart")
