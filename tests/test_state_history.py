"""ClusterState's request history, errors log, counters and histograms, from the events alone."""

from __future__ import annotations

import msgspec
import pytest

from supervisor.config.load import HostfileError, parse_hostfile
from supervisor.config.spec import HistorySpec
from supervisor.state import ClusterState
from supervisor.state.events import (
    ActorRestarted,
    ActorStarting,
    ActorStopped,
    GroupDeclared,
    NodeDeclared,
    NodeStatus,
    RequestAdmitted,
    RequestEnded,
    RequestMoved,
    RequestRefused,
    RequestStarted,
    SupervisorRestarted,
    SupervisorStarted,
    TokensDelivered,
)
from supervisor.state.folds.history import ErrorRecord, RequestRecord
from supervisor.state.folds.metrics import TTFT_BUCKETS, Histogram

WALL = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def cluster(*groups: str, history: HistorySpec | None = None) -> ClusterState:
    state = ClusterState(clock=Clock(), wall=lambda: WALL, history=history)
    state.apply(NodeDeclared("n", "localhost", True))
    for g in groups:
        state.apply(GroupDeclared(g, "m", ["n"], "none", "ring"))
    return state


def advance(state: ClusterState, seconds: float) -> None:
    state._clock.now += seconds


def serve(state: ClusterState, rid: str, chunks=(1, 2), group="a", status="ok") -> None:
    """Admit, place after 0.5 s, deliver ``chunks`` 0.1 s apart (the first after 0.2 s), end."""
    state.apply(RequestAdmitted(rid, "m", "openai", "/v1/chat/completions"))
    advance(state, 0.5)
    state.apply(RequestStarted(rid, group, "m", owed=10))
    advance(state, 0.2)
    for n in chunks:
        state.apply(TokensDelivered(rid, n))
        advance(state, 0.1)
    reason = "stop" if status == "ok" else ""
    state.apply(RequestEnded(rid, status, reason, sum(chunks), 7, 3, "boom" * (status == "error")))


def test_a_record_holds_what_the_request_did_with_its_times():
    state = cluster("a")
    serve(state, "r1", chunks=(1, 4))
    (record,) = state.requests()
    assert record == RequestRecord(
        id="r1", created=WALL, dialect="openai", endpoint="/v1/chat/completions", model="m",
        groups=("a",), status="ok", finish_reason="stop", prompt_tokens=7, cached_tokens=3,
        completion_tokens=5, queue_ms=500.0, ttft_ms=700.0, duration_ms=900.0,
        tokens_per_second=20.0, error="",
    )  # fmt: skip
    # 4 tokens after the first, over the 0.2 s since it; no prompt: keep_prompts is off
    assert "prompt" not in msgspec.json.decode(msgspec.json.encode(record))


def test_a_failed_over_request_is_one_record_with_every_group_and_tokens_counted_once():
    state = cluster("a", "b")
    state.apply(RequestAdmitted("r", "m", "ollama", "/api/chat"))
    state.apply(RequestStarted("r", "a", "m", owed=10))
    state.apply(TokensDelivered("r", 3))
    state.apply(RequestMoved("r", "a", "b", owed=7))
    state.apply(TokensDelivered("r", 2))
    state.apply(RequestEnded("r", "ok", "length", completion_tokens=5, prompt_tokens=4))
    (record,) = state.requests()
    assert (record.groups, record.completion_tokens, record.dialect) == (("a", "b"), 5, "ollama")
    figures = state.metrics.models["m"]
    assert figures.generation_tokens == 5 == state.metrics.tokens_generated
    assert figures.requests == {"ok": 1} and figures.success == {"length": 1}
    assert figures.e2e_request_latency.count == 1 == figures.request_queue_time.count


