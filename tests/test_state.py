"""ClusterState: every event folded by one apply(), health rules, numbering and the feed."""

from __future__ import annotations

import asyncio
from typing import get_args

import pytest

from actors.protocol.messages import Vitals
from supervisor.state import ClusterState
from supervisor.state.events import (
    ActorHeartbeat,
    ActorLoading,
    ActorReady,
    ActorRestarted,
    ActorSpawned,
    ActorStarting,
    ActorStopped,
    DrainStarted,
    Event,
    GroupDeclared,
    GroupLeaving,
    GroupRemoved,
    GroupState,
    LinkDown,
    LinkMeasured,
    ModelJobEnded,
    ModelJobProgress,
    ModelJobStarted,
    ModelsScanned,
    NodeDeclared,
    NodeHealth,
    NodeRemoved,
    NodeStatus,
    RequestAdmitted,
    RequestEnded,
    RequestMoved,
    RequestRefused,
    RequestStarted,
    RouteDecided,
    RouterDeclared,
    SupervisorRemoved,
    SupervisorRestarted,
    SupervisorStarted,
    Tick,
    TokensDelivered,
)
from supervisor.state.feed import Snapshot
from supervisor.state.folds.history import ErrorRecord


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def cluster(*groups: str) -> ClusterState:
    state = ClusterState(clock=Clock(), wall=lambda: 1_700_000_000.0)
    state.apply(NodeDeclared("n", "localhost", True))
    for g in groups:
        state.apply(GroupDeclared(g, "m", ["n"], "none", "ring"))
    return state


# ----------------------------------------------------------------------- apply


def test_every_event_type_is_applied_by_a_test_here():
    """A new event type needs a case in apply (assert_never) and a test below."""
    covered = {
        NodeDeclared, NodeStatus, NodeRemoved, GroupDeclared, GroupState, GroupLeaving,
        GroupRemoved, SupervisorStarted, SupervisorRestarted, SupervisorRemoved, ActorStarting,
        ActorSpawned, ActorHeartbeat, ActorLoading, ActorReady, ActorStopped, ActorRestarted,
        RequestAdmitted, RequestRefused, RequestStarted, TokensDelivered, RequestMoved,
        RequestEnded, RouterDeclared, RouteDecided, DrainStarted, NodeHealth, Tick,
        LinkMeasured, LinkDown,  # tested in test_link_probe_live.py, with their fold
        ModelJobStarted, ModelJobProgress, ModelJobEnded, ModelsScanned,  # test_models_state.py
    }  # fmt: skip
    assert covered == set(get_args(Event))


def test_an_object_that_is_no_event_is_refused():
    with pytest.raises(AssertionError):
        ClusterState().apply("GroupState")  # type: ignore[arg-type]


def test_nodes_are_declared_change_state_and_leave_with_their_actors():
    state = cluster()
    state.apply(NodeDeclared("n", "other", False))  # a second declaration changes nothing
    assert state.nodes["n"].ssh == "localhost"
    state.apply(NodeStatus("n", "unreachable", "connection refused"))
    assert (state.nodes["n"].state, state.nodes["n"].reason) == (
        "unreachable",
        "connection refused",
    )
    state.apply(ActorStarting("n.memory", "memory", "n"))
    state.apply(NodeRemoved("n"))
    assert state.nodes == {} and state.actors == {}


def test_a_group_moves_through_its_states_with_leader_and_context_length():
    state = cluster("g")
    assert state.groups["g"].state == "starting"
    state.apply(GroupState("g", "ready", context_length=4096, leader="g.rank0"))
    g = state.groups["g"]
    assert (g.state, g.leader, g.context_length) == ("ready", "g.rank0", 4096)
    state.apply(GroupState("g", "restarting", "g.rank0 exited"))
    g = state.groups["g"]
    assert (g.leader, g.context_length, g.restarts) == (None, 4096, 0)  # context is kept
    state.apply(GroupState("g", "starting", restarted=True))
    assert state.groups["g"].restarts == 1
    state.apply(GroupState("g", "failed", "3 restarts within 60 s"))
    assert state.errors(1)[0].kind == "group_failed"


