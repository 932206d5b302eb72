"""The one door api/ uses to reach generation: admit, route, stream, cancel."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Protocol

import msgspec

from actors.protocol.messages import GenerationEvent, GenerationRequest


class ServiceError(Exception):
    """A request the service will not run; ``status`` is the HTTP status to answer with."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, retry_after: float | None = None, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.param = param


class BadRequest(ServiceError):
    status = 400
    code = "invalid_request_error"


class ContextLengthExceeded(BadRequest):
    """A prompt that cannot fit the model's context (OpenAI's code for it)."""

    code = "context_length_exceeded"


class ModelNotFound(ServiceError):
    status = 404
    code = "model_not_found"


class QueueFull(ServiceError):
    status = 429
    code = "rate_limit_exceeded"


class Unavailable(ServiceError):
    status = 503
    code = "service_unavailable"


@dataclass(frozen=True)
class ModelInfo:
    id: str
    created: int
    owned_by: str = "mlx-supervisor"
    groups: list[str] = field(default_factory=list)
    context_length: int = 0
    ready: bool = False


class GenerationStream(Protocol):
    """Events of one admitted request; ``aclose()`` cancels it on the actor."""

    served_by: str

    def __aiter__(self) -> AsyncIterator[GenerationEvent]: ...

    async def aclose(self) -> None: ...


class GenerationService(Protocol):
    def list_models(self) -> list[ModelInfo]: ...

    async def submit(self, request: GenerationRequest) -> GenerationStream:
        """Admit and route ``request``; raise a ServiceError at once if it cannot run.

        The returned stream yields TokenDelta events and ends with exactly one
        Finished or GenerationFailed event.
        """
        ...

    def draining(self) -> bool: ...


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class HostJoin(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A machine joining a running cluster as one single-host generation group."""

    ssh: str
    name: str | None = None
    model: str | None = None
    group: str | None = None
    python: str | None = None
    workdir: str | None = None
    env: dict[str, str] = {}
    chip: str | None = None
    gpu_cores: Annotated[int, msgspec.Meta(ge=1)] | None = None
    memory_gb: Annotated[float, msgspec.Meta(gt=0)] | None = None


class Membership(Protocol):
    """Hosts joining and leaving without a restart of the others."""

    async def add_host(self, join: HostJoin) -> dict:
        """Start the host's actors and its group; raise Conflict / BadRequest at once."""
        ...

    async def remove_host(self, node: str, drain_timeout: float) -> dict:
        """Drain the node's groups (no new work, in-flight finishes), stop and forget them."""
        ...


class LogFilter(msgspec.Struct, frozen=True, omit_defaults=True):
    """Which log lines to read: all that match every field given."""

    actor: str | None = None
    node: str | None = None
    request_id: str | None = None
    level: str | None = None  # this level and above: debug < info < warning < error


class FeedItem(msgspec.Struct, frozen=True):
    """One item of the live feed: ``id`` is the event number (SSE ``id:``), ``event`` its
    kind (``snapshot``, ``live`` or the event's type), ``data`` its JSON-ready body."""

    id: int
    event: str
    data: dict


class Observer(Protocol):
    """What the observability routes read. Every figure comes from the cluster state
    (or, for logs, the supervisor's bounded ring of log lines); nothing is kept twice."""

    def metrics(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type, built at scrape time."""
        ...

    def requests(self, limit: int, status: str | None, model: str | None) -> list[dict]:
        """Request history, newest first."""
        ...

    def errors(self, limit: int) -> list[dict]:
        """Error log, newest first."""
        ...

    def timeseries(self, metric: str, window: str) -> dict:
        """``{metric, unit, points: [[unix_seconds, value], ...]}``; BadRequest if unknown."""
        ...

    def events(self, after: int | None) -> AsyncIterator[FeedItem]:
        """A snapshot first (unless ``after`` can be resumed), then one item per change."""
        ...

    def logs(self, limit: int, where: LogFilter) -> list[dict]:
        """The newest ``limit`` log lines that match, oldest first."""
        ...

    def follow_logs(self, where: LogFilter) -> AsyncIterator[dict]:
        """Log lines that match, as they are written."""
        ...


# ------------------------------------------------------------------------------ models


class ModelDownload(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /api/cluster/models``: put ``model`` ("org/name[@revision]") on nodes.

    ``nodes``: names, or None for every node (``group``: that group's nodes instead).
    """

    model: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    nodes: list[str] | None = None
    group: str | None = None


class GroupModel(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /api/cluster/groups/{name}/model``: serve ``model`` on that group instead."""

    model: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class ModelAdmin(Protocol):
    """Models on the nodes' disks (``supervisor.models``): list, download and sync, delete,
    swap a group's model. Jobs are dicts shaped like ``state.folds.models.ModelJobView``."""

    async def models(self) -> dict:
        """``{"models": [...], "nodes": {...}, "jobs": [...]}``: every node's disk, scanned
        now (a node that does not answer in time is shown with its last scan)."""
        ...

    def download(self, order: ModelDownload) -> dict:
        """Start a download-and-sync job; its view at once. BadRequest / NotFound at once."""
        ...

    def job(self, job_id: str) -> dict | None: ...

    def follow(self, job_id: str) -> AsyncIterator[dict]:
        """The job's view each time it changes, the last one when it has ended."""
        ...

    async def delete(self, model: str, node: str | None) -> dict:
        """Remove ``model`` from ``node`` (None: every node). Conflict if a group serves it."""
        ...

    def swap(self, group: str, order: GroupModel) -> dict:
        """Start swapping ``group`` to ``order.model``: a job (sync, drain, restart).
        NotFound / Conflict (it cannot fit, or a job runs on the group) at once."""
        ...
