"""Generation events -> the NDJSON lines of a streamed Ollama reply, the figures on the last."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import anyio
import msgspec
import structlog

from actors.protocol.messages import Finished, GenerationEvent, TokenDelta, ToolCall
from api.edge.choices import add_new_tool_calls
from api.edge.error_shape import json_encoder
from api.ollama.protocol import OllamaError, ToolCallOut
from api.ollama.replies import done_reason, logprobs_out, reply_object, tool_calls_out
from api.ollama.timing import Timings, rfc3339

log = structlog.get_logger(__name__)


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
            reply_object(
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
            out.append(reply_object(self.chat, self.model, now, "", False, tool_calls=calls))
        figures = self.timings.figures(event.usage)
        reason = done_reason(event.finish_reason)
        last = reply_object(self.chat, self.model, now, "", True, done_reason=reason, **figures)
        out.append(last)
        return out

    def _new_calls(self, calls: list[ToolCall] | None) -> list[ToolCallOut]:
        first = len(self.tool_calls)
        return tool_calls_out(add_new_tool_calls(self.tool_calls, calls), first)


async def ndjson_lines(
    events: AsyncIterator[tuple[int, GenerationEvent]], request_id: str, reply: StreamedReply
) -> AsyncGenerator[bytes, None]:
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
