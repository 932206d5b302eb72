"""RoutedStream's accounting across a failover: owed tokens and counted tokens, once each."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection

import pytest

from actors.protocol.messages import (
    ChatMessage,
    Finished,
    GenerationEvent,
    GenerationFailed,
    GenerationRequest,
    TokenDelta,
    Usage,
)
from supervisor.serving.contract import Unavailable
from supervisor.serving.routed_stream import RoutedStream
from supervisor.state import ClusterState
from supervisor.state.events import GroupDeclared, GroupState


class Leader:
    """A group's leader that plays a script: token deltas, then how it ends."""

    is_open = True

    def __init__(self, script: list[GenerationEvent]):
        self.script = script
        self.requests: list[GenerationRequest] = []

    async def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        self.requests.append(request)
        for event in self.script:
            await asyncio.sleep(0)
            yield event


class Group:
    def __init__(self, name: str, leader: Leader):
        self.name, self.model, self.leader = name, "m", leader

    def handle(self, actor_id: str) -> Leader:
        return self.leader


class Placement:
    def __init__(self, state: ClusterState, *groups: Group):
        self.state, self.groups, self.cooled = state, list(groups), []

    async def place(self, request: GenerationRequest, exclude: Collection[str] = ()) -> Group:
        for group in self.groups:
            if group.name not in exclude:
                return group
        raise Unavailable("no other group serves 'm'; retry shortly", retry_after=5)

    def leader(self, group: Group) -> Leader:
        return group.leader

    def cool(self, group: str) -> None:
        self.cooled.append(group)


def delta(*ids: int) -> TokenDelta:
    return TokenDelta("r", "x" * len(ids), list(ids))


LOST = GenerationFailed("r", "generation actor a.rank0 was lost", retryable=True, status=503)


def setup(*groups: Group) -> tuple[ClusterState, Placement]:
    state = ClusterState()
    for g in groups:
        state.apply(GroupDeclared(g.name, "m", ["n"], "none", "ring"))
        state.apply(GroupState(g.name, "ready", leader=f"{g.name}.rank0"))
    return state, Placement(state, *groups)


REQUEST = GenerationRequest("r", "m", messages=[ChatMessage("user", "hi")], max_tokens=10)


async def test_a_failover_resumes_and_counts_every_token_once():
    a = Group("a", Leader([delta(1, 2), delta(3), LOST]))
    b = Group("b", Leader([delta(4, 5), Finished("r", "stop", Usage(7, 5))]))
    state, placement = setup(a, b)
    stream = RoutedStream(placement, state, a, REQUEST)
    assert state.groups["a"].queued_tokens == 10  # max_tokens owed
    events = stream.__aiter__()
    await anext(events)
    assert state.groups["a"].queued_tokens == 8
    await anext(events)
    await anext(events)  # b's first delta: the move happened
    ga, gb = state.groups["a"], state.groups["b"]
    assert (ga.in_flight, ga.queued_tokens, ga.tokens) == (0, 0, 3)
    assert (gb.in_flight, gb.queued_tokens) == (1, 10 - 3 - 2)
    assert b.leader.requests[0].resume_tokens == [1, 2, 3]
    assert placement.cooled == ["a"]
    finished = await anext(events)
    assert isinstance(finished, Finished)
    with pytest.raises(StopAsyncIteration):
        await anext(events)
    gb = state.groups["b"]
    assert (gb.in_flight, gb.queued_tokens, gb.tokens, gb.served) == (0, 0, 2, 1)
    assert state.tokens_total == 5 and state.router.failovers == 1
    assert stream.served_by == "a"
    assert state.requests(1)[0].groups == ("a", "b")
    await stream.aclose()  # ended once: no second RequestEnded
    assert state.requests_total == 1 and len(state.requests()) == 1


async def test_no_group_to_move_to_ends_the_stream_with_the_loss():
    a = Group("a", Leader([delta(1), LOST]))
    state, placement = setup(a)
    stream = RoutedStream(placement, state, a, REQUEST)
    got = [event async for event in stream]
    assert isinstance(got[-1], GenerationFailed) and "no other group" in got[-1].message
    g = state.groups["a"]
    assert (g.in_flight, g.queued_tokens, g.tokens, g.errors) == (0, 0, 1, 1)
    assert state.tokens_total == 1


async def test_a_client_that_hangs_up_leaves_nothing_owed():
    leader = Leader([delta(1), delta(2), Finished("r", "stop", Usage(1, 2))])
    a = Group("a", leader)
    state, placement = setup(a)
    stream = RoutedStream(placement, state, a, REQUEST)
    await anext(stream.__aiter__())
    await stream.aclose()
    g = state.groups["a"]
    assert (g.in_flight, g.queued_tokens, g.tokens) == (0, 0, 1)
    assert state.requests(1)[0].status == "cancelled"


async def test_without_max_tokens_a_default_budget_is_owed():
    from supervisor.serving.routed_stream import DEFAULT_BUDGET

    a = Group("a", Leader([]))
    state, placement = setup(a)
    request = GenerationRequest("r", "m", prompt="hi", resume_tokens=[9, 9])
    stream = RoutedStream(placement, state, a, request)
    assert state.groups["a"].queued_tokens == DEFAULT_BUDGET - 2
    await stream.aclose()
    assert state.groups["a"].queued_tokens == 0


async def test_a_request_is_placed_at_most_max_placements_times():
    from supervisor.serving.routed_stream import MAX_PLACEMENTS

    groups = [Group(name, Leader([LOST])) for name in "abcde"]
    state, placement = setup(*groups)
    got = [event async for event in RoutedStream(placement, state, groups[0], REQUEST)]
    assert len(got) == 1 and isinstance(got[0], GenerationFailed)
    assert f"given up after {MAX_PLACEMENTS} placements (a, b, c, d)" in got[0].message
    assert state.router.failovers == MAX_PLACEMENTS - 1
    assert all(g.in_flight == 0 and g.queued_tokens == 0 for g in state.groups.values())
