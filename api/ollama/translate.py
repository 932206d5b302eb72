"""Ollama request bodies -> internal GenerationRequests.

Pure functions over plain data: nothing here touches HTTP, sockets or actors. Events go
back to Ollama's shapes in ``api.ollama.replies`` (whole) and ``api.ollama.stream`` (NDJSON).
"""

from __future__ import annotations

import msgspec

from actors.protocol.messages import (
    ChatMessage,
    GenerationRequest,
    ResponseFormat,
    SamplingParams,
    ToolCall,
    ToolSpec,
)
from api.edge.limits import check_schema
from api.ollama.protocol import (
    ChatRequest,
    Format,
    GenerateRequest,
    GenerationFields,
    Message,
    Options,
)
from supervisor.serving.contract import BadRequest


def resolve_model(name: str, served: list[str]) -> str | None:
    """The served model id ``name`` means; Ollama clients may add the default tag ``:latest``."""
    if name in served:
        return name
    base, _, tag = name.rpartition(":")
    if tag == "latest" and base in served:
        return base
    return None


def chat_to_generation(
    body: ChatRequest, request_id: str, model: str, context_length: int = 0
) -> GenerationRequest:
    """``model`` is the served id ``body.model`` resolved to; ``messages`` must not be empty."""
    tools = []
    for i, t in enumerate(body.tools or []):
        if t.function.parameters is not None:
            check_schema(t.function.parameters, f"tools[{i}].function.parameters")
        tools.append(ToolSpec(t.function.name, t.function.description, t.function.parameters))
    return _request(
        body,
        request_id,
        model,
        context_length,
        messages=[_chat_message(m, i) for i, m in enumerate(body.messages)],
        tools=tools or None,
        endpoint="/api/chat",
    )


def generate_to_generation(
    body: GenerateRequest, request_id: str, model: str, context_length: int = 0
) -> GenerationRequest:
    """A raw prompt goes to the model as it is; otherwise it is the user turn of a chat."""
    if body.images:
        raise _images_refused("images")
    if body.suffix:
        raise BadRequest(
            "suffix: fill-in-the-middle is not supported; leave it unset", param="suffix"
        )
    if body.template:
        raise BadRequest(
            "template: custom prompt templates are not supported; "
            "send raw=true with a prompt formatted as the model expects",
            param="template",
        )
    if body.context:
        raise BadRequest(
            "context: not supported; send the conversation as messages to /api/chat",
            param="context",
        )
    if body.raw:
        if body.system:
            raise BadRequest(
                "system: a raw prompt is not templated; write the system text into the prompt",
                param="system",
            )
        return _request(
            body, request_id, model, context_length, prompt=body.prompt, endpoint="/api/generate"
        )
    messages = [ChatMessage(role="system", content=body.system)] if body.system else []
    messages.append(ChatMessage(role="user", content=body.prompt))
    return _request(
        body, request_id, model, context_length, messages=messages, endpoint="/api/generate"
    )


def _request(
    body: GenerationFields, request_id: str, model: str, context_length: int, **what
) -> GenerationRequest:
    options = body.options or Options()
    return GenerationRequest(
        request_id=request_id,
        model=model,
        max_tokens=_max_tokens(options.num_predict, context_length),
        sampling=_sampling(options),
        stop=_stop(options.stop),
        logprobs=bool(body.logprobs),
        top_logprobs=(body.top_logprobs or 0) if body.logprobs else 0,
        response_format=_response_format(body.format),
        dialect="ollama",
        **what,
    )


def _images_refused(where: str) -> BadRequest:
    return BadRequest(
        f"{where}: images are not supported; the models served here read text only", param=where
    )


def _chat_message(m: Message, i: int) -> ChatMessage:
    if m.images:
        raise _images_refused(f"messages[{i}].images")
    tool_calls = None
    if m.tool_calls:
        tool_calls = [
            ToolCall(
                id=tc.id or f"call_{i}_{j}",
                name=tc.function.name,
                arguments=msgspec.json.encode(tc.function.arguments).decode(),
            )
            for j, tc in enumerate(m.tool_calls)
        ]
    content = m.content or ("" if not tool_calls else None)
    return ChatMessage(
        role=m.role,
        content=content,
        name=m.tool_name,
        tool_calls=tool_calls,
        tool_call_id=m.tool_call_id,
    )


def _max_tokens(num_predict: int | None, context_length: int) -> int | None:
    if num_predict is None or num_predict == 0:
        return None  # the server's default length
    if num_predict < 0:  # Ollama's "until the context is full"; the engine caps at the room left
        return context_length or None
    return num_predict


def _sampling(o: Options) -> SamplingParams:
    penalty = o.repeat_penalty
    given = {
        "temperature": o.temperature,
        "top_p": o.top_p,
        "top_k": o.top_k,
        "min_p": o.min_p,
        "seed": None if o.seed is None or o.seed < 0 else o.seed,
        # Ollama treats 0 like 1: no penalty.
        "repetition_penalty": None if penalty in (None, 0.0, 1.0) else penalty,
        "presence_penalty": o.presence_penalty,
        "frequency_penalty": o.frequency_penalty,
    }
    return SamplingParams(**{k: v for k, v in given.items() if v is not None})


def _stop(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [s for s in ([stop] if isinstance(stop, str) else stop) if s]


def _response_format(fmt: Format | None) -> ResponseFormat | None:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return ResponseFormat(type="json_object")
    check_schema(fmt, "format")
    return ResponseFormat(type="json_schema", schema=fmt)
