"""/api/cluster/requests|errors|timeseries|events over HTTP (uvicorn in process), the state fed
its events directly: one-line 400s, redaction for callers without the admin key, the SSE
feed's resume and its end when the client goes away. End to end: test_e2e_observe.py."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import pytest

from api.edge.guards import Keys
from api.observe import history
from supervisor.observe.observer import ClusterObserver
from supervisor.state import ClusterState
from supervisor.state.events import (
    ActorStarting,
    ActorStopped,
    GroupDeclared,
    GroupState,
    NodeDeclared,
    RequestAdmitted,
    RequestEnded,
    RequestStarted,
    TokensDelivered,
)
from tests.clients import sse_events
from tests.test_api_http import ScriptedService, serving

ADMIN = {"Authorization": "Bearer admin-key"}
DEADLINE = 5.0


def cluster() -> ClusterState:
    state = ClusterState()
    state.apply(NodeDeclared("alice@mac1", "alice@mac1", False))
    state.apply(GroupDeclared("g", "m", ["alice@mac1"], "none", "ring"))
    state.apply(ActorStarting("g.rank0", "generation", "alice@mac1", "g", 0))
    return state


def serve(state: ClusterState, rid: str, status: str = "ok", model: str = "m") -> None:
    state.apply(RequestAdmitted(rid, model, "openai", "/v1/chat/completions"))
    state.apply(RequestStarted(rid, "g", model, owed=4))
    state.apply(TokensDelivered(rid, 2))
    error = "/Users/alice/venv/bin/python: boom" if status == "error" else ""
    state.apply(RequestEnded(rid, status, "stop" if status == "ok" else "", 2, 5, 1, error))


@contextlib.asynccontextmanager
async def api(state: ClusterState):
    observer = ClusterObserver(state)
    keys = Keys(admin="admin-key")
    async with serving(ScriptedService(), observer=observer, keys=keys) as url:
        async with httpx.AsyncClient(base_url=url, timeout=DEADLINE) as client:
            yield client


def one_line_400(response: httpx.Response, param: str) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and "\n" not in error["message"]
    assert error["message"].startswith(param + ":"), error["message"]
    return error["message"]


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/api/cluster/requests?limit=abc", "limit"),
        ("/api/cluster/requests?limit=0", "limit"),
        ("/api/cluster/requests?limit=1001", "limit"),
        ("/api/cluster/requests?limit=-3", "limit"),
        ("/api/cluster/requests?status=done", "status"),
        ("/api/cluster/errors?limit=201", "limit"),
        ("/api/cluster/errors?limit=1.5", "limit"),
        ("/api/cluster/timeseries", "metric"),
        ("/api/cluster/timeseries?metric=bogus", "metric"),
        ("/api/cluster/timeseries?metric=memory_used:nowhere", "metric"),
        ("/api/cluster/timeseries?metric=throughput&window=2h", "window"),
        ("/api/cluster/events?after=x", "after"),
    ],
)
async def test_bad_query_parameters_are_a_400_naming_them(path, param):
    async with api(cluster()) as client:
        one_line_400(await client.get(path), param)


async def test_a_bad_last_event_id_is_a_400_naming_it():
    async with api(cluster()) as client:
        response = await client.get("/api/cluster/events", headers={"Last-Event-ID": "soon"})
        one_line_400(response, "Last-Event-ID")


async def test_history_newest_first_filtered_and_limited_and_redacted_without_admin():
    state = cluster()
    for rid, status, model in [("a", "ok", "m"), ("b", "error", "m"), ("c", "ok", "other")]:
        serve(state, rid, status, model)
    async with api(state) as client:
        rows = (await client.get("/api/cluster/requests")).json()
        assert [r["id"] for r in rows] == ["c", "b", "a"]
        assert set(rows[0]) == {
            "id", "created", "dialect", "endpoint", "model", "groups", "status",
            "finish_reason", "prompt_tokens", "cached_tokens", "completion_tokens",
            "queue_ms", "ttft_ms", "duration_ms", "tokens_per_second", "error",
        }  # fmt: skip
        assert (rows[2]["prompt_tokens"], rows[2]["cached_tokens"]) == (5, 1)
        ok = (await client.get("/api/cluster/requests", params={"status": "ok"})).json()
        assert [r["id"] for r in ok] == ["c", "a"]
        other = (await client.get("/api/cluster/requests", params={"model": "other"})).json()
        assert [r["id"] for r in other] == ["c"]
        assert [r["id"] for r in (await client.get("/api/cluster/requests?limit=1")).json()] == [
            "c"
        ]
        assert (await client.get("/api/cluster/requests?limit=1000")).status_code == 200
        failed = rows[1]["error"]
        assert "alice" not in failed and "<path>" in failed
        admin = (await client.get("/api/cluster/requests?status=error", headers=ADMIN)).json()
        assert admin[0]["error"].startswith("/Users/alice/")


async def test_errors_name_the_actor_and_are_redacted_without_admin():
    state = cluster()
    state.apply(ActorStopped("g.rank0", "exited", "exit code -9 (/Users/alice/x)", "exit"))
    async with api(state) as client:
        (error,) = (await client.get("/api/cluster/errors")).json()
        assert error["kind"] == "actor_exited" and error["actor"] == "g.rank0"
        assert error["node"] == "<user>@mac1" and "alice" not in json.dumps(error)
        (error,) = (await client.get("/api/cluster/errors", headers=ADMIN)).json()
        assert error["node"] == "alice@mac1" and "/Users/alice/x" in error["message"]


async def test_timeseries_shape():
    async with api(cluster()) as client:
        body = (await client.get("/api/cluster/timeseries?metric=throughput&window=1h")).json()
        assert body == {"metric": "throughput", "unit": "tok/s", "points": []}


async def next_event(events, kind: str | None = None) -> dict:
    """The next event that is not a heartbeat (of ``kind`` when given)."""
    async with asyncio.timeout(DEADLINE):
        async for event in events:
            if "event" in event and (kind is None or event["event"] == kind):
                return event
    raise AssertionError("the feed ended")


async def test_feed_snapshot_then_changes_resume_without_repeats_and_redacted():
    state = cluster()
    async with api(state) as client:
        async with client.stream("GET", "/api/cluster/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = sse_events(response)
            first = await next_event(events)
            assert first["event"] == "snapshot" and int(first["id"]) == state.seq
            snapshot = json.loads(first["data"])
            assert {"uptime_seconds", "tokens_per_second_avg_60s", "memory", "history"} <= set(
                snapshot
            )
            assert "alice" not in first["data"]  # no admin key: redacted like the status
            state.apply(GroupState("g", "ready", leader="g.rank0"))
            change = await next_event(events, "GroupState")
            assert int(change["id"]) == state.seq
            seen = int(change["id"])
        state.apply(GroupState("g", "loading"))
        state.apply(GroupState("g", "ready", leader="g.rank0"))
        resumed = {"Last-Event-ID": str(seen), **ADMIN}
        async with client.stream("GET", "/api/cluster/events", headers=resumed) as response:
            events = sse_events(response)
            again = [await next_event(events), await next_event(events)]
            assert [e["event"] for e in again] == ["GroupState", "GroupState"]
            assert [int(e["id"]) for e in again] == [seen + 1, seen + 2]
        # too far behind (a number from another run): a fresh snapshot
        async with client.stream("GET", "/api/cluster/events?after=999999") as response:
            assert (await next_event(sse_events(response)))["event"] == "snapshot"


async def test_idle_feed_sends_heartbeat_comments(monkeypatch):
    monkeypatch.setattr(history, "HEARTBEAT", 0.1)
    state = cluster()
    async with api(state) as client:
        async with client.stream("GET", "/api/cluster/events") as response:
            events = sse_events(response)
            assert (await next_event(events))["event"] == "snapshot"
            async with asyncio.timeout(DEADLINE):
                ping = await anext(events)
            assert ping == {"comment": "ping"}
            state.apply(GroupState("g", "ready", leader="g.rank0"))
            assert (await next_event(events, "GroupState"))["id"] == str(state.seq)


async def test_a_client_that_goes_away_ends_its_subscription():
    state = cluster()
    before = len(state._subscribers)
    async with api(state) as client:
        for _ in range(3):
            async with client.stream("GET", "/api/cluster/events") as response:
                assert (await next_event(sse_events(response)))["event"] == "snapshot"
                assert len(state._subscribers) == before + 1
            deadline = asyncio.get_running_loop().time() + DEADLINE
            while len(state._subscribers) != before:
                assert asyncio.get_running_loop().time() < deadline, "subscription left open"
                await asyncio.sleep(0.01)
