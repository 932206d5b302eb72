"""The state as readers see it whole: ``snapshot`` (/api/cluster/status, the feed's first
event) and ``live_figures`` (the feed's coalesced ``Live`` items). Pure reads of a
``ClusterState`` (passed in: this module may not import the store, which imports it).

Stable names (the roadmap's v2 fields): ``uptime_seconds``, ``requests_total``,
``tokens_total``, ``tokens_per_second_avg_60s``, ``tokens_per_second_peak_60s``,
``latency_avg_ms``, ``queue_size``, ``queue_max``, ``history`` (the last
``HISTORY_TAIL`` requests, newest first), ``memory`` (per node and per rank), ``links``,
``nodes``, ``groups``, ``actors``.
"""

from __future__ import annotations

from msgspec import to_builtins

from supervisor.state.folds.nodes import mem_used, memory_reporter, node_json, rank_memory
from supervisor.state.folds.series import MEMORY, unit_of
from supervisor.state.views import actor_json, group_json, supervisor_json

HISTORY_TAIL = 20  # requests the snapshot carries


def snapshot(state, now: float) -> dict:
    """Everything ``state`` (a ClusterState) knows, as JSON-ready builtins."""
    avg, peak = state.series.tokens_per_second()
    nodes, actors = _nodes_and_actors(state, now)
    return {
        "seq": state.seq,
        "uptime_seconds": state.uptime(),
        "draining": state.draining,
        "queue_depth": state.in_flight,  # kept for older readers: requests in flight
        "waiting": state.waiting,
        "queue_size": state.in_flight + state.waiting,  # what counts against queue_max
        "queue_max": state.queue_limit,
        "requests_total": state.requests_total,
        "tokens_total": state.tokens_total,
        "tokens_per_second_avg_60s": avg,
        "tokens_per_second_peak_60s": peak,
        "latency_avg_ms": state.metrics.latency_avg_ms(),
        "history": [to_builtins(r) for r in state.requests(HISTORY_TAIL)],
        "memory": _memory(nodes, actors),
        "links": state.links.json(),  # the live link probe's figures (state.links)
        "model_jobs": state.models.jobs_json(),  # newest first (state.models)
        "nodes": nodes,
        "actors": actors,
        "groups": [
            group_json(g, state.supervisors.get(g.name), now) for g in state.groups.values()
        ],
        "router": state.router.json(),
        "supervisors": [supervisor_json(s, now) for s in state.supervisors.values()],
    }


def live_figures(state, now: float) -> dict:
    """What heartbeats, delivered tokens and ticks change, in a few hundred bytes."""
    avg, peak = state.series.tokens_per_second()
    nodes, actors = _nodes_and_actors(state, now)
    return {
        "seq": state.seq,
        "uptime_seconds": state.uptime(),
        "in_flight": state.in_flight,
        "waiting": state.waiting,
        "tokens_total": state.tokens_total,
        "tokens_generated": state.metrics.tokens_generated,
        "tokens_per_second_avg_60s": avg,
        "tokens_per_second_peak_60s": peak,
        "requests_total": state.requests_total,
        "latency_avg_ms": state.metrics.latency_avg_ms(),
        "groups": {
            g.name: {"in_flight": g.in_flight, "queued_tokens": g.queued_tokens, "tokens": g.tokens}
            for g in state.groups.values()
        },
        # Heartbeats are coalesced away: a live reader (the dashboard) sees their age here.
        "actors": {
            a["id"]: {
                "last_heartbeat_age": a["last_heartbeat_age"],
                "batch_size": a["vitals"]["batch_size"],
            }
            for a in actors
        },
        "memory": _memory(nodes, actors),
        "links": state.links.json(),  # few, and changed by their own events: sent whole
    }


def series_points(state, metric: str, window: str) -> tuple[str, list[list]]:
    """``(unit, [[unix_seconds, value], ...])`` oldest first (state.series).

    KeyError for an unknown metric, ValueError for an unknown window (one line each).
    """
    unit = unit_of(metric)
    if metric.startswith(MEMORY) and metric[len(MEMORY) :] not in state.nodes:
        known = ", ".join(MEMORY + n for n in state.nodes) or "none yet"
        raise KeyError(f"metric: no node {metric[len(MEMORY) :]!r}; known: {known}")
    return unit, state.series.points(metric, window)


def _nodes_and_actors(state, now: float) -> tuple[list[dict], list[dict]]:
    """The nodes (with their reporter's figures) and actors as JSON: both reads show them."""
    nodes = [node_json(n, memory_reporter(state.actors, n.name)) for n in state.nodes.values()]
    return nodes, [_actor(a, now) for a in state.actors.values()]


def _actor(actor, now: float) -> dict:
    out = actor_json(actor, now)
    if actor.group is not None:  # a group's rank: what MLX holds, the weights, the cache
        out.update(rank_memory(actor))
    return out


_NODE_MEMORY = ("mem_total", "mem_used", "mem_available", "swap_used", "pressure", "health")
_RANK_MEMORY = ("mlx_active_bytes", "mlx_cache_bytes", "mlx_peak_bytes", "model_bytes",
                "prompt_cache_bytes")  # fmt: skip


def _memory(nodes: list[dict], actors: list[dict]) -> dict:
    return {
        "nodes": {n["name"]: {k: n[k] for k in _NODE_MEMORY} for n in nodes},
        "ranks": {
            a["id"]: {"node": a["node"], "group": a["group"], "rank": a["rank"]}
            | {k: a[k] for k in _RANK_MEMORY}
            for a in actors
            if a["group"] is not None  # a node's own actors (memory, sync) are no rank
        },
    }


def gauges(state) -> dict[str, float]:
    """What a tick reads now: the queue, the requests in flight, each node's memory."""
    out = {"queue_depth": float(state.waiting), "in_flight": float(len(state.running))}
    for actor in state.actors.values():
        if actor.kind == "memory" and actor.vitals.mem_total:
            out[MEMORY + actor.node] = float(mem_used(actor.vitals))
    return out
