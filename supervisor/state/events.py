"""What changes the cluster's state: every ``ClusterState.apply`` takes one of these.

Events are frozen, tagged msgspec Structs: the tag is the class name, so a feed of them
(``ClusterState.subscribe``) encodes to JSON as is. Whoever emits an event states a fact;
the fold (``supervisor.state.store``) derives every count from the facts.
"""

from __future__ import annotations

import msgspec

from actors.protocol.messages import Vitals
from actors.protocol.model_messages import LocalModel
from supervisor.state.views import (
    ActorStateName,
    GroupStateName,
    ModelAction,
    ModelPhase,
    NodeHealthName,
    NodeStateName,
    RequestStatus,
)


class _Event(msgspec.Struct, frozen=True, tag=True):
    pass


# --------------------------------------------------------------------------- nodes


class NodeDeclared(_Event, frozen=True):
    node: str
    ssh: str
    local: bool


class NodeStatus(_Event, frozen=True):
    node: str
    state: NodeStateName
    reason: str = ""


class NodeRemoved(_Event, frozen=True):
    node: str


class NodeHealth(_Event, frozen=True):
    """The node's memory health changed (``supervisor.state.folds.nodes.node_health``)."""

    node: str
    health: NodeHealthName
    reason: str = ""


# -------------------------------------------------------------------------- groups


class GroupDeclared(_Event, frozen=True):
    group: str
    model: str
    nodes: list[str]
    parallel: str
    backend: str


class GroupState(_Event, frozen=True):
    """The group's supervisor moved it to ``state``.

    ``leader`` (the rank-0 actor id) and ``context_length`` come with "ready"; any other
    state leaves the group without a leader. ``restarted``: a start that is a restart.
    """

    group: str
    state: GroupStateName
    reason: str = ""
    restarted: bool = False
    context_length: int = 0
    leader: str | None = None


class GroupLeaving(_Event, frozen=True):
    """The group is drained away: it finishes its work and the router gives it none."""

    group: str


class GroupRemoved(_Event, frozen=True):
    group: str


class LinkMeasured(_Event, frozen=True):
    """A live probe of ``group`` measured its link ``link`` (``nodes``, over ``interface``):
    the latency or the bandwidth (the other is None). ``at``: unix s the probe started;
    ``seconds``: how long it ran (the group served nothing meanwhile)."""

    link: str
    group: str
    nodes: list[str]
    interface: str
    at: float
    seconds: float
    latency_us: float | None = None
    bandwidth_gbps: float | None = None


class LinkDown(_Event, frozen=True):
    """A live probe of ``group``'s link failed or timed out (``reason`` says which)."""

    link: str
    group: str
    nodes: list[str]
    interface: str
    at: float
    reason: str


# --------------------------------------------------------------------- supervisors


class SupervisorStarted(_Event, frozen=True):
    """A supervisor's flags: at most ``intensity`` restarts within ``period`` seconds."""

    supervisor: str
    group: str | None
    intensity: int
    period: float


class SupervisorRestarted(_Event, frozen=True):
    """The supervisor restarts its set; ``at`` is its monotonic clock; ``reason``: why."""

    supervisor: str
    at: float
    reason: str = ""


class SupervisorRemoved(_Event, frozen=True):
    supervisor: str


# -------------------------------------------------------------------------- actors


class ActorStarting(_Event, frozen=True):
    actor_id: str
    kind: str
    node: str
    group: str | None = None
    rank: int = 0


class ActorSpawned(_Event, frozen=True):
    actor_id: str
    pid: int


class ActorHeartbeat(_Event, frozen=True):
    actor_id: str
    vitals: Vitals


class ActorLoading(_Event, frozen=True):
    actor_id: str
    stage: str
    fraction: float


class ActorReady(_Event, frozen=True):
    actor_id: str
    info: dict[str, str] = {}


class ActorStopped(_Event, frozen=True):
    """``cause`` (the supervisor's, for the errors log): what failed the set, given on the
    actor at fault: "exit", "heartbeat", "watchdog", "connection", "spawn", "error",
    "timeout" (load or connect took too long); "" for the rest of the set."""

    actor_id: str
    state: ActorStateName
    reason: str = ""
    cause: str = ""


class ActorRestarted(_Event, frozen=True):
    actor_id: str


# ------------------------------------------------------------------------ requests