def test_views_are_replaced_never_edited():
    state = cluster("g")
    before = state.groups["g"]
    state.apply(GroupLeaving("g"))
    assert state.groups["g"].leaving and not before.leaving
    with pytest.raises(AttributeError):
        state.groups["g"].leaving = False  # type: ignore[misc]


def test_a_group_removed_takes_its_actors_along():
    state = cluster("g", "h")
    state.apply(ActorStarting("g.rank0", "generation", "n", "g", 0))
    state.apply(ActorStarting("h.rank0", "generation", "n", "h", 0))
    state.apply(GroupRemoved("g"))
    assert list(state.groups) == ["h"] and list(state.actors) == ["h.rank0"]


def test_an_actor_lives_through_start_spawn_load_ready_beat_stop_and_restart():
    state = cluster("g")
    clock = state._clock
    state.apply(ActorStarting("g.rank0", "generation", "n", "g", 0))
    state.apply(ActorSpawned("g.rank0", 42))
    state.apply(ActorLoading("g.rank0", "weights", 0.5))
    a = state.actors["g.rank0"]
    assert (a.pid, a.state, a.load.stage, a.load.fraction) == (42, "loading", "weights", 0.5)
    state.apply(ActorReady("g.rank0", {"dtype": "bf16"}))
    a = state.actors["g.rank0"]
    assert (a.state, a.load.fraction, a.info) == ("running", 1.0, {"dtype": "bf16"})
    state.apply(ActorHeartbeat("g.rank0", Vitals(peak_batch_size=3, mem_total=8)))
    assert state.actors["g.rank0"].last_heartbeat == clock.now
    assert state.groups["g"].peak_batch_size == 3
    state.apply(ActorHeartbeat("g.rank0", Vitals(peak_batch_size=1)))
    assert state.groups["g"].peak_batch_size == 3  # a peak stays a peak
    state.apply(ActorStopped("g.rank0", "killed", "heartbeat silent"))
    assert state.errors(1)[0].kind == "actor_killed"
    state.apply(ActorRestarted("g.rank0"))
    state.apply(ActorStarting("g.rank0", "generation", "n", "g", 0))
    a = state.actors["g.rank0"]
    assert (a.state, a.pid, a.last_heartbeat, a.restarts, a.vitals) == (
        "starting",
        None,
        None,
        1,
        Vitals(),
    )
    state.apply(ActorHeartbeat("gone.rank0", Vitals()))  # a beat of an actor that left


def test_restart_history_is_a_fact_and_tells_the_budget_left():
    state = cluster("g")
    state.apply(SupervisorStarted("g", "g", intensity=2, period=10.0))
    state.apply(SupervisorRestarted("g", 100.0))
    assert state.supervisors["g"].budget_left(100.0) == 1
    state.apply(SupervisorRestarted("g", 105.0))
    sup = state.supervisors["g"]
    assert sup.budget_left(105.0) == 0 and sup.budget_left(111.0) == 1  # 100 left the period
    state.apply(SupervisorRestarted("g", 200.0))
    assert state.supervisors["g"].restart_times == (200.0,)  # older ones are no use
    assert state.supervisors["g"].restarts == 3
    state._clock.now = 300.0
    group = state.snapshot()["groups"][0]
    assert group["restart_budget"] == {"intensity": 2, "period": 10.0, "used": 0, "left": 2}
    state.apply(SupervisorStarted("g", "g", intensity=2, period=10.0))  # run() again
    assert state.supervisors["g"].restarts == 3, "a supervisor's history survives its re-run"
    state.apply(SupervisorRemoved("g"))
    assert state.supervisors == {}


