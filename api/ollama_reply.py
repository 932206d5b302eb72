"""Generation events -> Ollama replies: one object, or the NDJSON lines of a stream.

Pure bookkeeping over plain data; timings arrive as monotonic nanoseconds stamped by the
HTTP edge.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import structlog

from actors.protocol import Finished, GenerationEvent, TokenDelta, TokenLogprob, ToolCall, Usage
from api.ollama import rfc3339
from api.ollama_models import (
    ChatResponse,
    GenerateResponse,
    Logprob,
    MessageOut,
    OllamaError,
    ToolCallFunction,
    ToolCallOut,
    TopLogprob,
)
from api.openai import ChoiceResult, add_new_tool_calls

log = structlog.get_logger(__name__)


@dataclass
class Timings:
    """Monotonic nanoseconds of one request's milestones, stamped by the HTTP edge."""

    started: int
    admitted: int = 0
    first_token: int = 0
    finished: int = 0

    def figures(self, usage: Usage | None) -> dict[str, int]:
        """Ollama's final-object figures: token counts and durations in nanoseconds."""
        finished = self.finished or self.admitted or self.started
        admitted = self.admitted or finished
        first = self.first_token or finished
        return {
            "total_duration": finished - self.started,
            "load_duration": admitted - self.started,  # admission and routing: models stay loaded
            "prompt_eval_count": usage.prompt_tokens if usage else 0,
            "prompt_eval_duration": first - admitted,
            "eval_count": usage.completion_tokens if usage else 0,
            "eval_duration": finished - first,
        }


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


def _reply(
    chat: bool, model: str, created_at: str, text: str, done: bool, **extra
) -> ChatResponse | GenerateResponse:
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
    return _reply(
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
    return _reply(chat, model, rfc3339(now), "", True, done_reason="load")


class StreamedReply:
    """Generation events -> the NDJSON objects of a streamed reply, the figures on the last."""

    def __init__(
        self,
        chat: bool,
        model: str,
        timings: Timings,
        top_logprobs: int | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.chat = chat
        self.model = model
        self.timings = timings
        self.top_logprobs = top_logprobs
        self.wall = wall
        self.tool_calls: list[ToolCall] = []
        self.done = False

    def on_event(self, event: GenerationEvent) -> list[msgspec.Struct]:
        if isinstance(event, TokenDelta):
            return self._delta(event)
        self.done = True
        if isinstance(event, Finished):
            return self._finished(event)
        return [OllamaError(error=event.message)]

    def _delta(self, event: TokenDelta) -> list[msgspec.Struct]:
        calls = self._new_calls(event.tool_calls)
        logprobs = None
        if self.top_logprobs is not None and event.logprobs:
            logprobs = logprobs_out(event.logprobs, self.top_logprobs)
        if not event.text and not calls and logprobs is None:
            return []
        return [
            _reply(
                self.chat,
                self.model,
                rfc3339(self.wall()),
                event.text,
                False,
                tool_calls=calls or None,
                logprobs=logprobs,
            )
        ]

    def _finished(self, event: Finished) -> list[msgspec.Struct]:
        now = rfc3339(self.wall())
        out: list[msgspec.Struct] = []
        calls = self._new_calls(event.tool_calls)
        if calls:
            out.append(_reply(self.chat, self.model, now, "", False, tool_calls=calls))
        reason = done_reason(event.finish_reason)
        figures = self.timings.figures(event.usage)
        out.append(_reply(self.chat, self.model, now, "", True, done_reason=reason, **figures))
        return out

    def _new_calls(self, calls: list[ToolCall] | None) -> list[ToolCallOut]:
        first = len(self.tool_calls)
        return tool_calls_out(add_new_tool_calls(self.tool_calls, calls), first)
