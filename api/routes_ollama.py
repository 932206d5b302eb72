"""Ollama's native endpoints: /api/chat, /api/generate, /api/tags, /api/show, /api/ps, ...

Errors leave these routes in Ollama's shape, ``{"error": "..."}``, with the status and
Retry-After the OpenAI routes would send.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence

import anyio
import structlog
from litestar import MediaType, Request, Response, Router, get, head, post
from litestar.background_tasks import BackgroundTask
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody
from litestar.response import Stream
from litestar.types import Guard

from actors.protocol import Finished, GenerationEvent, GenerationFailed, TokenDelta
from api.errors import handle_exception
from api.generation import ClientGone, collect_choices, served_by, started_events, submit_all
from api.ollama import (
    OLLAMA_VERSION,
    chat_to_generation,
    generate_to_generation,
    resolve_model,
    running,
    show,
    tags,
)
from api.ollama_models import (
    ChatRequest,
    ChatResponse,
    GenerateRequest,
    GenerateResponse,
    ModelRequest,
    OllamaError,
    PsResponse,
    ShowResponse,
    TagsResponse,
    VersionResponse,
)
from api.ollama_reply import StreamedReply, Timings, full_reply, load_reply
from api.openai_models import ErrorResponse, json_encoder
from api.openapi import also_streamed, ndjson_line
from supervisor.service import (
    BadRequest,
    GenerationService,
    GenerationStream,
    ModelInfo,
    ModelNotFound,
    ServiceError,
)

log = structlog.get_logger(__name__)

NDJSON = "application/x-ndjson"
NDJSON_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
PULL_REFUSED = (
    "pulling models is not supported yet; use a hostfile model spec "
    "(a Hugging Face repo id or a local path) and restart the supervisor"
)

_ERRORS = {
    400: "Invalid request; the message names the field",
    401: "Missing or wrong API key",
    404: "Unknown model",
    429: "Queue full; retry after the Retry-After header's seconds",
    503: "No replica can serve the model now; see Retry-After",
}
ERROR_RESPONSES = {
    code: ResponseSpec(OllamaError, description=text, generate_examples=False)
    for code, text in _ERRORS.items()
}
DENIED = {401: ERROR_RESPONSES[401]}  # every /api route, when the server has an API key


def as_ollama_error(response: Response) -> Response:
    """An OpenAI-shaped error response re-cast as Ollama's ``{"error": ...}``, same status."""
    content = response.content
    message = content.error.message if isinstance(content, ErrorResponse) else str(content)
    return Response(
        OllamaError(error=message), status_code=response.status_code, headers=dict(response.headers)
    )


def ollama_exception_handler(request: Request, exc: Exception) -> Response:
    return as_ollama_error(handle_exception(request, exc))


def ollama_router(service: GenerationService, guards: Sequence[Guard] = ()) -> Router:
    """The /api endpoints Ollama clients use, bound to ``service``."""

    @post(
        "/chat",
        summary="Chat (NDJSON stream unless stream=false)",
        status_code=200,
        responses=ERROR_RESPONSES,
        operation_class=also_streamed(NDJSON, ndjson_line("ChatResponse", "OllamaError")),
    )
    async def chat(request: Request, data: JSONBody[ChatRequest]) -> Response[ChatResponse]:
        return await _generate(request, service, data, chat=True)

    @post(
        "/generate",
        summary="Completion of a prompt (NDJSON stream unless stream=false)",
        status_code=200,
        responses=ERROR_RESPONSES,
        operation_class=also_streamed(NDJSON, ndjson_line("GenerateResponse", "OllamaError")),
    )
    async def generate(
        request: Request, data: JSONBody[GenerateRequest]
    ) -> Response[GenerateResponse]:
        return await _generate(request, service, data, chat=False)

    @get("/tags", summary="Models served here", responses=DENIED)
    async def list_tags() -> TagsResponse:
        return tags(service.list_models())

    @post(
        "/show",
        summary="One model's details, parameters and capabilities",
        status_code=200,
        responses={**DENIED, 400: ERROR_RESPONSES[400], 404: ERROR_RESPONSES[404]},
    )
    async def show_model(data: JSONBody[ModelRequest]) -> ShowResponse:
        name = data.model or data.name
        if not name:
            raise BadRequest("model: required field is missing", param="model")
        return show(_find_model(service, name))

    @get("/ps", summary="Models loaded and ready to serve", responses=DENIED)
    async def list_running() -> PsResponse:
        return running(service.list_models())

    @get("/version", summary="The Ollama API version these endpoints follow", responses=DENIED)
    async def version() -> VersionResponse:
        return VersionResponse(OLLAMA_VERSION)

    @post(
        "/pull",
        summary="Not supported: models come from the hostfile",
        status_code=400,
        responses={**DENIED, 400: ResponseSpec(OllamaError, description=PULL_REFUSED)},
    )
    async def pull() -> Response[OllamaError]:
        return Response(OllamaError(error=PULL_REFUSED), status_code=400)

    return Router(
        "/api",
        route_handlers=[chat, generate, list_tags, show_model, list_running, version, pull],
        guards=list(guards),
        tags=["ollama"],
        exception_handlers={Exception: ollama_exception_handler},
    )