def test_histogram_counts_equal_the_requests_and_counters_what_was_delivered():
    state = cluster("a")
    for i in range(5):
        serve(state, f"r{i}", chunks=(1, 2, 3))
    serve(state, "bad", chunks=(1,), status="error")
    m = state.metrics.models["m"]
    assert m.e2e_request_latency.count == m.request_queue_time.count == 6
    assert m.time_to_first_token.count == 6
    assert m.inter_token_latency.count == 5 * (2 + 3)  # a chunk of n: n gaps; not the first
    assert m.inter_token_latency.sum == pytest.approx(5 * (2 * 0.05 + 3 * 0.1 / 3))
    assert m.generation_tokens == 5 * 6 + 1 and m.prompt_tokens == 6 * 7
    assert (m.prefix_cache_queries, m.prefix_cache_hits) == (42, 18)
    assert m.requests == {"ok": 5, "error": 1} and m.success == {"stop": 5}
    assert m.e2e_request_latency.sum == pytest.approx(5 * 1.0 + 0.8)
    assert state.metrics.latency_avg_ms() == pytest.approx(5800 / 6, abs=0.1)
    assert state.errors(1)[0] == ErrorRecord(WALL, "request_failed", "boom", group="a",
                                             request_id="bad")  # fmt: skip


def test_histogram_buckets_are_cumulative_with_inclusive_upper_bounds():
    h = Histogram((0.1, 1.0))
    h.observe(0.1)
    h.observe(0.5, 2)
    h.observe(5.0)
    assert h.cumulative() == [(0.1, 1), (1.0, 3), (float("inf"), 4)]
    assert (h.count, h.sum) == (4, pytest.approx(6.1))
    assert TTFT_BUCKETS[0] == 0.001 and TTFT_BUCKETS[-1] == 2560.0  # vLLM's


def test_cancelled_counts_as_vllm_abort_and_tool_calls_as_stop():
    state = cluster("a")
    state.apply(RequestStarted("r1", "a", "m"))
    state.apply(RequestEnded("r1", "cancelled"))
    state.apply(RequestStarted("r2", "a", "m"))
    state.apply(RequestEnded("r2", "ok", "tool_calls"))
    assert state.metrics.models["m"].success == {"abort": 1, "stop": 1}
    assert state.requests(1)[0].finish_reason == "tool_calls"
    assert [r.ttft_ms for r in state.requests()] == [None, None]  # no token came


def test_a_refused_request_is_recorded_and_one_whose_client_left_is_cancelled():
    state = cluster("a")
    state.apply(RequestAdmitted("r1", "m", "openai", "/v1/completions"))
    advance(state, 2.0)
    state.apply(RequestRefused("r1", "no group serving 'm' is ready"))
    state.apply(RequestAdmitted("r2", "m"))
    state.apply(RequestRefused("r2", "CancelledError", "cancelled"))
    cancelled, refused = state.requests()
    assert (refused.status, refused.groups, refused.queue_ms, refused.error) == (
        "error", (), 2000.0, "no group serving 'm' is ready"
    )  # fmt: skip
    assert (cancelled.status, cancelled.error) == ("cancelled", "")
    assert [e.kind for e in state.errors()] == ["request_refused"]
    assert state.metrics.models["m"].requests == {"error": 1, "cancelled": 1}
    assert state.waiting == 0


def test_reads_filter_newest_first_and_the_rings_keep_the_hostfile_sizes():
    state = cluster("a", history=HistorySpec(requests=3, errors=2))
    for i in range(5):
        serve(state, f"r{i}", status="error" if i % 2 else "ok")
    assert [r.id for r in state.requests()] == ["r4", "r3", "r2"]
    assert [r.id for r in state.requests(10, status="ok")] == ["r4", "r2"]
    assert [r.id for r in state.requests(1)] == ["r4"]
    assert state.requests(10, model="other") == [] and state.requests(0) == []
    assert [e.request_id for e in state.errors()] == ["r3", "r1"]
    assert len(state.errors(1)) == 1


