"""Node health (ok / warning / critical), its change events, and the status's memory figures."""

from __future__ import annotations

import pytest

from actors.protocol.messages import Vitals
from supervisor.state import ClusterState
from supervisor.state.events import (
    ActorHeartbeat,
    ActorReady,
    ActorStarting,
    GroupDeclared,
    NodeDeclared,
    NodeHealth,
)
from supervisor.state.folds.nodes import node_health

GB = 1 << 30


@pytest.mark.parametrize(
    ("used", "pressure", "health"),
    [
        (0, "", "ok"),
        (69, "normal", "ok"),
        (70, "", "warning"),
        (84, "normal", "warning"),
        (10, "warn", "warning"),
        (85, "", "critical"),
        (100, "warn", "critical"),
        (10, "critical", "critical"),
    ],
)
def test_health_table(used, pressure, health):
    assert node_health(100, used, pressure)[0] == health


def test_health_says_why_and_a_node_with_no_figures_is_ok():
    assert node_health(100, 90, "") == ("critical", "90% of memory used")
    assert node_health(100, 10, "warn") == ("warning", "memory pressure warn; 10% of memory used")
    assert node_health(0, 0, "") == ("ok", "")


def cluster() -> ClusterState:
    state = ClusterState()
    state.apply(NodeDeclared("n", "localhost", True))
    state.apply(ActorStarting("n.memory", "memory", "n"))
    return state


def beat(state: ClusterState, used_gb: int, pressure: str = "") -> None:
    vitals = Vitals(mem_total=100 * GB, mem_used=used_gb * GB, pressure=pressure)
    state.apply(ActorHeartbeat("n.memory", vitals))


def test_a_health_event_follows_a_beat_that_changes_it_and_only_then():
    state = cluster()
    assert state.nodes["n"].health is None
    events = []
    for used, pressure in [
        (10, ""),
        (20, ""),
        (75, ""),
        (76, ""),
        (90, ""),
        (10, "warn"),
        (10, ""),
    ]:
        before = state.seq
        beat(state, used, pressure)
        events += [e for _, e in state._log.since(before) if isinstance(e, NodeHealth)]
    assert [e.health for e in events] == ["ok", "warning", "critical", "warning", "ok"]
    assert state.nodes["n"].health == "ok"
    assert events[2].reason == "90% of memory used"


def test_a_generation_ranks_beat_changes_no_node_health():
    state = cluster()
    state.apply(GroupDeclared("g", "m", ["n"], "tensor", "ring"))
    state.apply(ActorStarting("g.rank0", "generation", "n", "g", 0))
    state.apply(ActorHeartbeat("g.rank0", Vitals(mem_total=100, mem_available=1)))
    assert state.nodes["n"].health is None


def test_status_carries_node_memory_hardware_and_rank_memory_under_stable_names():
    state = cluster()
    state.apply(ActorReady("n.memory", {"chip": "Apple M2 Ultra", "os": "macOS 15", "x": "y"}))
    state.apply(
        ActorHeartbeat(
            "n.memory",
            Vitals(mem_total=64 * GB, mem_used=50 * GB, mem_available=14 * GB, swap_used=GB,
                   pressure="warn"),
        )
    )  # fmt: skip
    state.apply(GroupDeclared("g", "m", ["n"], "tensor", "ring"))
    state.apply(ActorStarting("g.rank0", "generation", "n", "g", 0))
    rank = Vitals(mlx_active_bytes=5, mlx_cache_bytes=6, mlx_peak_bytes=7, model_bytes=8,
                  prompt_cache_bytes=9)  # fmt: skip
    state.apply(ActorHeartbeat("g.rank0", rank))
    state.apply(ActorStarting("n.sync", "sync", "n", None, 0))  # a node's actor, not a rank
    snap = state.snapshot()
    (node,) = snap["nodes"]
    assert {k: node[k] for k in ("mem_total", "mem_used", "mem_available", "swap_used")} == {
        "mem_total": 64 * GB, "mem_used": 50 * GB, "mem_available": 14 * GB, "swap_used": GB,
    }  # fmt: skip
    assert (node["pressure"], node["health"]) == ("warn", "warning")
    assert node["hardware"] == {"chip": "Apple M2 Ultra", "os": "macOS 15"}
    actor = next(a for a in snap["actors"] if a["id"] == "g.rank0")
    figures = {"mlx_active_bytes": 5, "mlx_cache_bytes": 6, "mlx_peak_bytes": 7,
               "model_bytes": 8, "prompt_cache_bytes": 9}  # fmt: skip
    assert actor.items() >= figures.items()
    assert snap["memory"]["ranks"] == {"g.rank0": {"node": "n", "group": "g", "rank": 0, **figures}}
    assert snap["memory"]["nodes"]["n"]["health"] == "warning"
    assert snap["links"] == [] and snap["queue_max"] == 0


def test_used_memory_is_total_less_available_from_a_reporter_that_gives_no_used():
    state = cluster()
    state.apply(ActorHeartbeat("n.memory", Vitals(mem_total=100 * GB, mem_available=10 * GB)))
    assert state.snapshot()["nodes"][0]["mem_used"] == 90 * GB
    assert state.nodes["n"].health == "critical"
