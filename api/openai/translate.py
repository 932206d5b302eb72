"""OpenAI request bodies -> internal GenerationRequests, one per choice.

Pure functions over plain data: nothing here touches HTTP, sockets or actors. Events go
back to OpenAI's shapes in ``api.openai.replies`` (whole) and ``api.openai.stream`` (SSE).
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
from api.edge.limits import check_schema, choice_seed
from api.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    NamedToolChoice,
    RequestMessage,
    ResponseFormatJSONObject,
    ResponseFormatJSONSchema,
    SamplingFields,
)
from api.openai.protocol import ResponseFormat as ResponseFormatBody
from supervisor.serving.contract import BadRequest


def chat_to_generation(body: ChatCompletionRequest, request_id: str) -> list[GenerationRequest]:
    """One GenerationRequest per requested choice (``n``)."""
    if not body.messages:
        raise BadRequest("messages: must contain at least one message", param="messages")
    if body.top_logprobs and not body.logprobs:
        raise BadRequest("top_logprobs: needs logprobs=true", param="top_logprobs")
    tools = [
        ToolSpec(
            t.function.name,
            t.function.description,
            _schema(t.function.parameters, f"tools[{i}].function.parameters"),
        )
        for i, t in enumerate(body.tools or [])
    ]
    max_tokens = (
        body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    )
    base = GenerationRequest(
        request_id=request_id,
        model=body.model,
        messages=[_chat_message(m, i) for i, m in enumerate(body.messages)],
        max_tokens=max_tokens,
        sampling=_sampling(body),
        stop=_stop(body.stop),
        logprobs=bool(body.logprobs),
        top_logprobs=body.top_logprobs or 0,
        tools=tools or None,
        tool_choice=_tool_choice(body.tool_choice, tools),
        parallel_tool_calls=body.parallel_tool_calls is not False,
        response_format=_response_format(body.response_format),
        session=body.session_id or body.user,
        ignore_eos=bool(body.ignore_eos),
        dialect="openai",
        endpoint="/v1/chat/completions",
    )
    return fan_out(base, body.n or 1)


def completion_to_generation(body: CompletionRequest, request_id: str) -> list[GenerationRequest]:
    """One GenerationRequest per requested choice (``n``) of a legacy completion."""
    if body.echo:
        raise BadRequest("echo: not supported; leave it unset", param="echo")
    if body.suffix:
        raise BadRequest("suffix: not supported; leave it unset", param="suffix")
    if body.best_of is not None and body.best_of > 1:
        raise BadRequest("best_of: not supported; use n for several completions", param="best_of")
    base = GenerationRequest(
        request_id=request_id,
        model=body.model,
        prompt=_prompt(body.prompt),
        max_tokens=body.max_tokens,
        sampling=_sampling(body),
        stop=_stop(body.stop),
        logprobs=body.logprobs is not None,
        top_logprobs=body.logprobs or 0,
        response_format=_response_format(body.response_format),
        session=body.session_id or body.user,
        ignore_eos=bool(body.ignore_eos),
        dialect="openai",
        endpoint="/v1/completions",
    )
    return fan_out(base, body.n or 1)


def fan_out(base: GenerationRequest, n: int) -> list[GenerationRequest]:
    """``n`` independent requests ``{id}-{i}``; seed+i (wrapped) makes choices differ yet repeat."""
    if n == 1:
        return [base]
    seed = base.sampling.seed
    return [
        msgspec.structs.replace(
            base,
            request_id=f"{base.request_id}-{i}",
            sampling=msgspec.structs.replace(
                base.sampling, seed=None if seed is None else choice_seed(seed, i)
            ),
        )
        for i in range(n)
    ]


def _chat_message(m: RequestMessage, i: int) -> ChatMessage:
    content = m.content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            if part.type not in ("text", "input_text"):
                raise BadRequest(
                    f"{where}: '{part.type}' parts are not supported; send text parts only",
                    param=where,
                )
            if part.text is None:
                raise BadRequest(f"{where}: a text part needs 'text'", param=where)
            texts.append(part.text)
        content = "\n".join(texts)
    if content is None and m.role in ("system", "user", "developer"):
        raise BadRequest(
            f"messages[{i}].content: required for a {m.role} message",
            param=f"messages[{i}].content",
        )
    tool_calls = None
    if m.tool_calls:
        tool_calls = [
            ToolCall(
                id=tc.id or f"call_{i}_{j}",
                name=tc.function.name,
                arguments=tc.function.arguments
                if isinstance(tc.function.arguments, str)
                else msgspec.json.encode(tc.function.arguments).decode(),
            )
            for j, tc in enumerate(m.tool_calls)
        ]
    # Few chat templates know "developer"; it is OpenAI's new name for the system role.
    role = "system" if m.role == "developer" else m.role
    return ChatMessage(
        role=role, content=content, name=m.name, tool_calls=tool_calls, tool_call_id=m.tool_call_id
    )


def _sampling(body: SamplingFields) -> SamplingParams:
    given = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": None if body.top_k is None else max(body.top_k, 0),
        "min_p": body.min_p,
        "seed": body.seed,
        "repetition_penalty": body.repetition_penalty,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
        "logit_bias": _logit_bias(body.logit_bias),
    }
    return SamplingParams(**{k: v for k, v in given.items() if v is not None})


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float] | None:
    if not bias:
        return None
    # Keys are 1-9 ASCII digits (the wire type's pattern): int() cannot fail or run long.
    return {int(key): value for key, value in bias.items()}


def _stop(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [s for s in ([stop] if isinstance(stop, str) else stop) if s]


def _tool_choice(choice: str | NamedToolChoice | None, tools: list[ToolSpec]) -> str | None:
    if choice is None:
        return None
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        if name not in {t.name for t in tools}:
            raise BadRequest(f"tool_choice: no tool named '{name}' in tools", param="tool_choice")
        return name
    if choice == "required" and not tools:
        raise BadRequest(
            "tool_choice: 'required' needs a non-empty tools list", param="tool_choice"
        )
    return choice


def _response_format(fmt: ResponseFormatBody | None) -> ResponseFormat | None:
    if isinstance(fmt, ResponseFormatJSONObject):
        return ResponseFormat(type="json_object")
    if isinstance(fmt, ResponseFormatJSONSchema):
        spec = fmt.json_schema
        if spec.schema is None:
            raise BadRequest(
                "response_format.json_schema.schema: required for type json_schema",
                param="response_format.json_schema.schema",
            )
        schema = _schema(spec.schema, "response_format.json_schema.schema")
        return ResponseFormat(type="json_schema", schema=schema, name=spec.name)
    return None  # "text" is the default: no constraint


def _schema(schema: dict | None, where: str) -> dict | None:
    if schema is not None:
        check_schema(schema, where)
    return schema


def _prompt(prompt: str | list) -> str:
    if isinstance(prompt, str):
        return prompt
    if not prompt:
        raise BadRequest("prompt: must not be empty", param="prompt")
    if all(isinstance(p, str) for p in prompt):
        if len(prompt) > 1:
            raise BadRequest(
                "prompt: one prompt per request; send several requests or use n", param="prompt"
            )
        return prompt[0]
    if all(isinstance(p, int | list) for p in prompt):
        raise BadRequest("prompt: token-id arrays are not supported; send text", param="prompt")
    raise BadRequest("prompt: expected a string or a list of one string", param="prompt")
