"""``GET /api/cluster/logs``: the supervisor's recent log lines, or a live follow (SSE).

``?n=&actor=&node=&request=&level=&follow=``. Without ``follow`` the answer is a JSON list,
the newest ``n`` lines that match (default 100), oldest first. With ``follow=true`` it is a
Server-Sent Events stream: the newest ``n`` lines first (none unless ``n`` is given), then
every new line that matches as ``event: log`` with the line as JSON, and a comment every
``HEARTBEAT`` seconds of quiet so that proxies keep the stream open.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Annotated, Any

from litestar import Request, Response, get
from litestar.params import QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.types import ControllerRouterHandler

from api.edge.error_shape import ERROR_RESPONSES, error_response
from api.edge.generation import STREAM_HEADERS
from api.edge.heartbeat import with_heartbeat
from supervisor.serving.contract import BadRequest, LogFilter, Observer

HEARTBEAT = 10.0  # seconds of quiet before a comment line
DEFAULT_LINES = 100
MAX_LINES = 1_000_000  # the most any ring holds (hostfile logs.lines)
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no", "")

# What a caller may see of a body: everything with the admin key, else user names and paths
# hidden (api/edge/redaction.py, as for the status).
Lines = Annotated[str | None, QueryParameter(description="1..1000000 (default 100)")]
Actor = Annotated[str | None, QueryParameter(description="only this actor id's lines")]
Node = Annotated[str | None, QueryParameter(description="only this node's lines")]
RequestId = Annotated[
    str | None, QueryParameter(name="request", description="only this request id's lines")
]
Level = Annotated[
    str | None,
    QueryParameter(description="this level and above: debug, info, warning, error, critical"),
]
Follow = Annotated[
    str | None, QueryParameter(description="true: a text/event-stream of new lines until closed")
]
Redactor = Callable[[Request], Awaitable[Callable[[Any], Any]]]


def logs_routes(observer: Observer, redactor: Redactor) -> list[ControllerRouterHandler]:
    """Handlers mounted under ``/api`` (paths ``/cluster/...``), behind the inference key."""

    @get(
        "/cluster/logs",
        summary="The supervisor's recent log lines, or follow them (SSE)",
        tags=["cluster"],
        responses={
            400: ERROR_RESPONSES[400],
            401: ERROR_RESPONSES[401],
            429: error_response("Every log follower slot is taken (hostfile logs.followers)"),
        },
    )
    async def cluster_logs(
        request: Request,
        n: Lines = None,
        actor: Actor = None,
        node: Node = None,
        request_id: RequestId = None,
        level: Level = None,
        follow: Follow = None,
    ) -> Response:
        following = _flag(follow)
        limit = _count(n, 0 if following else DEFAULT_LINES)
        where = LogFilter(
            actor=_text("actor", actor),
            node=_text("node", node),
            request_id=_text("request", request_id),
            level=_text("level", level),
        )
        shown = await redactor(request)
        if not following:
            return Response([shown(line) for line in observer.logs(limit, where)])
        lines = observer.follow_logs(where)  # registered now: nothing after this is missed
        first = observer.logs(limit, where) if limit else []
        return ServerSentEvent(_sse(first, lines, shown), headers=dict(STREAM_HEADERS))

    return [cluster_logs]


def _count(text: str | None, default: int) -> int:
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"n: expected a whole number of lines, got {text!r}", param="n") from None
    if not 1 <= value <= MAX_LINES:
        raise BadRequest(f"n: {value} is outside 1..{MAX_LINES}", param="n")
    return value


def _flag(text: str | None) -> bool:
    word = (text or "").strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise BadRequest(f"follow: expected true or false, got {text!r}", param="follow")


def _text(name: str, value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise BadRequest(f"{name}: is empty; leave it out to match every line", param=name)
    return value


async def _sse(
    first: list[dict], lines: AsyncIterator[dict], shown: Callable[[Any], Any]
) -> AsyncIterator[ServerSentEventMessage]:
    """``first``, then each followed line; a comment after ``HEARTBEAT`` s of quiet."""
    for line in first:
        yield _event(shown(line))
    # with_heartbeat awaits the next line in a task it never cancels while the stream goes
    # on (cancelling it would end the follower's generator), and closes ``lines`` at the end:
    # that unregisters the follower. A follower dropped as too slow ends ``lines``.
    async with aclosing(with_heartbeat(lines, HEARTBEAT)) as followed:
        async for line in followed:
            quiet = line is None
            yield ServerSentEventMessage(comment="heartbeat") if quiet else _event(shown(line))


def _event(line: dict) -> ServerSentEventMessage:
    return ServerSentEventMessage(data=json.dumps(line, ensure_ascii=False), event="log")
