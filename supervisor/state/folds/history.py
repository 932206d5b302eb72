"""What the cluster remembers of past requests and errors: two bounded rings of frozen
records, newest kept (sizes: the hostfile's ``history.requests`` and ``history.errors``).

``ClusterState`` builds the records as it folds the events that end a request or report a
failure; /api/cluster/requests and /api/cluster/errors read them, newest first.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

import msgspec

from supervisor.state.views import RequestStatus

T = TypeVar("T")
PROMPT_CHARS = 2000  # of a kept prompt (history.keep_prompts): its first characters


class RequestRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    """One finished request, as /api/cluster/requests shows it.

    Times in ms from admission: ``queue_ms`` until placed on a group, ``ttft_ms`` until
    its first token (None: none came), ``duration_ms`` until its end.
    ``tokens_per_second``: completion tokens after the first over the time since the
    first (the decode rate; 0 with fewer than two). ``prompt`` only with keep_prompts
    (omitted otherwise: every other field is always there).
    """

    id: str
    created: float  # unix seconds
    dialect: str
    endpoint: str
    model: str
    groups: tuple[str, ...]  # every group that served it, in order (failover)
    status: RequestStatus
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    queue_ms: float
    ttft_ms: float | None
    duration_ms: float
    tokens_per_second: float
    error: str
    prompt: str | None = None


class ErrorRecord(msgspec.Struct, frozen=True):
    """One failure, as /api/cluster/errors shows it.

    ``kind``: actor_exited, actor_killed, actor_failed, actor_error, heartbeat_lost,
    watchdog_kill, connection_lost, load_timeout, spawn_failed, restart, group_failed,
    node_down, node_unreachable, request_failed, request_refused, link_degraded, link_down,
    link_active (a link's status changed: supervisor.state.folds.links).
    """

    time: float  # unix seconds
    kind: str
    message: str
    node: str | None = None
    group: str | None = None
    actor: str | None = None
    request_id: str | None = None


# ActorStopped's cause -> the error kind it is logged as (a killed actor with no cause of
# its own was killed with its set; an exited one died by itself).
CAUSE_KINDS = {
    "heartbeat": "heartbeat_lost",
    "watchdog": "watchdog_kill",
    "connection": "connection_lost",
    "spawn": "spawn_failed",
    "error": "actor_error",
    "timeout": "load_timeout",
}


def error_kind(state: str, cause: str) -> str:
    """The kind an actor stopped in ``state`` for ``cause`` is logged as."""
    return CAUSE_KINDS.get(cause, "actor_" + state)


class Ring(Generic[T]):
    """The last ``size`` items; read newest first."""

    def __init__(self, size: int):
        self._items: deque[T] = deque(maxlen=size)

    @property
    def size(self) -> int:
        return self._items.maxlen or 0

    def add(self, item: T) -> None:
        self._items.append(item)

    def __len__(self) -> int:
        return len(self._items)

    def newest(self) -> Iterator[T]:
        return reversed(self._items)


def newest_requests(
    ring: Ring[RequestRecord], limit: int, status: str | None = None, model: str | None = None
) -> list[RequestRecord]:
    """At most ``limit`` records, newest first, of ``status`` and ``model`` when given."""
    out: list[RequestRecord] = []
    if limit <= 0:
        return out
    for record in ring.newest():
        if (status is None or record.status == status) and (model is None or record.model == model):
            out.append(record)
            if len(out) >= limit:
                break
    return out


def clip_prompt(text: str | None) -> str | None:
    return None if text is None else text[:PROMPT_CHARS]