def test_prompts_are_kept_only_when_the_hostfile_says_so_and_clipped():
    off = cluster("a")
    on = cluster("a", history=HistorySpec(keep_prompts=True))
    assert (off.keep_prompts, on.keep_prompts) == (False, True)
    on.apply(RequestAdmitted("r", "m", prompt="x" * 5000))
    on.apply(RequestStarted("r", "a", "m"))
    on.apply(RequestEnded("r", "ok", "stop"))
    assert on.requests()[0].prompt == "x" * 2000


def test_actor_failures_are_logged_by_cause_with_node_group_and_actor():
    state = cluster("g")
    state.apply(SupervisorStarted("g", "g", intensity=3, period=60.0))
    for rank in (0, 1):
        state.apply(ActorStarting(f"g.rank{rank}", "generation", "n", "g", rank))
    state.apply(
        ActorStopped("g.rank1", "killed", "g.rank1 heartbeat silent for 2.1 s", "heartbeat")
    )
    state.apply(ActorStopped("g.rank0", "killed", "g.rank1 heartbeat silent for 2.1 s"))
    state.apply(SupervisorRestarted("g", 100.0, "g.rank1 heartbeat silent for 2.1 s"))
    state.apply(ActorRestarted("g.rank0"))
    state.apply(ActorRestarted("g.rank1"))
    state.apply(ActorStopped("g.rank1", "killed", "no progress (watchdog)", "watchdog"))
    state.apply(ActorStopped("g.rank0", "failed", "could not be spawned", "spawn"))
    state.apply(ActorStopped("g.rank1", "exited", "exit code -9"))
    state.apply(ActorStopped("g.rank1", "killed", "g.rank1 exited with code -9", "exit"))
    state.apply(NodeStatus("n", "unreachable", "connection refused"))
    state.apply(NodeStatus("n", "unreachable", "connection refused"))  # no change: no entry
    got = [(e.kind, e.actor, e.group, e.node) for e in reversed(state.errors())]
    assert got == [
        ("heartbeat_lost", "g.rank1", "g", "n"),
        ("actor_killed", "g.rank0", "g", "n"),
        ("restart", None, "g", None),
        ("watchdog_kill", "g.rank1", "g", "n"),
        ("spawn_failed", "g.rank0", "g", "n"),
        ("actor_exited", "g.rank1", "g", "n"),  # its kill after it exited is no second entry
        ("node_unreachable", None, None, "n"),
    ]
    assert state.metrics.restarts == {("generation", "g"): 2}


def test_a_node_actors_restart_names_the_actor_and_its_node():
    state = cluster()
    state.apply(ActorStarting("n.memory", "memory", "n"))
    state.apply(SupervisorStarted("n.memory", None, intensity=3, period=60.0))
    state.apply(SupervisorRestarted("n.memory", 100.0, "n.memory exited with code 1"))
    state.apply(ActorRestarted("n.memory"))
    (e,) = state.errors()
    assert (e.kind, e.actor, e.node, e.group, e.message) == (
        "restart", "n.memory", "n", None, "n.memory exited with code 1"
    )  # fmt: skip
    assert state.metrics.restarts == {("memory", ""): 1}


def test_the_hostfile_sizes_the_rings_within_bounds():
    hosts = [{"ssh": "localhost"}]
    doc = {"hosts": hosts, "history": {"requests": 5, "errors": 3, "keep_prompts": True}}
    spec = parse_hostfile(msgspec.json.encode(doc), "hostfile.json")
    assert spec.history == HistorySpec(requests=5, errors=3, keep_prompts=True)
    assert parse_hostfile(msgspec.json.encode({"hosts": hosts}), "h").history == HistorySpec()
    with pytest.raises(HostfileError, match=r"\$\.history\.requests: Expected int >= 1"):
        parse_hostfile(msgspec.json.encode({"hosts": hosts, "history": {"requests": 0}}), "h")
    with pytest.raises(
        HostfileError,
        match=r"\$\.history: unknown key \"prompts\"; did you mean \"keep_prompts\"\?",
    ):
        parse_hostfile(msgspec.json.encode({"hosts": hosts, "history": {"prompts": 1}}), "h")
