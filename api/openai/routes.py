"""OpenAI-compatible endpoints: /v1/models, /v1/chat/completions, /v1/completions."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from litestar import Request, Response, Router, get, post
from litestar.params import FromPath, JSONBody
from litestar.types import Guard

from actors.protocol.messages import GenerationEvent
from api.edge.choices import ChoiceResult
from api.edge.error_shape import ERROR_RESPONSES
from api.edge.errors import handle_exception
from api.edge.generation import serve_generation
from api.edge.openapi import also_streamed, sse_event
from api.openai.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
)
from api.openai.replies import chat_response, completion_response
from api.openai.stream import ChatStreamAssembler, CompletionStreamAssembler, sse_frames
from api.openai.translate import chat_to_generation, completion_to_generation
from supervisor.serving.contract import (
    GenerationService,
    GenerationStream,
    ModelNotFound,
    ServiceError,
)


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
        requests = chat_to_generation(data, response_id)
        dialect = OpenAIDialect(
            response_id,
            data.model,
            n=len(requests),
            chat=True,
            top_logprobs=(data.top_logprobs or 0) if data.logprobs else None,
            include_usage=bool(data.stream_options and data.stream_options.include_usage),
        )
        return await serve_generation(
            request, service, dialect, response_id, data.model, requests, stream=bool(data.stream)
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
        requests = completion_to_generation(data, response_id)
        dialect = OpenAIDialect(
            response_id,
            data.model,
            n=len(requests),
            chat=False,
            top_logprobs=data.logprobs,
            include_usage=bool(data.stream_options and data.stream_options.include_usage),
        )
        return await serve_generation(
            request, service, dialect, response_id, data.model, requests, stream=bool(data.stream)
        )

    return Router(
        "/v1",
        route_handlers=[list_models, get_model, chat_completions, completions],
        guards=list(guards),
        tags=["openai"],
    )


@dataclass
class OpenAIDialect:
    """A generation in OpenAI's words: SSE chunks or one response, errors in the house shape."""

    response_id: str
    model: str
    n: int
    chat: bool
    top_logprobs: int | None  # None: the request did not ask for logprobs
    include_usage: bool
    name = "openai"
    media_type = "text/event-stream"

    def __post_init__(self) -> None:
        self.created = int(time.time())

    def error(self, request: Request, exc: ServiceError) -> Response:
        return handle_exception(request, exc)

    def admitted(self, streams: list[GenerationStream]) -> list[GenerationStream]:
        return streams

    def stream_body(
        self, events: AsyncIterator[tuple[int, GenerationEvent]], request_ids: Sequence[str]
    ) -> AsyncGenerator[bytes, None]:
        kind = ChatStreamAssembler if self.chat else CompletionStreamAssembler
        assembler = kind(
            self.response_id,
            self.model,
            self.created,
            self.n,
            top_logprobs=self.top_logprobs,
            include_usage=self.include_usage,
        )
        return sse_frames(events, request_ids, assembler)

    def whole_reply(self, results: list[ChoiceResult]) -> object:
        build = chat_response if self.chat else completion_response
        return build(self.response_id, self.model, self.created, results, self.top_logprobs)