def test_requests_admitted_refused_started_delivered_moved_and_ended():
    state = cluster("a", "b")
    state.apply(RequestAdmitted("r1", "m"))
    state.apply(RequestAdmitted("r2", "m"))
    assert state.waiting == 2
    state.apply(RequestRefused("r2", "no group"))
    state.apply(RequestStarted("r1", "a", "m", owed=10))
    assert state.waiting == 0 and state.requests_total == 1
    assert (state.groups["a"].in_flight, state.groups["a"].queued_tokens) == (1, 10)
    state.apply(TokensDelivered("r1", 3))
    assert state.groups["a"].queued_tokens == 7
    state.apply(RequestMoved("r1", "a", "b", owed=7))
    a, b = state.groups["a"], state.groups["b"]
    assert (a.in_flight, a.queued_tokens, a.tokens) == (0, 0, 3)
    assert (b.in_flight, b.queued_tokens) == (1, 7)
    assert state.router.failovers == 1
    state.apply(TokensDelivered("r1", 9))  # more than owed: the debt ends at 0
    assert state.groups["b"].queued_tokens == 0
    state.apply(RequestEnded("r1", "ok", "stop", completion_tokens=12, prompt_tokens=5))
    a, b = state.groups["a"], state.groups["b"]
    assert (b.in_flight, b.served, b.tokens, a.served) == (0, 1, 9, 0)
    assert state.tokens_total == 12 and state.running == {}
    assert state.requests(1)[0].groups == ("a", "b")


def test_a_failed_request_counts_as_an_error_of_its_last_group():
    state = cluster("a")
    state.apply(RequestStarted("r", "a", "m"))
    state.apply(RequestEnded("r", "error", error="boom"))
    assert state.groups["a"].errors == 1
    assert state.errors(1) == [
        ErrorRecord(1_700_000_000.0, "request_failed", "boom", group="a", request_id="r")
    ]


def test_a_request_whose_group_left_still_ends():
    state = cluster("a")
    state.apply(RequestStarted("r", "a", "m", owed=5))
    state.apply(GroupRemoved("a"))
    state.apply(TokensDelivered("r", 1))
    state.apply(RequestEnded("r", "ok", "stop", completion_tokens=1))
    assert state.tokens_total == 1 and state.running == {}


def test_router_figures_and_draining():
    state = cluster()
    state.apply(RouterDeclared("sticky", 30.0, 2.0))
    state.apply(RouteDecided("a", "sticky", 0.00002, sessions=1))
    router = state.snapshot()["router"]
    assert router["policy"] == "sticky" and router["decisions"] == {"sticky": 1}
    state.apply(DrainStarted())
    assert state.draining and state.snapshot()["draining"]


# ----------------------------------------------------------------------- health


@pytest.mark.parametrize(
    ("states", "code", "status"),
    [
        ({}, 503, "starting"),
        ({"a": "ready", "b": "ready"}, 200, "ok"),
        ({"a": "ready", "b": "restarting"}, 200, "degraded"),
        ({"a": "ready", "b": "failed"}, 200, "degraded"),
        ({"a": "starting", "b": "failed"}, 503, "starting"),
        ({"a": "failed", "b": "stopped"}, 503, "failed"),
        ({"a": "stopped"}, 503, "starting"),
        ({"a": "waiting"}, 503, "starting"),
    ],
)
def test_health(states, code, status):
    state = cluster(*states)
    for group, s in states.items():
        state.apply(GroupState(group, s, f"because {s}"))
    got, body = state.health()
    assert (got, body["status"]) == (code, status)
    assert body["groups"] == {g: {"state": s, "reason": f"because {s}"} for g, s in states.items()}


def test_draining_is_503_even_with_a_ready_group():
    state = cluster("a")
    state.apply(GroupState("a", "ready", leader="a.rank0"))
    state.apply(DrainStarted())
    assert state.health()[0] == 503 and state.health()[1]["status"] == "draining"


def test_snapshot_keeps_its_shape():
    state = cluster("g")
    state.apply(ActorStarting("g.rank0", "generation", "n", "g", 0))
    state.apply(ActorHeartbeat("g.rank0", Vitals(rss_bytes=1)))
    state._clock.now += 2.5
    snap = state.snapshot()
    assert {"uptime_seconds", "draining", "queue_depth", "requests_total", "tokens_total",
            "nodes", "actors", "groups", "router", "seq"} <= set(snap)  # fmt: skip
    node = {"name": "n", "ssh": "localhost", "local": True, "state": "connecting", "reason": ""}
    assert snap["nodes"][0].items() >= node.items()
    actor = snap["actors"][0]
    assert actor["id"] == "g.rank0" and actor["last_heartbeat_age"] == 2.5
    assert actor["load"] == {"stage": "", "fraction": 0.0}
    assert actor["vitals"]["active_requests"] == 0 and actor["vitals"]["rss_bytes"] == 1
    group = snap["groups"][0]
    assert group["nodes"] == ["n"] and group["in_flight"] == 0 and group["leader"] is None


