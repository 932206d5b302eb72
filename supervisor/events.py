"""What changes the cluster's state: every ``ClusterState.apply`` takes one of these."""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.protocol import Vitals


@dataclass(frozen=True)
class NodeDeclared:
    node: str
    ssh: str
    local: bool


@dataclass(frozen=True)
class NodeStatus:
    node: str
    state: str  # "up" | "down" | "connecting" | "unreachable"
    reason: str = ""


@dataclass(frozen=True)
class NodeRemoved:
    node: str


@dataclass(frozen=True)
class GroupRemoved:
    group: str


@dataclass(frozen=True)
class GroupDeclared:
    group: str
    model: str
    nodes: list[str]
    parallel: str
    backend: str


@dataclass(frozen=True)
class GroupState:
    group: str
    state: str  # "starting" | "ready" | "restarting" | "waiting" | "failed" | "stopped"
    reason: str = ""
    restarted: bool = False
    context_length: int = 0


@dataclass(frozen=True)
class ActorStarting:
    actor_id: str
    kind: str
    node: str
    group: str | None = None
    rank: int = 0


@dataclass(frozen=True)
class ActorSpawned:
    actor_id: str
    pid: int


@dataclass(frozen=True)
class ActorHeartbeat:
    actor_id: str
    vitals: Vitals


@dataclass(frozen=True)
class ActorLoading:
    actor_id: str
    stage: str
    fraction: float


@dataclass(frozen=True)
class ActorReady:
    actor_id: str
    info: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ActorStopped:
    actor_id: str
    state: str  # "exited" | "killed" | "failed" | "stopped" | "waiting"
    reason: str = ""


@dataclass(frozen=True)
class ActorRestarted:
    actor_id: str


@dataclass(frozen=True)
class RequestStarted:
    request_id: str
    group: str
    model: str


@dataclass(frozen=True)
class RequestEnded:
    request_id: str
    group: str
    outcome: str  # finish reason, or "error"
    completion_tokens: int = 0
    prompt_tokens: int = 0
    error: str = ""
    groups: tuple[str, ...] = ()  # every group that served it, in order (failover)
    resumed_tokens: int = 0  # of completion_tokens, those earlier groups produced


@dataclass(frozen=True)
class RequestMoved:
    """A request's group was lost; it goes on on another group from the tokens already sent."""

    request_id: str
    from_group: str
    to_group: str
    tokens_sent: int  # completion tokens the lost group delivered


@dataclass(frozen=True)
class RouterDeclared:
    policy: str
    session_ttl: float
    cooldown: float


@dataclass(frozen=True)
class RouteDecided:
    group: str | None
    reason: str
    seconds: float  # CPU time the decision took
    sessions: int = 0


Event = (
    NodeRemoved
    | GroupRemoved
    | NodeDeclared
    | NodeStatus
    | GroupDeclared
    | GroupState
    | ActorStarting
    | ActorSpawned
    | ActorHeartbeat
    | ActorLoading
    | ActorReady
    | ActorStopped
    | ActorRestarted
    | RequestStarted
    | RequestEnded
    | RequestMoved
    | RouterDeclared
    | RouteDecided
)
