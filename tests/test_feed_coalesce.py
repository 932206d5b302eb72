"""A subscriber may have high-rate events coalesced: at most one Live item per interval."""

from __future__ import annotations

import asyncio

from actors.protocol.messages import Vitals
from supervisor.state import ClusterState
from supervisor.state.events import (
    ActorHeartbeat,
    ActorStarting,
    GroupDeclared,
    GroupState,
    NodeDeclared,
    RequestStarted,
    Tick,
    TokensDelivered,
)
from supervisor.state.feed import VITALS, Live, Snapshot


def cluster() -> ClusterState:
    state = ClusterState()
    state.apply(NodeDeclared("n", "localhost", True))
    state.apply(GroupDeclared("g", "m", ["n"], "none", "ring"))
    state.apply(ActorStarting("n.memory", "memory", "n"))
    state.apply(ActorHeartbeat("n.memory", Vitals(mem_total=1, mem_available=1)))  # health: ok
    return state


async def test_many_vitals_become_one_live_item_and_other_events_pass_in_order():
    state = cluster()
    feed = state.subscribe(state.seq, coalesce=VITALS, interval=60.0)
    state.apply(RequestStarted("r", "g", "m"))
    for _ in range(50):
        state.apply(TokensDelivered("r", 2))
        state.apply(ActorHeartbeat("n.memory", Vitals(mem_total=8, mem_available=8)))
    state.apply(Tick())
    last = state.seq
    number, item = await anext(feed)
    assert isinstance(item, RequestStarted)
    number, item = await anext(feed)  # the first Live item comes at once
    assert isinstance(item, Live) and number == last
    assert item.figures["tokens_generated"] == 100 and item.figures["in_flight"] == 1
    assert item.figures["memory"]["nodes"]["n"]["mem_total"] == 8
    state.apply(ActorHeartbeat("n.memory", Vitals(mem_total=9, mem_available=9)))
    state.apply(GroupState("g", "ready", leader="g.rank0"))
    number, item = await anext(feed)  # the next one waits its interval: the change passes it
    assert isinstance(item, GroupState) and number == state.seq
    waiting = asyncio.ensure_future(anext(feed))
    done, _ = await asyncio.wait({waiting}, timeout=0.05)
    assert not done, "a second Live item within the interval"
    waiting.cancel()
    feed.close()


async def test_live_items_come_at_most_once_per_interval_and_numbers_never_go_down():
    state = cluster()
    feed = state.subscribe(coalesce=VITALS, interval=0.1)
    number, item = await anext(feed)
    assert isinstance(item, Snapshot)
    loop = asyncio.get_running_loop()
    seen: list[tuple[float, int]] = []
    for _ in range(3):
        state.apply(ActorHeartbeat("n.memory", Vitals(mem_total=1, mem_available=1)))
        number, item = await asyncio.wait_for(anext(feed), 2)
        assert isinstance(item, Live)
        seen.append((loop.time(), number))
    assert [n for _, n in seen] == sorted(n for _, n in seen)
    gaps = [b - a for (a, _), (b, _) in zip(seen, seen[1:], strict=False)]
    assert all(gap >= 0.09 for gap in gaps), gaps
    feed.close()


async def test_a_resumed_backlog_is_coalesced_too_and_without_coalescing_all_pass():
    state = cluster()
    start = state.seq
    for _ in range(5):
        state.apply(ActorHeartbeat("n.memory", Vitals(mem_total=1, mem_available=1)))
    state.apply(GroupState("g", "ready", leader="g.rank0"))
    feed = state.subscribe(start, coalesce=VITALS)
    assert isinstance((await anext(feed))[1], GroupState)
    assert await anext(feed) == (state.seq, Live(state.live()))
    plain = state.subscribe(start)
    kinds = [type((await anext(plain))[1]) for _ in range(6)]
    assert kinds == [ActorHeartbeat] * 5 + [GroupState]
