"""One generation over HTTP, in either dialect: admit every choice, then stream or answer once.

The flow is the same for OpenAI and Ollama: a refusal before anything was sent is a plain
HTTP error, a client that hangs up before its answer gets 499 (nobody reads it), and a
stream's headers wait for its first event (``api.edge.submission``). What differs, a
``Dialect`` supplies: its error shape, its stream's body and media type, its whole reply.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Protocol

import structlog
from litestar import Request, Response
from litestar.background_tasks import BackgroundTask
from litestar.response import Stream

from actors.protocol.messages import GenerationEvent, GenerationRequest
from api.edge.choices import ChoiceResult
from api.edge.submission import (
    ClientGone,
    collect_choices,
    served_by,
    started_events,
    submit_all,
)
from supervisor.serving.contract import GenerationService, GenerationStream, ServiceError

log = structlog.get_logger(__name__)

# Proxies must pass each chunk on at once, and nobody may cache a generation.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Dialect(Protocol):
    """How one API dialect words a generation; one per request."""

    name: str  # for the log: "openai", "ollama"
    media_type: str  # of a streamed reply

    def error(self, request: Request, exc: ServiceError) -> Response:
        """A refusal or failure before anything was sent, in the dialect's error shape."""
        ...

    def admitted(self, streams: list[GenerationStream]) -> list[GenerationStream]:
        """The streams to read, once every choice is admitted (a dialect may wrap them)."""
        ...

    def stream_body(
        self, events: AsyncIterator[tuple[int, GenerationEvent]], request_ids: Sequence[str]
    ) -> AsyncGenerator[bytes, None]:
        """The body of a streamed reply; closing it closes ``events``."""
        ...

    def whole_reply(self, results: list[ChoiceResult]) -> object:
        """The body of a non-streamed reply, every choice done."""
        ...


async def serve_generation(
    request: Request,
    service: GenerationService,
    dialect: Dialect,
    request_id: str,
    model: str,
    requests: list[GenerationRequest],
    *,
    stream: bool,
) -> Response:
    """Submit every choice, then stream the events or answer once all choices are done."""
    request_ids = [r.request_id for r in requests]
    try:
        admitted = await submit_all(service, requests)
    except ServiceError as exc:  # nothing sent yet: a refusal is a plain HTTP error
        return _error(dialect, request, exc, {"x-request-id": request_id})
    streams = dialect.admitted(admitted)
    headers = {"x-request-id": request_id, "x-served-by": served_by(streams)}
    log.debug(
        "api.generation_started",
        request_id=request_id,
        model=model,
        dialect=dialect.name,
        n=len(requests),
        stream=stream,
        served_by=headers["x-served-by"],
    )
    try:
        if stream:
            events = await started_events(request, streams, request_ids)
        else:
            results = await collect_choices(request, streams, request_ids)
    except ClientGone:
        log.info("api.client_gone", request_id=request_id)
        return Response(b"", status_code=499, headers=headers)
    except ServiceError as exc:
        return _error(dialect, request, exc, headers)
    if stream:
        body = dialect.stream_body(events, request_ids)
        # The body's finally closes the streams; this covers a body abandoned at a yield.
        return Stream(
            body,
            media_type=dialect.media_type,
            headers={**headers, **STREAM_HEADERS},
            background=BackgroundTask(body.aclose),
        )
    return Response(dialect.whole_reply(results), headers=headers)


def _error(
    dialect: Dialect, request: Request, exc: ServiceError, headers: dict[str, str]
) -> Response:
    response = dialect.error(request, exc)
    response.headers.update(headers)
    return response
