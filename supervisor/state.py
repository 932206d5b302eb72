"""ClusterState: the one truth every view reads, changed only by ``apply(event)``."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from actors.protocol import Vitals
from supervisor.events import (
    ActorHeartbeat,
    ActorLoading,
    ActorReady,
    ActorRestarted,
    ActorSpawned,
    ActorStarting,
    ActorStopped,
    Event,
    GroupDeclared,
    GroupRemoved,
    GroupState,
    NodeDeclared,
    NodeRemoved,
    NodeStatus,
    RequestEnded,
    RequestMoved,
    RequestStarted,
    RouteDecided,
    RouterDeclared,
)
from supervisor.router import RouterStats

# --------------------------------------------------------------------------- #
# Views
# --------------------------------------------------------------------------- #


@dataclass
class NodeView:
    name: str
    ssh: str
    local: bool
    state: str = "connecting"
    reason: str = ""


@dataclass
class ActorView:
    actor_id: str
    kind: str
    node: str
    group: str | None
    rank: int
    pid: int | None = None
    state: str = "starting"
    restarts: int = 0
    last_heartbeat: float | None = None
    vitals: Vitals = field(default_factory=Vitals)
    load_stage: str = ""
    load_fraction: float = 0.0
    reason: str = ""
    info: dict[str, str] = field(default_factory=dict)


@dataclass
class GroupView:
    name: str
    model: str
    nodes: list[str]
    parallel: str
    backend: str
    state: str = "starting"
    reason: str = ""
    restarts: int = 0
    in_flight: int = 0
    served: int = 0
    errors: int = 0
    tokens: int = 0
    context_length: int = 0
    peak_batch_size: int = 0


class ClusterState:
    def __init__(self, clock=time.monotonic, wall=time.time):
        self._clock = clock
        self._wall = wall
        self.started_at = wall()
        self.nodes: dict[str, NodeView] = {}
        self.actors: dict[str, ActorView] = {}
        self.groups: dict[str, GroupView] = {}
        self.recent_requests: deque[dict] = deque(maxlen=100)
        self.recent_errors: deque[dict] = deque(maxlen=100)
        self.requests_total = 0
        self.tokens_total = 0
        self.draining = False
        self.router = RouterStats()

    def apply(self, event: Event) -> None:
        handler = getattr(self, "_on_" + type(event).__name__)
        handler(event)

    # --- nodes and groups ---------------------------------------------------

    def _on_NodeDeclared(self, e: NodeDeclared) -> None:
        self.nodes.setdefault(e.node, NodeView(e.node, e.ssh, e.local))

    def _on_NodeStatus(self, e: NodeStatus) -> None:
        node = self.nodes[e.node]
        node.state, node.reason = e.state, e.reason

    def _on_NodeRemoved(self, e: NodeRemoved) -> None:
        self.nodes.pop(e.node, None)
        for actor_id in [a.actor_id for a in self.actors.values() if a.node == e.node]:
            del self.actors[actor_id]

    def _on_GroupRemoved(self, e: GroupRemoved) -> None:
        self.groups.pop(e.group, None)
        for actor_id in [a.actor_id for a in self.actors.values() if a.group == e.group]:
            del self.actors[actor_id]

    def _on_GroupDeclared(self, e: GroupDeclared) -> None:
        self.groups[e.group] = GroupView(e.group, e.model, list(e.nodes), e.parallel, e.backend)

    def _on_GroupState(self, e: GroupState) -> None:
        group = self.groups[e.group]
        group.state, group.reason = e.state, e.reason
        if e.restarted:
            group.restarts += 1
        if e.context_length:
            group.context_length = e.context_length
        if e.state == "failed":
            self._error("group_failed", group=e.group, message=e.reason)

    # --- actors --------------------------------------------------------------

    def _on_ActorStarting(self, e: ActorStarting) -> None:
        view = self.actors.get(e.actor_id)
        if view is None:
            self.actors[e.actor_id] = ActorView(e.actor_id, e.kind, e.node, e.group, e.rank)
        else:
            view.state, view.pid, view.last_heartbeat, view.reason = "starting", None, None, ""
            view.vitals = Vitals()

    def _on_ActorSpawned(self, e: ActorSpawned) -> None:
        self.actors[e.actor_id].pid = e.pid

    def _on_ActorHeartbeat(self, e: ActorHeartbeat) -> None:
        view = self.actors.get(e.actor_id)
        if view is None:
            return
        view.last_heartbeat = self._clock()
        view.vitals = e.vitals
        if view.group in self.groups and view.rank == 0 and view.kind == "generation":
            group = self.groups[view.group]
            group.peak_batch_size = max(group.peak_batch_size, e.vitals.peak_batch_size)

    def _on_ActorLoading(self, e: ActorLoading) -> None:
        view = self.actors[e.actor_id]
        view.state, view.load_stage, view.load_fraction = "loading", e.stage, e.fraction

    def _on_ActorReady(self, e: ActorReady) -> None:
        view = self.actors[e.actor_id]
        view.state, view.load_fraction, view.info = "running", 1.0, dict(e.info)

    def _on_ActorStopped(self, e: ActorStopped) -> None:
        view = self.actors[e.actor_id]
        view.state, view.reason = e.state, e.reason
        if e.state in ("exited", "killed", "failed") and e.reason:
            self._error("actor_" + e.state, actor_id=e.actor_id, message=e.reason)

    def _on_ActorRestarted(self, e: ActorRestarted) -> None:
        self.actors[e.actor_id].restarts += 1

    # --- requests ------------------------------------------------------------

    def _on_RequestStarted(self, e: RequestStarted) -> None:
        self.requests_total += 1
        if e.group in self.groups:
            self.groups[e.group].in_flight += 1

    def _on_RequestEnded(self, e: RequestEnded) -> None:
        group = self.groups.get(e.group)
        if group is not None:
            group.in_flight -= 1
            group.served += 1
            group.tokens += e.completion_tokens - e.resumed_tokens
            if e.outcome == "error":
                group.errors += 1
        self.tokens_total += e.completion_tokens
        self.recent_requests.append(
            {
                "request_id": e.request_id,
                "group": e.group,
                "groups": list(e.groups or (e.group,)),
                "outcome": e.outcome,
                "prompt_tokens": e.prompt_tokens,
                "completion_tokens": e.completion_tokens,
                "at": self._wall(),
            }
        )
        if e.outcome == "error":
            self._error("request_failed", request_id=e.request_id, group=e.group, message=e.error)

    def _on_RequestMoved(self, e: RequestMoved) -> None:
        self.router.failovers += 1
        if e.from_group in self.groups:
            self.groups[e.from_group].in_flight -= 1
            self.groups[e.from_group].tokens += e.tokens_sent
        if e.to_group in self.groups:
            self.groups[e.to_group].in_flight += 1

    def _on_RouterDeclared(self, e: RouterDeclared) -> None:
        self.router = RouterStats(e.policy, e.session_ttl, e.cooldown)

    def _on_RouteDecided(self, e: RouteDecided) -> None:
        self.router.record(e.reason, e.seconds, e.sessions)

    def _error(self, kind: str, **fields) -> None:
        self.recent_errors.append({"kind": kind, "at": self._wall(), **fields})

    # --- reads ---------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return sum(g.in_flight for g in self.groups.values())

    def health(self) -> tuple[int, dict]:
        """200 while at least one group serves; 503 with the reasons otherwise."""
        states = {name: g.state for name, g in self.groups.items()}
        ready = [n for n, s in states.items() if s == "ready"]
        if self.draining:
            status = "draining"
        elif states and len(ready) == len(states):
            status = "ok"
        elif ready:
            status = "degraded"
        elif any(s == "failed" for s in states.values()) and all(
            s in ("failed", "stopped") for s in states.values()
        ):
            status = "failed"
        else:
            status = "starting"
        body = {
            "status": status,
            "groups": {
                name: {"state": g.state, "reason": g.reason} for name, g in self.groups.items()
            },
        }
        return (200 if ready and not self.draining else 503), body

    def snapshot(self) -> dict:
        now = self._clock()
        return {
            "uptime_seconds": round(self._wall() - self.started_at, 3),
            "draining": self.draining,
            "queue_depth": self.in_flight,
            "requests_total": self.requests_total,
            "tokens_total": self.tokens_total,
            "nodes": [
                {
                    "name": n.name,
                    "ssh": n.ssh,
                    "local": n.local,
                    "state": n.state,
                    "reason": n.reason,
                }
                for n in self.nodes.values()
            ],
            "actors": [_actor_json(a, now) for a in self.actors.values()],
            "groups": [_group_json(g) for g in self.groups.values()],
            "router": self.router.json(),
        }


def _actor_json(a: ActorView, now: float) -> dict:
    age = None if a.last_heartbeat is None else round(now - a.last_heartbeat, 3)
    v = a.vitals
    return {
        "id": a.actor_id,
        "kind": a.kind,
        "node": a.node,
        "group": a.group,
        "rank": a.rank,
        "pid": a.pid,
        "state": a.state,
        "restarts": a.restarts,
        "last_heartbeat_age": age,
        "reason": a.reason,
        "load": {"stage": a.load_stage, "fraction": a.load_fraction},
        "vitals": {
            "rss_bytes": v.rss_bytes,
            "cpu_percent": v.cpu_percent,
            "active_requests": v.active_requests,
            "queued_requests": v.queued_requests,
            "batch_size": v.batch_size,
            "peak_batch_size": v.peak_batch_size,
            "tokens_generated": v.tokens_generated,
            "requests_done": v.requests_done,
            "cache_hits": v.cache_hits,
            "mem_total": v.mem_total,
            "mem_available": v.mem_available,
        },
        "info": a.info,
    }


def _group_json(g: GroupView) -> dict:
    return {
        "name": g.name,
        "model": g.model,
        "nodes": g.nodes,
        "parallel": g.parallel,
        "backend": g.backend,
        "state": g.state,
        "reason": g.reason,
        "restarts": g.restarts,
        "in_flight": g.in_flight,
        "served": g.served,
        "errors": g.errors,
        "tokens": g.tokens,
        "context_length": g.context_length,
        "peak_batch_size": g.peak_batch_size,
    }
