"""``/api/cluster/requests|errors|timeseries|events``: history, series and the live feed.

Behind the inference key like ``/api/cluster/status``, and redacted the same way for a
caller without the admin key (api/edge/redaction.py): error messages, node names and the
feed's snapshot may quote SSH users and paths.

The feed is Litestar's Server-Sent Events: the first event ``snapshot`` (the whole state),
then one per change with ``id:`` its number and ``event:`` its type (``live`` for the
coalesced vitals). A client resumes with ``Last-Event-ID`` (or ``?after=``). An item whose
number is not above the last id sent (a ``live`` item numbered as the change before it)
goes without ``id:``, so the ids a client sees only go up. A ``: ping`` comment after
``HEARTBEAT`` s of silence keeps proxies from closing an idle stream.
"""

from __future__ import annotations

import getpass
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Annotated, Any

import msgspec
from litestar import Request, get
from litestar.background_tasks import BackgroundTask
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.params import QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.types import ControllerRouterHandler

from api.edge.error_shape import ERROR_RESPONSES
from api.edge.guards import Keys, is_admin
from api.edge.heartbeat import with_heartbeat
from api.edge.openapi import also_streamed
from api.edge.redaction import redact, ssh_users
from supervisor.serving.contract import BadRequest, FeedItem, Observer

HEARTBEAT = 15.0  # s of silence on the feed before a ``: ping`` comment
RETRY_MS = 2000  # the reconnect delay the feed asks EventSource clients for
DEFAULT_LIMIT = 100
_encode = msgspec.json.Encoder().encode
_ERRORS = {400: ERROR_RESPONSES[400], 401: ERROR_RESPONSES[401]}
# Query parameters are read as text and checked here, so that a bad one is one line naming it.
Limit = Annotated[str | None, QueryParameter(description="1..history.requests (default 100)")]
ErrorLimit = Annotated[str | None, QueryParameter(description="1..history.errors (default 100)")]
Status = Annotated[str | None, QueryParameter(description="ok, error or cancelled")]
Model = Annotated[str | None, QueryParameter(description="only this model's requests")]
Metric = Annotated[
    str | None,
    QueryParameter(
        description="throughput, requests, ttft_p50, ttft_p95, latency_p50, queue_depth, "
        "in_flight or memory_used:<node>"
    ),
]
Window = Annotated[str, QueryParameter(description="15m (2 s points), 1h (10 s) or 24h (60 s)")]
After = Annotated[str | None, QueryParameter(description="resume after this event id")]


def whole_number(name: str, text: str | None, default: int | None) -> int | None:
    """``text`` as a non-negative integer; BadRequest naming ``name`` otherwise."""
    if text is None:
        return default
    try:
        value = int(text.strip())
    except ValueError:
        raise BadRequest(f"{name}: must be an integer, got {text[:40]!r}", param=name) from None
    if value < 0:
        raise BadRequest(f"{name}: must be 0 or more, got {value}", param=name)
    return value


# One event of the feed, as OpenAPI 3.1 reads text/event-stream (one item, not the stream):
# ``snapshot`` / ``live`` / an event type, its number, and its body as JSON.
FEED_EVENT = Schema(
    type=OpenAPIType.OBJECT,
    properties={
        "event": Schema(type=OpenAPIType.STRING),
        "id": Schema(type=OpenAPIType.STRING),
        "data": Schema(type=OpenAPIType.STRING, content_media_type="application/json"),
        "retry": Schema(type=OpenAPIType.INTEGER),
    },
    required=["data"],
)


