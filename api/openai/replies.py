"""Generation events -> OpenAI's whole responses: choices, usage, logprobs, tool calls.

Pure functions over plain data; the stream's chunks (``api.openai.stream``) reuse the pieces.
"""

from __future__ import annotations

from actors.protocol.messages import TokenLogprob, ToolCall, Usage
from api.edge.choices import ChoiceResult
from api.openai.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionResponse,
    ChatLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    PromptTokensDetails,
    TokenLogprobOut,
    ToolCallOut,
    TopLogprobOut,
    UsageInfo,
)
from api.openai.protocol import FunctionCallOut as _FunctionOut


def finish_reason(reason: str, has_tool_calls: bool) -> str:
    """The engine's finish reason in OpenAI's words."""
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
        choices.append(ChatChoice(i, message, lps, _reason(r)))
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
            finish_reason=_reason(r),
        )
        for i, r in enumerate(results)
    ]
    usage = total_usage([r.usage for r in results if r.usage])
    return CompletionResponse(response_id, created, model, choices, usage)


def _reason(result: ChoiceResult) -> str | None:
    if result.finish_reason is None:
        return None
    return finish_reason(result.finish_reason, bool(result.tool_calls))