class RequestAdmitted(_Event, frozen=True):
    """Admitted (not draining, a known model, room in the queue); waiting for a group.

    ``dialect`` ("openai", "ollama") and ``endpoint`` ("/v1/chat/completions"...) are the
    API's; ``prompt`` is given only when the hostfile's ``history.keep_prompts`` is true.
    The fold stamps the times (created, admitted) with the state's clocks.
    """

    request_id: str
    model: str
    dialect: str = ""
    endpoint: str = ""
    prompt: str | None = None


class RequestRefused(_Event, frozen=True):
    """An admitted request no group could take (503), or whose client left ("cancelled")."""

    request_id: str
    reason: str
    status: RequestStatus = "error"


class RequestStarted(_Event, frozen=True):
    """Placed on ``group``, which owes it ``owed`` tokens (the router's queued tokens)."""

    request_id: str
    group: str
    model: str
    owed: int = 0


class TokensDelivered(_Event, frozen=True):
    """``tokens`` more completion tokens went to the request's client."""

    request_id: str
    tokens: int


class RequestMoved(_Event, frozen=True):
    """The request's group was lost; it goes on on ``to_group`` from the tokens already
    sent, which owes it ``owed`` more. The tokens ``from_group`` delivered are its own."""

    request_id: str
    from_group: str
    to_group: str
    owed: int = 0


class RequestEnded(_Event, frozen=True):
    """The request's stream ended: ``status`` ok (``finish_reason`` the model's: stop,
    length, tool_calls), error (``error`` says why) or cancelled (its client left)."""

    request_id: str
    status: RequestStatus
    finish_reason: str = ""
    completion_tokens: int = 0  # every group's, failovers included
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens the prefix cache had (the last group's)
    error: str = ""


# -------------------------------------------------------------------------- router


class RouterDeclared(_Event, frozen=True):
    policy: str
    session_ttl: float
    cooldown: float


class RouteDecided(_Event, frozen=True):
    group: str | None
    reason: str
    seconds: float  # CPU time the decision took
    sessions: int = 0


# -------------------------------------------------------------------------- models


class ModelJob(_Event, frozen=True):
    """A model job's events (their base: ``case ModelJob()`` matches the three)."""


class ModelJobStarted(ModelJob, frozen=True):
    """A model job began: ``action`` on ``model`` for ``nodes`` (``supervisor.models``)."""

    job_id: str
    action: ModelAction
    model: str
    nodes: list[str]
    at: float  # unix seconds
    source: str = ""  # the node that downloads, and sends to the others
    group: str = ""  # a swap's group


class ModelJobProgress(ModelJob, frozen=True):
    """One node of a job moved along: ``done`` of ``total`` bytes in ``phase``.

    ``rate``: bytes/s over the phase so far; ``eta``: seconds left at that rate (None:
    unknown); ``path``: how the bytes reach the node ("hub", "sftp", "mx.distributed", or ""
    when nothing moves).
    """

    job_id: str
    node: str
    phase: ModelPhase
    done: int = 0
    total: int = 0
    rate: float = 0.0
    eta: float | None = None
    path: str = ""
    detail: str = ""


class ModelJobEnded(ModelJob, frozen=True):
    job_id: str
    ok: bool
    at: float
    error: str = ""  # one line: what failed, on which node
    moved_bytes: int = 0  # from the hub and between nodes


class ModelsScanned(_Event, frozen=True):
    """What a node's sync actor found on its disk (the registry is derived from these)."""

    node: str
    models_dir: str
    free_bytes: int
    models: list[LocalModel]
    at: float


# ------------------------------------------------------------------------- cluster


class DrainStarted(_Event, frozen=True):
    """The server is shutting down: new work is refused, work in flight finishes."""


class Tick(_Event, frozen=True):
    """The sampler's beat (every ``series.STEP`` s): the fold closes a time-series bucket."""


Event = (
    NodeDeclared
    | NodeStatus
    | NodeRemoved
    | NodeHealth
    | GroupDeclared
    | GroupState
    | GroupLeaving
    | GroupRemoved
    | LinkMeasured
    | LinkDown
    | SupervisorStarted
    | SupervisorRestarted
    | SupervisorRemoved
    | ActorStarting
    | ActorSpawned
    | ActorHeartbeat
    | ActorLoading
    | ActorReady
    | ActorStopped
    | ActorRestarted
    | RequestAdmitted
    | RequestRefused
    | RequestStarted
    | TokensDelivered
    | RequestMoved
    | RequestEnded
    | RouterDeclared
    | RouteDecided
    | DrainStarted
    | Tick
    | ModelJobStarted
    | ModelJobProgress
    | ModelJobEnded
    | ModelsScanned
)
