"""OpenAI bodies -> internal GenerationRequests, and generation events -> OpenAI responses.

Pure functions over plain data: nothing here touches HTTP, sockets or actors.
Streaming chunk assembly lives in ``api.openai_stream``.
"""

from __future__ import annotations

import msgspec

from actors.protocol import (
    ChatMessage,
    Finished,
    GenerationEvent,
    GenerationFailed,
    GenerationRequest,
    ResponseFormat,
    SamplingParams,
    TokenDelta,
    TokenLogprob,
    ToolCall,
    ToolSpec,
    Usage,
)
from api.limits import check_schema, choice_seed
from api.openai_models import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    NamedToolChoice,
    PromptTokensDetails,
    RequestMessage,
    ResponseFormatJSONObject,
    ResponseFormatJSONSchema,
    SamplingFields,
    TokenLogprobOut,
    ToolCallOut,
    TopLogprobOut,
    UsageInfo,
)
from api.openai_models import FunctionCallOut as _FunctionOut
from api.openai_models import ResponseFormat as ResponseFormatBody
from supervisor.service import BadRequest

# --------------------------------------------------------------------------- #
# Requests
# --------------------------------------------------------------------------- #


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


# --------------------------------------------------------------------------- #
# Events -> non-streamed responses
# --------------------------------------------------------------------------- #


class ChoiceResult:
    """What one choice's event stream adds up to."""

    def __init__(self) -> None:
        self.text_parts: list[str] = []
        self.logprobs: list[TokenLogprob] = []
        self.tool_calls: list[ToolCall] = []
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.failure: GenerationFailed | None = None

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def add(self, event: GenerationEvent) -> None:
        if isinstance(event, TokenDelta):
            self.text_parts.append(event.text)
            self.logprobs.extend(event.logprobs or ())
            add_new_tool_calls(self.tool_calls, event.tool_calls)
        elif isinstance(event, Finished):
            add_new_tool_calls(self.tool_calls, event.tool_calls)
            self.usage = event.usage
            self.finish_reason = finish_reason(event.finish_reason, bool(self.tool_calls))
        else:
            self.failure = event


def add_new_tool_calls(seen: list[ToolCall], calls: list[ToolCall] | None) -> list[ToolCall]:
    """Append calls not seen yet (by id) and return them: Finished may repeat streamed ones."""
    known = {c.id for c in seen}
    new = [c for c in calls or () if c.id not in known]
    seen.extend(new)
    return new


def finish_reason(reason: str, has_tool_calls: bool) -> str:
    if has_tool_calls and reason in ("stop", "tool_calls"):
        return "tool_calls"
    # OpenAI clients with strict enums know no "cancelled"; generation simply stopped.
    return "stop" if reason == "cancelled" else reason


def total_usage(usages: list[Usage]) -> UsageInfo:
    """Usage of a request: the prompt counted once (as OpenAI does for n>1), completions summed."""
    prompt = usages[0].prompt_tokens if usages else 0
    cached = usages[0].cached_tokens if usages else 0
    completion = sum(u.completion_tokens for u in usages)
    return UsageInfo(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


def tool_calls_out(calls: list[ToolCall]) -> list[ToolCallOut]:
    return [ToolCallOut(id=c.id, function=_FunctionOut(c.name, c.arguments)) for c in calls]


def chat_logprobs(logprobs: list[TokenLogprob], top_n: int) -> ChatLogprobs:
    return ChatLogprobs(
        content=[
            TokenLogprobOut(
                token=lp.token,
                logprob=lp.logprob,
                bytes=list(lp.token.encode()),
                top_logprobs=[
                    TopLogprobOut(t.token, t.logprob, list(t.token.encode()))
                    for t in lp.top[:top_n]
                ],
            )
            for lp in logprobs
        ]
    )


def completion_logprobs(
    logprobs: list[TokenLogprob], top_n: int, offset: int = 0
) -> CompletionLogprobs:
    """Legacy shape; ``offset`` is where the first token starts in the choice's text."""
    offsets = []
    for lp in logprobs:
        offsets.append(offset)
        offset += len(lp.token)
    return CompletionLogprobs(
        tokens=[lp.token for lp in logprobs],
        token_logprobs=[lp.logprob for lp in logprobs],
        # As vLLM does: the top N plus the sampled token itself.
        top_logprobs=[
            {t.token: t.logprob for t in lp.top[:top_n]} | {lp.token: lp.logprob} for lp in logprobs
        ],
        text_offset=offsets,
    )


def chat_response(
    response_id: str,
    model: str,
    created: int,
    results: list[ChoiceResult],
    top_logprobs: int | None,
) -> ChatCompletionResponse:
    """``top_logprobs`` is None when the request did not ask for logprobs."""
    choices = []
    for i, r in enumerate(results):
        text = r.text
        message = AssistantMessage(
            role="assistant",
            content=text if text or not r.tool_calls else None,
            tool_calls=tool_calls_out(r.tool_calls) or None,
        )
        lps = None if top_logprobs is None else chat_logprobs(r.logprobs, top_logprobs)
        choices.append(ChatChoice(i, message, lps, r.finish_reason))
    usage = total_usage([r.usage for r in results if r.usage])
    return ChatCompletionResponse(response_id, created, model, choices, usage)


def completion_response(
    response_id: str,
    model: str,
    created: int,
    results: list[ChoiceResult],
    top_logprobs: int | None,
) -> CompletionResponse:
    choices = [
        CompletionChoice(
            index=i,
            text=r.text,
            logprobs=None
            if top_logprobs is None
            else completion_logprobs(r.logprobs, top_logprobs),
            finish_reason=r.finish_reason,
        )
        for i, r in enumerate(results)
    ]
    usage = total_usage([r.usage for r in results if r.usage])
    return CompletionResponse(response_id, created, model, choices, usage)
