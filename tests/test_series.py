"""Time series in memory: windows, resolution, bounds, and the sampler that beats them."""

from __future__ import annotations

import pytest

from actors.protocol.messages import Vitals
from supervisor.cluster.sampler import Sampler
from supervisor.state import ClusterState
from supervisor.state.events import (
    ActorHeartbeat,
    ActorStarting,
    GroupDeclared,
    NodeDeclared,
    NodeRemoved,
    RequestAdmitted,
    RequestEnded,
    RequestStarted,
    Tick,
    TokensDelivered,
)
from supervisor.state.folds.series import STEP, WINDOWS

GB = 1 << 30


class Clocks:
    """A monotonic and a wall clock that move together."""

    def __init__(self) -> None:
        self.mono = 0.0
        self.wall = 1_700_000_000.0

    def tick(self, state: ClusterState, seconds: float = STEP) -> None:
        self.mono += seconds
        self.wall += seconds
        state.apply(Tick())


def cluster() -> tuple[ClusterState, Clocks]:
    clocks = Clocks()
    state = ClusterState(clock=lambda: clocks.mono, wall=lambda: clocks.wall)
    state.apply(NodeDeclared("n", "localhost", True))
    state.apply(GroupDeclared("a", "m", ["n"], "none", "ring"))
    return state, clocks


def test_throughput_and_requests_are_rates_over_each_bucket():
    state, clocks = cluster()
    state.apply(RequestStarted("r", "a", "m"))
    state.apply(TokensDelivered("r", 10))
    clocks.tick(state)
    state.apply(TokensDelivered("r", 30))
    state.apply(RequestEnded("r", "ok", "stop", 40))
    clocks.tick(state, 4.0)  # a late tick: a longer bucket, not a wrong rate
    unit, points = state.timeseries("throughput", "15m")
    assert unit == "tok/s"
    assert points == [[1_700_000_002.0, 5.0], [1_700_000_006.0, 7.5]]
    assert state.timeseries("requests", "15m") == ("req/s", [[1_700_000_002.0, 0.0],
                                                             [1_700_000_006.0, 0.25]])  # fmt: skip


def test_percentiles_come_from_the_requests_of_the_bucket_and_gaps_are_none():
    state, clocks = cluster()
    for i, ttft in enumerate((0.1, 0.2, 0.3, 0.4)):
        state.apply(RequestAdmitted(f"r{i}", "m"))
        clocks.mono += ttft
        state.apply(RequestStarted(f"r{i}", "a", "m"))
        state.apply(TokensDelivered(f"r{i}", 1))
        clocks.mono -= ttft  # every request's own clock: each waited ttft
    clocks.tick(state)
    clocks.tick(state)
    points = [v for _, v in state.timeseries("ttft_p50", "15m")[1]]
    assert points == [200.0, None]
    assert state.timeseries("ttft_p95", "15m")[1][0][1] == 400.0
    assert state.timeseries("latency_p50", "15m")[1][0][1] is None  # none ended


def test_gauges_are_read_at_each_tick_memory_per_node():
    state, clocks = cluster()
    state.apply(ActorStarting("n.memory", "memory", "n"))
    state.apply(ActorHeartbeat("n.memory", Vitals(mem_total=16 * GB, mem_used=4 * GB)))
    state.apply(RequestAdmitted("w", "m"))
    state.apply(RequestStarted("r", "a", "m"))
    clocks.tick(state)
    assert state.timeseries("queue_depth", "15m")[1][0][1] == 1.0
    assert state.timeseries("in_flight", "15m")[1][0][1] == 1.0
    assert state.timeseries("memory_used:n", "15m") == ("bytes", [[1_700_000_002.0, 4 * GB]])
    state.apply(NodeRemoved("n"))
    with pytest.raises(KeyError, match="no node 'n'"):
        state.timeseries("memory_used:n", "15m")


def test_coarser_windows_close_every_few_ticks_and_average_their_gauges():
    state, clocks = cluster()
    state.apply(RequestStarted("r", "a", "m"))
    for i in range(30):
        state.apply(TokensDelivered("r", 20))  # 10 tok/s
        if i == 15:
            state.apply(RequestAdmitted("w", "m"))  # waits through 15 ticks of 30
        clocks.tick(state)
    fine, hour, day = (state.timeseries("throughput", w)[1] for w in ("15m", "1h", "24h"))
    assert (len(fine), len(hour), len(day)) == (30, 6, 1)
    assert {v for _, v in fine} == {v for _, v in hour} == {v for _, v in day} == {10.0}
    assert hour[1][0] - hour[0][0] == 10.0 and day[0][0] == 1_700_000_060.0
    assert state.timeseries("queue_depth", "24h")[1][0][1] == 0.5


def test_rings_hold_exactly_their_window():
    state, clocks = cluster()
    for _ in range(500):
        clocks.tick(state)
    fine = state.timeseries("in_flight", "15m")[1]
    assert len(fine) == WINDOWS["15m"][1] == 450
    assert fine[-1][0] - fine[0][0] == 449 * STEP  # 15 minutes at 2 s


def test_unknown_metric_or_window_is_refused_in_one_line():
    state, _ = cluster()
    with pytest.raises(KeyError, match="unknown metric 'nope'; one of throughput"):
        state.timeseries("nope", "15m")
    with pytest.raises(ValueError, match="unknown window '2h'; one of 15m, 1h, 24h"):
        state.timeseries("throughput", "2h")
    assert state.timeseries("throughput", "24h") == ("tok/s", [])


def test_average_and_peak_tokens_per_second_over_60_s_in_the_snapshot():
    state, clocks = cluster()
    state.apply(RequestStarted("r", "a", "m"))
    for tokens in [0] * 10 + [20, 40, 60] + [0] * 17:  # 30 ticks = 60 s
        state.apply(TokensDelivered("r", tokens))
        clocks.tick(state)
    snap = state.snapshot()
    assert snap["tokens_per_second_peak_60s"] == 30.0
    assert snap["tokens_per_second_avg_60s"] == 2.0  # 120 tokens over 60 s


async def test_the_sampler_ticks_until_stopped():
    state = ClusterState()
    sampler = Sampler(state, interval=0.02)
    sampler.start()
    task = sampler._task
    ticked = await state.wait_for(lambda: len(state.timeseries("in_flight", "15m")[1]) >= 3, 5)
    await sampler.stop()
    assert ticked and task is not None and task.cancelled()
    await sampler.stop()  # twice is harmless