def history_routes(
    observer: Observer, keys: Keys, heartbeat: float | None = None
) -> list[ControllerRouterHandler]:
    """Handlers mounted under ``/api`` (paths ``/cluster/...``), behind the inference key.

    ``keys``: who is admin (sees everything unredacted). ``heartbeat``: else HEARTBEAT.
    """
    me = getpass.getuser()

    def shown(request: Request, value: Any) -> Any:
        return value if is_admin(request, keys) else redact(value, [me])

    @get(
        "/cluster/requests",
        summary="Request history, newest first",
        description="A request with n choices leaves one record per choice, id "
        "'<response id>-<i>'.",
        tags=["cluster"],
        responses=_ERRORS,
    )
    async def cluster_requests(
        request: Request, limit: Limit = None, status: Status = None, model: Model = None
    ) -> list[dict]:
        count = whole_number("limit", limit, DEFAULT_LIMIT)
        records = observer.requests(count, status, model)
        if is_admin(request, keys):
            return records
        return [{**r, "error": redact(r["error"], [me])} if r["error"] else r for r in records]

    @get(
        "/cluster/errors",
        summary="Error log (actor deaths, restarts, lost heartbeats, failed requests)",
        tags=["cluster"],
        responses=_ERRORS,
    )
    async def cluster_errors(request: Request, limit: ErrorLimit = None) -> list[dict]:
        return shown(request, observer.errors(whole_number("limit", limit, DEFAULT_LIMIT)))

    @get(
        "/cluster/timeseries",
        summary="One metric over a window: {metric, unit, points: [[unix_seconds, value]]}",
        tags=["cluster"],
        responses=_ERRORS,
    )
    async def cluster_timeseries(metric: Metric = None, window: Window = "15m") -> dict:
        if not metric:
            raise BadRequest("metric: required, e.g. ?metric=throughput", param="metric")
        return observer.timeseries(metric, window)

    @get(
        "/cluster/events",
        summary="Live feed (Server-Sent Events): a snapshot, then every change",
        description="Resume with the Last-Event-ID header (or ?after=<id>): no event is "
        "repeated, or a fresh snapshot comes when the id is too old.",
        tags=["cluster"],
        responses={
            **_ERRORS,
            200: ResponseSpec(str, description="text/event-stream", media_type="text/event-stream"),
        },
        operation_class=also_streamed("text/event-stream", FEED_EVENT),
    )
    async def cluster_events(request: Request, after: After = None) -> ServerSentEvent:
        header = request.headers.get("last-event-id", "").strip()
        start = (
            whole_number("Last-Event-ID", header, None)
            if header
            else whole_number("after", after, None)
        )
        stream = observer.events(start)
        admin = is_admin(request, keys)
        users = {me}

        def show(item: FeedItem) -> Any:
            if admin:
                return item.data
            if item.event == "snapshot":
                users.update(ssh_users(item.data))
            elif item.event == "NodeDeclared" and "@" in item.data.get("ssh", ""):
                users.update(ssh_users({"nodes": [item.data]}))
            return redact(item.data, users)

        return ServerSentEvent(
            messages(stream, start, show, heartbeat or HEARTBEAT),
            background=BackgroundTask(close, stream),  # if the body was abandoned at a yield
        )

    return [cluster_requests, cluster_errors, cluster_timeseries, cluster_events]


async def close(stream: AsyncIterator[FeedItem]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


async def messages(
    stream: AsyncIterator[FeedItem],
    after: int | None,
    show: Callable[[FeedItem], Any],
    heartbeat: float,
) -> AsyncGenerator[ServerSentEventMessage, None]:
    """The feed's items as SSE messages, a ping comment after ``heartbeat`` s of silence.

    ``api.edge.heartbeat.with_heartbeat`` awaits the next item in a task that outlives a
    heartbeat (no item is lost to a timeout). When the client goes away the response is
    cancelled here, and the subscription closed without awaiting, so a cancellation that
    repeats cannot stop the cleanup.
    """
    last = -1 if after is None else after
    try:
        async with aclosing(with_heartbeat(stream, heartbeat)) as items:
            async for item in items:
                if item is None:
                    yield ServerSentEventMessage(data=None, comment="ping")
                    continue
                snapshot = item.event == "snapshot"
                number = item.id if snapshot or item.id > last else None
                last = item.id if number is not None else last
                yield ServerSentEventMessage(
                    data=_encode(show(item)).decode(),
                    event=item.event,
                    id=number,
                    retry=RETRY_MS if snapshot else None,
                )
    finally:
        close_now = getattr(stream, "close", None)
        if close_now is not None:
            close_now()
