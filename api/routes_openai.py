"""OpenAI-compatible endpoints: /v1/models, /v1/chat/completions, /v1/completions."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import structlog
from litestar import Request, Response, Router, get, post
from litestar.background_tasks import BackgroundTask
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody
from litestar.response import Stream
from litestar.types import Guard

from actors.protocol import GenerationRequest
from api.errors import handle_exception
from api.generation import (
    ClientGone,
    collect_choices,
    served_by,
    sse_frames,
    started_events,
    submit_all,
)
from api.openai import (
    chat_response,
    chat_to_generation,
    completion_response,
    completion_to_generation,
)
from api.openai_models import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from api.openai_stream import ChatStreamAssembler, CompletionStreamAssembler
from api.openapi import also_streamed, sse_event
from supervisor.service import GenerationService, ModelNotFound, ServiceError

log = structlog.get_logger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

_ERRORS = {
    400: "Invalid request; error.param names the field",
    401: "Missing or wrong API key",
    404: "Unknown model",
    429: "Queue full; retry after the Retry-After header's seconds",
    503: "No replica can serve the model now; see Retry-After",
}


def error_response(description: str) -> ResponseSpec:
    """An error response in OpenAI's shape, for an OpenAPI ``responses`` table."""
    return ResponseSpec(ErrorResponse, description=description, generate_examples=False)


ERROR_RESPONSES = {code: error_response(text) for code, text in _ERRORS.items()}


class ServedModelCard(ModelCard, tag="model"):
    """OpenAI's model object plus the groups serving the model (an extra field clients skip)."""

    groups: list[str] = []


def openai_router(service: GenerationService, guards: Sequence[Guard] = ()) -> Router:
    """The /v1 endpoints, bound to ``service``."""

    @get(
        "/models",
        summary="List the models this cluster serves",
        responses={401: ERROR_RESPONSES[401]},
    )
    async def list_models() -> ModelList:
        return ModelList(
            [ServedModelCard(m.id, m.created, m.owned_by, m.groups) for m in service.list_models()]
        )

    @get(
        "/models/{model_id:path}",
        summary="One model; ids may contain '/' and ':'",
        responses={400: ERROR_RESPONSES[400], 401: ERROR_RESPONSES[401], 404: ERROR_RESPONSES[404]},
    )
    async def get_model(model_id: FromPath[Path]) -> ModelCard:
        wanted = str(model_id).lstrip("/")
        for m in service.list_models():
            if m.id == wanted:
                return ServedModelCard(m.id, m.created, m.owned_by, m.groups)
        raise ModelNotFound(
            f"model '{wanted}' is not served here; GET /v1/models lists the models", param="model"
        )

    @post(
        "/chat/completions",
        summary="Chat completion (stream=true answers text/event-stream)",
        status_code=200,
        responses=ERROR_RESPONSES,
        operation_class=also_streamed(
            "text/event-stream", sse_event("ChatCompletionChunk", "ErrorResponse", done="[DONE]")
        ),
    )
    async def chat_completions(
        request: Request, data: JSONBody[ChatCompletionRequest]
    ) -> Response[ChatCompletionResponse]:
        response_id = f"chatcmpl-{uuid.uuid4().hex}"
        top = (data.top_logprobs or 0) if data.logprobs else None
        return await _generate(
            request,
            service,
            response_id,
            data.model,
            chat_to_generation(data, response_id),
            top_logprobs=top,
            stream=bool(data.stream),
            include_usage=bool(data.stream_options and data.stream_options.include_usage),
            chat=True,
        )

    @post(
        "/completions",
        summary="Legacy text completion (stream=true answers text/event-stream)",
        status_code=200,
        responses=ERROR_RESPONSES,
        operation_class=also_streamed(
            "text/event-stream", sse_event("CompletionResponse", "ErrorResponse", done="[DONE]")
        ),
    )
    async def completions(
        request: Request, data: JSONBody[CompletionRequest]
    ) -> Response[CompletionResponse]:
        response_id = f"cmpl-{uuid.uuid4().hex}"
        return await _generate(
            request,
            service,
            response_id,
            data.model,
            completion_to_generation(data, response_id),
            top_logprobs=data.logprobs,
            stream=bool(data.stream),
            include_usage=bool(data.stream_options and data.stream_options.include_usage),
            chat=False,
        )

    return Router(
        "/v1",
        route_handlers=[list_models, get_model, chat_completions, completions],
        guards=list(guards),
        tags=["openai"],
    )


async def _generate(
    request: Request,
    service: GenerationService,
    response_id: str,
    model: str,
    requests: list[GenerationRequest],
    *,
    top_logprobs: int | None,
    stream: bool,
    include_usage: bool,
    chat: bool,
) -> Response:
    """Submit every choice, then stream the events or answer once all choices are done."""
    created = int(time.time())
    request_ids = [r.request_id for r in requests]
    try:
        streams = await submit_all(service, requests)
    except ServiceError as exc:  # nothing sent yet: a refusal is a plain HTTP error
        return _error(request, exc, {"x-request-id": response_id})
    headers = {"x-request-id": response_id, "x-served-by": served_by(streams)}
    log.debug(
        "api.generation_started",
        request_id=response_id,
        model=model,
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
        log.info("api.client_gone", request_id=response_id)
        return Response(b"", status_code=499, headers=headers)
    except ServiceError as exc:
        return _error(request, exc, headers)
    if stream:
        kind = ChatStreamAssembler if chat else CompletionStreamAssembler
        assembler = kind(
            response_id,
            model,
            created,
            len(requests),
            top_logprobs=top_logprobs,
            include_usage=include_usage,
        )
        frames = sse_frames(events, request_ids, assembler)
        # The frames' finally closes the streams; this covers a body abandoned at a yield.
        return Stream(
            frames,
            media_type="text/event-stream",
            headers={**headers, **SSE_HEADERS},
            background=BackgroundTask(frames.aclose),
        )
    build = chat_response if chat else completion_response
    return Response(build(response_id, model, created, results, top_logprobs), headers=headers)


def _error(request: Request, exc: ServiceError, headers: dict[str, str]) -> Response:
    response = handle_exception(request, exc)
    response.headers.update(headers)
    return response
