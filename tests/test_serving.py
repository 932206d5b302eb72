"""ClusterService admission and placement rules, over stand-in groups and a real ClusterState.

When no group is ready a request waits for one that is starting or restarting, at most
``ready_wait``; only when every group has failed, or the wait runs out, is it a 503 with
Retry-After. A request that lost its group waits for it to come back when no other group
is alive. Waiting requests count against ``queue_limit``; a prompt whose bytes cannot fit
the context is refused before any actor sees it.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from actors.protocol.messages import ChatMessage, GenerationRequest, ToolSpec
from supervisor.serving.contract import ContextLengthExceeded, QueueFull, Unavailable
from supervisor.serving.router import Hardware
from supervisor.serving.service import (
    BYTES_PER_TOKEN_CEILING,
    FAILED_RETRY_AFTER,
    RESTART_RETRY_AFTER,
    ClusterService,
    prompt_bytes,
)
from supervisor.state import ClusterState
from supervisor.state.events import GroupDeclared, GroupLeaving, GroupState
from tests.conftest import until

MODEL = "m"
WAIT = 2.0  # ready_wait of these tests: long enough for a restart here, short for a timeout


class Leader:
    is_open = True


class Group:
    """A stand-in supervised group; tests move it through its states in the ClusterState."""

    def __init__(self, state: ClusterState, name: str, context_length: int = 100):
        self.name, self.model = name, MODEL
        self.context_length = context_length  # what its leader reports when ready
        self.hardware = Hardware()
        self._state = state
        state.apply(GroupDeclared(name, MODEL, ["n"], "none", "ring"))
        self.set("starting")

    def handle(self, actor_id: str) -> Leader:
        return Leader()

    @property
    def leaving(self) -> bool:
        return self._state.groups[self.name].leaving

    @leaving.setter
    def leaving(self, leaving: bool) -> None:
        assert leaving, "a group never comes back from leaving"
        self._state.apply(GroupLeaving(self.name))

    def set(self, state: str) -> None:
        ready = state == "ready"
        leader = f"{self.name}.rank0" if ready else None
        context = self.context_length if ready else 0
        restarted = state == "restarting"
        self._state.apply(GroupState(self.name, state, "", restarted, context, leader))


def service(*names: str, queue_limit: int = 8, ready_wait: float = WAIT):
    state = ClusterState()
    groups = [Group(state, n) for n in names]
    return ClusterService(state, groups, queue_limit=queue_limit, ready_wait=ready_wait), groups


def request(content: str = "hi", rid: str = "r") -> GenerationRequest:
    return GenerationRequest(rid, MODEL, messages=[ChatMessage("user", content)])


async def test_a_request_waits_for_a_restarting_group_and_is_served():
    svc, (a,) = service("a")
    a.set("restarting")
    placing = asyncio.create_task(svc.place(request()))
    await until(lambda: svc._state.router.decisions, 2, "a first look")
    assert not placing.done()
    a.set("ready")
    assert await asyncio.wait_for(placing, 2) is a


async def test_every_group_failed_is_503_at_once_with_a_long_retry_after():
    svc, (a, b) = service("a", "b")
    a.set("failed")
    b.set("failed")
    began = time.monotonic()
    with pytest.raises(Unavailable) as info:
        await svc.place(request())
    assert time.monotonic() - began < 0.5
    assert info.value.retry_after == FAILED_RETRY_AFTER
    assert "has failed" in info.value.message


async def test_one_failed_and_one_restarting_waits_for_the_restarting_one():
    svc, (a, b) = service("a", "b")
    a.set("failed")
    b.set("restarting")
    placing = asyncio.create_task(svc.place(request()))
    await asyncio.sleep(0)
    b.set("ready")
    assert await asyncio.wait_for(placing, 2) is b


async def test_the_wait_is_bounded_by_ready_wait_then_503_with_a_short_retry_after():
    svc, (a,) = service("a", ready_wait=0.3)
    a.set("restarting")
    began = time.monotonic()
    with pytest.raises(Unavailable) as info:
        await svc.place(request())
    assert 0.3 <= time.monotonic() - began < 1.5
    assert info.value.retry_after == RESTART_RETRY_AFTER
    assert "within 0.3 s" in info.value.message


async def test_groups_leaving_or_stopped_are_not_waited_for():
    svc, (a, b) = service("a", "b")
    a.set("restarting")
    a.leaving = True
    b.set("stopped")
    began = time.monotonic()
    with pytest.raises(Unavailable):
        await svc.place(request())
    assert time.monotonic() - began < 0.5


async def test_a_lost_group_is_avoided_while_another_is_alive():
    svc, (a, b) = service("a", "b")
    a.set("ready")
    b.set("restarting")
    placing = asyncio.create_task(svc.place(request(), exclude=["a"]))
    await until(lambda: svc._state.router.decisions, 2, "a first look")
    assert not placing.done()  # a is ready, but the request just lost it: b is coming
    b.set("ready")
    assert await asyncio.wait_for(placing, 2) is b


async def test_a_request_that_lost_the_only_group_waits_for_it_to_restart():
    svc, (a,) = service("a")
    a.set("restarting")
    placing = asyncio.create_task(svc.place(request(), exclude=["a"]))
    await until(lambda: svc._state.router.decisions, 2, "a first look")
    assert not placing.done()
    a.set("ready")
    assert await asyncio.wait_for(placing, 2) is a


async def test_a_lost_group_that_failed_leaves_nothing_to_wait_for():
    svc, (a, b) = service("a", "b")
    a.set("failed")
    b.set("failed")
    with pytest.raises(Unavailable) as info:
        await svc.place(request(), exclude=["a"])
    assert info.value.retry_after == FAILED_RETRY_AFTER


async def test_requests_waiting_for_a_group_count_against_the_queue_limit():
    svc, (a,) = service("a", queue_limit=2)
    a.set("restarting")
    waiting = [asyncio.create_task(svc.submit(request(rid=f"w{i}"))) for i in range(2)]
    await until(lambda: svc.waiting == 2, 2, "two waiting requests")
    with pytest.raises(QueueFull) as info:
        await svc.submit(request(rid="third"))
    assert "2 requests in flight or waiting" in info.value.message
    a.set("ready")
    streams = await asyncio.wait_for(asyncio.gather(*waiting), 2)
    assert svc.waiting == 0
    assert [s.served_by for s in streams] == ["a", "a"]
    for s in streams:
        await s.aclose()


async def test_a_prompt_too_large_for_the_context_is_refused_by_its_bytes():
    svc, (a,) = service("a")  # context 100 tokens
    a.set("ready")
    limit = 100 * BYTES_PER_TOKEN_CEILING
    with pytest.raises(ContextLengthExceeded) as info:
        await svc.submit(request("x" * (limit + 1)))
    assert info.value.param == "messages"
    assert info.value.code == "context_length_exceeded"
    assert f"{limit + 1} bytes" in info.value.message and "100 tokens" in info.value.message
    assert svc._state.requests_total == 0  # never routed
    stream = await svc.submit(request("x" * limit))  # the exact count is the actor's
    await stream.aclose()


async def test_no_byte_bound_before_any_group_reported_its_context():
    svc, (a,) = service("a")
    a.context_length = 0
    a.set("ready")
    stream = await svc.submit(request("x" * 10**6))
    await stream.aclose()


def test_prompt_bytes_counts_utf8_text_of_messages_prompt_and_tools():
    chat = GenerationRequest(
        "r",
        MODEL,
        messages=[ChatMessage("system", "ab"), ChatMessage("user", "é²")],  # 2 + 4 bytes
        tools=[ToolSpec("f", None, {"type": "object"})],
    )
    tools = len(b'[{"name":"f","parameters":{"type":"object"}}]')
    assert prompt_bytes(chat) == 6 + tools
    assert prompt_bytes(GenerationRequest("r", MODEL, prompt="héllo")) == 6


async def test_a_group_waiting_for_its_unreachable_host_is_503_at_once_with_the_reason():
    svc, (a,) = service("a")
    a._state.apply(GroupState("a", "waiting", "node n unreachable: connection refused"))
    began = time.monotonic()
    with pytest.raises(Unavailable) as info:
        await svc.place(request())
    assert time.monotonic() - began < WAIT
    assert "a waiting: node n unreachable: connection refused" in info.value.message
    assert info.value.retry_after == RESTART_RETRY_AFTER
