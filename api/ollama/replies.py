"""Generation events -> Ollama's reply objects: a whole reply, or the pieces of a stream's.

Pure functions over plain data; timings arrive as monotonic nanoseconds stamped by the
HTTP edge (``api.ollama.timing``).
"""

from __future__ import annotations

import msgspec
import structlog

from actors.protocol.messages import TokenLogprob, ToolCall
from api.edge.choices import ChoiceResult
from api.ollama.protocol import (
    ChatResponse,
    GenerateResponse,
    Logprob,
    MessageOut,
    ToolCallFunction,
    ToolCallOut,
    TopLogprob,
)
from api.ollama.timing import Timings, rfc3339

log = structlog.get_logger(__name__)


def done_reason(finish_reason: str | None) -> str:
    """Ollama says ``length`` when cut short and ``stop`` otherwise, tool calls included."""
    return "length" if finish_reason == "length" else "stop"


def tool_calls_out(calls: list[ToolCall], first_index: int = 0) -> list[ToolCallOut]:
    return [
        ToolCallOut(
            function=ToolCallFunction(
                name=c.name, arguments=_arguments_object(c), index=first_index + k
            ),
            id=c.id,
        )
        for k, c in enumerate(calls)
    ]


def _arguments_object(call: ToolCall) -> dict:
    # Ollama clients require an object; the engine's constrained decoding makes one.
    try:
        arguments = msgspec.json.decode(call.arguments)
    except msgspec.DecodeError:
        arguments = None
    if isinstance(arguments, dict):
        return arguments
    log.warning("ollama.tool_arguments_not_an_object", tool=call.name, arguments=call.arguments)
    return {}


def logprobs_out(logprobs: list[TokenLogprob], top_n: int) -> list[Logprob]:
    return [
        Logprob(
            token=lp.token,
            logprob=lp.logprob,
            bytes=list(lp.token.encode()),
            top_logprobs=[
                TopLogprob(t.token, t.logprob, list(t.token.encode())) for t in lp.top[:top_n]
            ],
        )
        for lp in logprobs
    ]


def reply_object(
    chat: bool, model: str, created_at: str, text: str, done: bool, **extra
) -> ChatResponse | GenerateResponse:
    """One reply object, /api/chat's (``chat``) or /api/generate's; ``extra``: its figures."""
    if chat:
        message = MessageOut(
            role="assistant", content=text, tool_calls=extra.pop("tool_calls", None)
        )
        return ChatResponse(model=model, created_at=created_at, message=message, done=done, **extra)
    extra.pop("tool_calls", None)
    return GenerateResponse(model=model, created_at=created_at, response=text, done=done, **extra)


def full_reply(
    chat: bool,
    model: str,
    result: ChoiceResult,
    timings: Timings,
    top_logprobs: int | None,
    now: float,
) -> ChatResponse | GenerateResponse:
    """The one object of a non-streamed reply."""
    return reply_object(
        chat,
        model,
        rfc3339(now),
        result.text,
        True,
        tool_calls=tool_calls_out(result.tool_calls) or None,
        done_reason=done_reason(result.finish_reason),
        logprobs=None if top_logprobs is None else logprobs_out(result.logprobs, top_logprobs),
        **timings.figures(result.usage),
    )


def load_reply(chat: bool, model: str, now: float) -> ChatResponse | GenerateResponse:
    """What an empty request (no messages, no prompt) gets: the model is loaded already."""
    return reply_object(chat, model, rfc3339(now), "", True, done_reason="load")
