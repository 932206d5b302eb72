"""What the cluster's state is made of: frozen views with the allowed states as Literals.

``ClusterState.apply`` replaces a view (``msgspec.structs.replace``), never edits one, so
a view handed to a reader stays true to the moment it was read.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from actors.protocol.messages import Vitals

NodeStateName = Literal["connecting", "up", "down", "unreachable"]
ActorStateName = Literal[
    "starting", "loading", "running", "exited", "killed", "failed", "stopped", "waiting"
]
GroupStateName = Literal["starting", "ready", "restarting", "waiting", "failed", "stopped"]
NodeHealthName = Literal["ok", "warning", "critical"]
RequestStatus = Literal["ok", "error", "cancelled"]
LinkStatus = Literal["active", "degraded", "down"]
ModelAction = Literal["download", "delete", "swap"]
ModelPhase = Literal[
    "queued",
    "download",
    "hash",
    "verify",
    "transfer",
    "commit",
    "delete",
    "drain",
    "load",
    "done",
    "failed",
]


class NodeView(msgspec.Struct, frozen=True):
    name: str
    ssh: str
    local: bool
    state: NodeStateName = "connecting"
    reason: str = ""
    health: NodeHealthName | None = None  # None until its memory reporter's first beat


class LoadView(msgspec.Struct, frozen=True):
    stage: str = ""
    fraction: float = 0.0


class ActorView(msgspec.Struct, frozen=True):
    actor_id: str = msgspec.field(name="id")
    kind: str = ""
    node: str = ""
    group: str | None = None
    rank: int = 0
    pid: int | None = None
    state: ActorStateName = "starting"
    restarts: int = 0
    last_heartbeat: float | None = None  # monotonic; shown as its age
    reason: str = ""
    load: LoadView = LoadView()
    vitals: Vitals = Vitals()
    info: dict[str, str] = {}


class GroupView(msgspec.Struct, frozen=True):
    name: str
    model: str
    nodes: list[str]
    parallel: str
    backend: str
    state: GroupStateName = "starting"
    reason: str = ""
    restarts: int = 0
    in_flight: int = 0
    served: int = 0
    errors: int = 0
    tokens: int = 0
    context_length: int = 0
    peak_batch_size: int = 0
    leader: str | None = None  # the rank-0 actor id while ready
    leaving: bool = False  # drained away: takes no new work
    queued_tokens: int = 0  # promised to its requests in flight, not yet delivered


class LinkView(msgspec.Struct, frozen=True):
    """A link of a group as its live probe last measured it (``supervisor.state.folds.links``).

    Figures in µs and GB/s (1e9 bytes); ``last_probe`` in unix seconds; the baselines are
    the first figures after the group was declared (kept across its restarts).
    """

    id: str  # "a↔b": the node names, in rank order
    group: str
    nodes: list[str]
    interface: str  # the ring ips or the RDMA devices the two ends use ("ip↔ip", "dev↔dev")
    status: LinkStatus = "active"
    latency_us: float | None = None
    bandwidth_gbps: float | None = None
    last_probe: float | None = None
    baseline_latency_us: float | None = None
    baseline_bandwidth_gbps: float | None = None
    probes: int = 0  # measurements so far, failed ones included
    reason: str = ""  # why it is degraded or down


class SupervisorView(msgspec.Struct, frozen=True):
    """One restart set: its flags and its recent restarts (monotonic, oldest first)."""

    name: str
    group: str | None
    intensity: int
    period: float
    restarts: int = 0
    restart_times: tuple[float, ...] = ()

    def restarts_within_period(self, now: float) -> int:
        return sum(1 for t in self.restart_times if now - t <= self.period)

    def budget_left(self, now: float) -> int:
        """Restarts the set may still make before it gives up (OTP intensity)."""
        return max(0, self.intensity - self.restarts_within_period(now))


class Admission(msgspec.Struct, frozen=True):
    """How and when a request came: stamped by the fold (``created`` wall clock, the rest
    monotonic), kept from admission to the request's history record."""

    model: str
    dialect: str = ""
    endpoint: str = ""
    created: float = 0.0
    admitted_at: float = 0.0
    prompt: str | None = None  # only with the hostfile's history.keep_prompts


class RequestView(msgspec.Struct, frozen=True):
    """A request in flight: where it runs, what it is owed and was given, and when."""

    request_id: str
    model: str
    group: str
    groups: tuple[str, ...]  # every group that served it, in order (failover)
    owed: int = 0  # tokens its current group still owes (the router's queued tokens)
    sent: int = 0  # completion tokens its client got
    credited: int = 0  # of those, tokens credited to groups it left
    admission: Admission | None = None
    placed_at: float = 0.0  # monotonic, as the times below
    first_token_at: float | None = None
    last_token_at: float | None = None


def actor_json(actor: ActorView, now: float) -> dict:
    """/api/cluster/status's actor: the view with its heartbeat's age, every vital shown."""
    out = msgspec.to_builtins(actor)
    seen = out.pop("last_heartbeat")
    out["last_heartbeat_age"] = None if seen is None else round(now - seen, 3)
    out["vitals"] = msgspec.structs.asdict(actor.vitals)  # Vitals omits zeros on the wire
    return out


def group_json(group: GroupView, supervisor: SupervisorView | None, now: float) -> dict:
    """/api/cluster/status's group: the view, and how much restart budget it has left."""
    out = msgspec.to_builtins(group)
    if supervisor is not None:
        out["restart_budget"] = restart_budget(supervisor, now)
    return out


def supervisor_json(supervisor: SupervisorView, now: float) -> dict:
    """A supervisor's flags and restarts; its restart times as the budget they leave."""
    out = msgspec.to_builtins(supervisor)
    del out["restart_times"]  # monotonic seconds mean nothing to a client
    out["restart_budget"] = restart_budget(supervisor, now)
    return out


def restart_budget(supervisor: SupervisorView, now: float) -> dict:
    return {
        "intensity": supervisor.intensity,
        "period": supervisor.period,
        "used": supervisor.restarts_within_period(now),
        "left": supervisor.budget_left(now),
    }