# ---------------------------------------------------------- numbering and feed


def test_events_are_numbered_from_one():
    state = ClusterState()
    assert state.seq == 0
    assert state.apply(NodeDeclared("n", "x", True)) == 1
    assert state.apply(NodeStatus("n", "up")) == 2
    assert state.seq == 2 and state.snapshot()["seq"] == 2


async def test_a_fresh_subscriber_gets_a_snapshot_then_every_event():
    state = cluster("g")
    async with state.subscribe() as feed:
        number, first = await anext(feed)
        assert isinstance(first, Snapshot) and number == state.seq == 2
        assert first.state["groups"][0]["name"] == "g"
        state.apply(GroupState("g", "ready", leader="g.rank0"))
        assert await anext(feed) == (3, GroupState("g", "ready", leader="g.rank0"))


async def test_a_subscriber_resumes_after_the_number_it_saw():
    state = cluster("g")  # events 1 and 2
    state.apply(GroupLeaving("g"))  # 3
    feed = state.subscribe(after=1)
    assert await anext(feed) == (2, GroupDeclared("g", "m", ["n"], "none", "ring"))
    assert await anext(feed) == (3, GroupLeaving("g"))
    waiting = asyncio.ensure_future(anext(feed))
    await asyncio.sleep(0)
    assert not waiting.done()
    state.apply(DrainStarted())
    assert await asyncio.wait_for(waiting, 1) == (4, DrainStarted())
    feed.close()
    with pytest.raises(StopAsyncIteration):
        await anext(feed)
    state.apply(DrainStarted())  # a closed subscription is no longer fed
    assert state._subscribers == set()


async def test_a_number_that_fell_out_of_the_ring_or_is_unknown_gets_a_snapshot():
    state = ClusterState(event_log_size=3)
    for i in range(5):
        state.apply(NodeDeclared(f"n{i}", "x", True))
    assert isinstance((await anext(state.subscribe(after=2)))[1], NodeDeclared)  # 3 is kept
    for after in (0, 1, 6, -1):  # gone, gone, from another run, nonsense
        number, item = await anext(state.subscribe(after=after))
        assert isinstance(item, Snapshot) and number == 5, after
    assert await anext(state.subscribe(after=4)) == (5, NodeDeclared("n4", "x", True))


async def test_a_slow_subscriber_is_resynced_and_never_blocks_apply():
    state = ClusterState(subscriber_queue=4)
    slow = state.subscribe(after=0)
    for i in range(10):  # apply goes on while nobody reads
        state.apply(NodeDeclared(f"n{i}", "x", True))
    assert slow.resyncs == 1
    number, item = await anext(slow)
    assert isinstance(item, Snapshot) and number == 10 and len(item.state["nodes"]) == 10
    state.apply(NodeRemoved("n0"))
    assert await anext(slow) == (11, NodeRemoved("n0"))  # live again, no gap


async def test_a_backlog_longer_than_the_queue_is_a_snapshot():
    state = ClusterState(subscriber_queue=2)
    for i in range(3):
        state.apply(NodeDeclared(f"n{i}", "x", True))
    assert isinstance((await anext(state.subscribe(after=0)))[1], Snapshot)


async def test_wait_for_wakes_on_the_event_that_makes_it_true():
    state = cluster("g")
    waiting = asyncio.ensure_future(state.wait_for(lambda: state.groups["g"].state == "ready", 5))
    await asyncio.sleep(0)
    state.apply(GroupState("g", "restarting"))
    await asyncio.sleep(0)
    assert not waiting.done()
    state.apply(GroupState("g", "ready", leader="g.rank0"))
    assert await asyncio.wait_for(waiting, 1) is True
    assert await state.wait_for(lambda: False, 0.01) is False
    assert state._waiters == []
