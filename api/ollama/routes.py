"""Ollama's native endpoints: /api/chat, /api/generate, /api/tags, /api/show, /api/ps, ...

Errors leave these routes in Ollama's shape, ``{"error": "..."}``, with the status and
Retry-After the OpenAI routes would send.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass

from litestar import MediaType, Request, Response, Router, get, head, post
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody
from litestar.response import Redirect
from litestar.types import ControllerRouterHandler, Guard

from actors.protocol.messages import GenerationEvent
from api.edge.choices import ChoiceResult
from api.edge.error_shape import ErrorResponse
from api.edge.errors import handle_exception
from api.edge.generation import serve_generation
from api.edge.openapi import NDJSON, also_streamed, ndjson_line
from api.ollama.model_views import OLLAMA_VERSION, running, show, tags
from api.ollama.protocol import (
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
from api.ollama.replies import full_reply, load_reply
from api.ollama.stream import StreamedReply, ndjson_lines
from api.ollama.timing import TimedStream, Timings
from api.ollama.translate import chat_to_generation, generate_to_generation, resolve_model
from supervisor.serving.contract import (
    BadRequest,
    GenerationService,
    GenerationStream,
    ModelAdmin,
    ModelInfo,
    ModelNotFound,
    ServiceError,
)

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
    """A house-shaped error response re-cast as Ollama's ``{"error": ...}``, same status."""
    content = response.content
    message = content.error.message if isinstance(content, ErrorResponse) else str(content)
    return Response(
        OllamaError(error=message), status_code=response.status_code, headers=dict(response.headers)
    )


def ollama_exception_handler(request: Request, exc: Exception) -> Response:
    return as_ollama_error(handle_exception(request, exc))


def ollama_router(
    service: GenerationService,
    guards: Sequence[Guard] = (),
    admin: ModelAdmin | None = None,
    model_routes: Sequence[ControllerRouterHandler] = (),
) -> Router:
    """The /api endpoints Ollama clients use, bound to ``service``.

    ``admin``: models on the nodes' disks join ``/api/tags``; ``model_routes`` (Ollama's
    ``/pull`` and ``/delete``, api/models/ollama.py) replace the refusal to pull.
    """

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

    @get("/tags", summary="Models served here and models on the nodes' disks", responses=DENIED)
    async def list_tags() -> TagsResponse:
        downloaded = (await admin.models())["models"] if admin is not None else []
        return tags(service.list_models(), downloaded)

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
        route_handlers=[
            *[chat, generate, list_tags, show_model, list_running, version],
            *(model_routes or [pull]),
        ],
        guards=list(guards),
        tags=["ollama"],
        exception_handlers={Exception: ollama_exception_handler},
    )


@get("/", summary="Ollama's liveness probe", media_type=MediaType.TEXT, tags=["ollama"])
async def ollama_root(request: Request) -> Response[str]:
    # A browser (Accept prefers text/html) is sent to the dashboard; every other client,
    # Ollama's probes included ("*/*" or nothing), gets the plain text they look for.
    if request.accept.best_match([MediaType.TEXT, MediaType.HTML]) == MediaType.HTML:
        return Redirect("/dashboard")
    return Response("Ollama is running", media_type=MediaType.TEXT)


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
    dialect = OllamaDialect(chat, body.model, timings, top)
    streamed = body.stream is not False
    return await serve_generation(
        request, service, dialect, request_id, model.id, [generation], stream=streamed
    )


@dataclass
class OllamaDialect:
    """A generation in Ollama's words: NDJSON lines or one object, errors as ``{"error"}``."""

    chat: bool
    model: str  # as the client named it
    timings: Timings
    top_logprobs: int | None  # None: the request did not ask for logprobs
    name = "ollama"
    media_type = NDJSON

    def error(self, request: Request, exc: ServiceError) -> Response:
        return ollama_exception_handler(request, exc)

    def admitted(self, streams: list[GenerationStream]) -> list[GenerationStream]:
        self.timings.admitted = time.monotonic_ns()
        return [TimedStream(stream, self.timings) for stream in streams]

    def stream_body(
        self, events: AsyncIterator[tuple[int, GenerationEvent]], request_ids: Sequence[str]
    ) -> AsyncGenerator[bytes, None]:
        reply = StreamedReply(self.chat, self.model, self.timings, self.top_logprobs)
        return ndjson_lines(events, request_ids[0], reply)

    def whole_reply(self, results: list[ChoiceResult]) -> object:
        [result] = results
        top = self.top_logprobs
        return full_reply(self.chat, self.model, result, self.timings, top, time.time())