@get("/", summary="Ollama's liveness probe", media_type=MediaType.TEXT, tags=["ollama"])
async def ollama_root() -> str:
    return "Ollama is running"


@head("/", summary="Ollama's liveness probe", media_type=MediaType.TEXT, tags=["ollama"])
async def ollama_root_head() -> None:
    return None


def _find_model(service: GenerationService, name: str) -> ModelInfo:
    models = service.list_models()
    wanted = resolve_model(name, [m.id for m in models])
    for m in models:
        if m.id == wanted:
            return m
    raise ModelNotFound(
        f"model '{name}' not found; GET /api/tags lists the models served here", param="model"
    )


async def _generate(
    request: Request, service: GenerationService, body: ChatRequest | GenerateRequest, *, chat: bool
) -> Response:
    timings = Timings(started=time.monotonic_ns())
    model = _find_model(service, body.model)
    if not (body.messages if isinstance(body, ChatRequest) else body.prompt):
        return Response(load_reply(chat, body.model, time.time()))
    request_id = f"ollama-{uuid.uuid4().hex}"
    if isinstance(body, ChatRequest):
        generation = chat_to_generation(body, request_id, model.id, model.context_length)
    else:
        generation = generate_to_generation(body, request_id, model.id, model.context_length)
    top = (body.top_logprobs or 0) if body.logprobs else None
    try:
        streams = await submit_all(service, [generation])
    except ServiceError as exc:  # nothing sent yet: a refusal is a plain HTTP error
        return _error(request, exc, {"x-request-id": request_id})
    timings.admitted = time.monotonic_ns()
    stream = TimedStream(streams[0], timings)
    headers = {"x-request-id": request_id, "x-served-by": served_by(streams)}
    streamed = body.stream is not False
    log.debug(
        "api.generation_started",
        request_id=request_id,
        model=model.id,
        dialect="ollama",
        stream=streamed,
        served_by=headers["x-served-by"],
    )
    try:
        if streamed:
            events = await started_events(request, [stream], [request_id])
        else:
            [result] = await collect_choices(request, [stream], [request_id])
    except ClientGone:
        log.info("api.client_gone", request_id=request_id)
        return Response(b"", status_code=499, headers=headers)
    except ServiceError as exc:
        return _error(request, exc, headers)
    if streamed:
        lines = ndjson_lines(events, request_id, StreamedReply(chat, body.model, timings, top))
        return Stream(
            lines,
            media_type=NDJSON,
            headers={**headers, **NDJSON_HEADERS},
            background=BackgroundTask(lines.aclose),
        )
    reply = full_reply(chat, body.model, result, timings, top, time.time())
    return Response(reply, headers=headers)


class TimedStream:
    """A GenerationStream that stamps the first token and the end on ``timings``."""

    def __init__(self, stream: GenerationStream, timings: Timings) -> None:
        self._stream = stream
        self.timings = timings
        self.served_by = stream.served_by

    async def _events(self) -> AsyncIterator[GenerationEvent]:
        async for event in self._stream:
            if isinstance(event, TokenDelta):
                self.timings.first_token = self.timings.first_token or time.monotonic_ns()
            elif isinstance(event, Finished | GenerationFailed):
                self.timings.finished = time.monotonic_ns()
            yield event

    def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        return self._events()

    async def aclose(self) -> None:
        await self._stream.aclose()


async def ndjson_lines(
    events: AsyncIterator[tuple[int, GenerationEvent]], request_id: str, reply: StreamedReply
) -> AsyncIterator[bytes]:
    """The body of a streamed reply; closing it (or cancelling it) closes the stream."""
    try:
        async for _index, event in events:
            for line in reply.on_event(event):
                yield json_encoder.encode(line) + b"\n"
            if reply.done:
                break
    except Exception:
        # Headers are gone already: the error can only travel as a line.
        log.exception("api.stream_error", request_id=request_id)
        error = OllamaError(error="internal error while streaming; see the supervisor log")
        yield json_encoder.encode(error) + b"\n"
    finally:
        with anyio.CancelScope(shield=True):
            await events.aclose()


def _error(request: Request, exc: ServiceError, headers: dict[str, str]) -> Response:
    response = ollama_exception_handler(request, exc)
    response.headers.update(headers)
    return response
