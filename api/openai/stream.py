"""Generation events -> OpenAI server-sent-event chunks, one assembler per streamed response.

Pure bookkeeping: an assembler is fed ``(choice index, event)`` pairs and hands back the
SSE frames to write; ``sse_frames`` turns them into the body of the response.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import anyio
import structlog

from actors.protocol.messages import (
    Finished,
    GenerationEvent,
    GenerationFailed,
    TokenDelta,
    ToolCall,
    Usage,
)
from api.edge.choices import add_new_tool_calls
from api.edge.error_shape import error_body, json_encoder
from api.openai.protocol import (
    ChatChunkChoice,
    ChatCompletionChunk,
    CompletionChoice,
    CompletionResponse,
    DeltaMessage,
    DeltaToolCall,
    FunctionCallOut,
    UsageInfo,
)
from api.openai.replies import chat_logprobs, completion_logprobs, finish_reason, total_usage

log = structlog.get_logger(__name__)

DONE = b"data: [DONE]\n\n"


def sse(payload: object) -> bytes:
    return b"data: " + json_encoder.encode(payload) + b"\n\n"


class StreamAssembler:
    """Shared bookkeeping: which choices finished, their usage, the closing frames."""

    def __init__(
        self,
        response_id: str,
        model: str,
        created: int,
        n: int,
        *,
        top_logprobs: int | None = None,
        include_usage: bool = False,
    ) -> None:
        self.response_id = response_id
        self.model = model
        self.created = created
        self.n = n
        self.top_logprobs = top_logprobs
        self.include_usage = include_usage
        self.usages: dict[int, Usage] = {}
        self.failed = False
        self.tool_calls: list[list[ToolCall]] = [[] for _ in range(n)]  # sent so far, per choice
        self.offsets = [0] * n  # text sent so far per choice, for legacy logprob offsets

    @property
    def done(self) -> bool:
        return self.failed or len(self.usages) == self.n

    def opening(self) -> list[bytes]:
        return []

    def on_event(self, index: int, event: GenerationEvent) -> list[bytes]:
        if isinstance(event, TokenDelta):
            return self._delta(index, event)
        if isinstance(event, Finished):
            self.usages[index] = event.usage
            return self._finished(index, event)
        self.failed = True
        return self.failure(event)

    def failure(self, event: GenerationFailed) -> list[bytes]:
        """An error after the response started: an OpenAI error as a data event, then DONE."""
        code = event.code or "generation_failed"
        return [sse(error_body(event.status, event.message, code=code)), DONE]

    def closing(self) -> list[bytes]:
        frames = []
        if self.include_usage:
            usage = total_usage([self.usages[i] for i in sorted(self.usages)])
            frames.append(sse(self._usage_chunk(usage)))
        return [*frames, DONE]

    def _delta(self, index: int, event: TokenDelta) -> list[bytes]:
        raise NotImplementedError

    def _finished(self, index: int, event: Finished) -> list[bytes]:
        raise NotImplementedError

    def _usage_chunk(self, usage: UsageInfo) -> object:
        raise NotImplementedError


class ChatStreamAssembler(StreamAssembler):
    """``chat.completion.chunk`` frames; each choice opens with ``role: assistant``."""

    def opening(self) -> list[bytes]:
        return [
            self._chunk(ChatChunkChoice(i, DeltaMessage(role="assistant", content="")))
            for i in range(self.n)
        ]

    def _delta(self, index: int, event: TokenDelta) -> list[bytes]:
        calls = self._new_calls(index, event.tool_calls)
        logprobs = None
        if self.top_logprobs is not None and event.logprobs:
            logprobs = chat_logprobs(event.logprobs, self.top_logprobs)
        if not event.text and not calls and logprobs is None:
            return []
        delta = DeltaMessage(content=event.text or None, tool_calls=calls or None)
        return [self._chunk(ChatChunkChoice(index, delta, logprobs))]

    def _finished(self, index: int, event: Finished) -> list[bytes]:
        frames = []
        calls = self._new_calls(index, event.tool_calls)
        if calls:
            frames.append(self._chunk(ChatChunkChoice(index, DeltaMessage(tool_calls=calls))))
        reason = finish_reason(event.finish_reason, bool(self.tool_calls[index]))
        frames.append(self._chunk(ChatChunkChoice(index, DeltaMessage(), None, reason)))
        return frames

    def _new_calls(self, index: int, calls: list[ToolCall] | None) -> list[DeltaToolCall]:
        seen = self.tool_calls[index]
        first = len(seen)
        return [
            DeltaToolCall(first + k, c.id, FunctionCallOut(c.name, c.arguments))
            for k, c in enumerate(add_new_tool_calls(seen, calls))
        ]

    def _chunk(self, choice: ChatChunkChoice) -> bytes:
        return sse(ChatCompletionChunk(self.response_id, self.created, self.model, [choice]))

    def _usage_chunk(self, usage: UsageInfo) -> object:
        return ChatCompletionChunk(self.response_id, self.created, self.model, [], usage=usage)


class CompletionStreamAssembler(StreamAssembler):
    """``text_completion`` frames, logprobs in the legacy shape with running text offsets."""

    def _delta(self, index: int, event: TokenDelta) -> list[bytes]:
        logprobs = None
        if self.top_logprobs is not None and event.logprobs:
            logprobs = completion_logprobs(event.logprobs, self.top_logprobs, self.offsets[index])
        self.offsets[index] += len(event.text)
        if not event.text and logprobs is None:
            return []
        return [self._chunk(CompletionChoice(index, event.text, logprobs))]

    def _finished(self, index: int, event: Finished) -> list[bytes]:
        reason = finish_reason(event.finish_reason, False)
        return [self._chunk(CompletionChoice(index, "", None, reason))]

    def _chunk(self, choice: CompletionChoice) -> bytes:
        return sse(CompletionResponse(self.response_id, self.created, self.model, [choice]))

    def _usage_chunk(self, usage: UsageInfo) -> object:
        return CompletionResponse(self.response_id, self.created, self.model, [], usage=usage)


async def sse_frames(
    events: AsyncIterator[tuple[int, GenerationEvent]],
    request_ids: Sequence[str],
    assembler: StreamAssembler,
) -> AsyncIterator[bytes]:
    """The body of a streamed response; closing it (or cancelling it) closes every stream."""
    try:
        for frame in assembler.opening():
            yield frame
        async for index, event in events:
            for frame in assembler.on_event(index, event):
                yield frame
            if assembler.done:
                break
        if not assembler.failed:
            for frame in assembler.closing():
                yield frame
    except Exception:
        # Headers are gone already: the error can only travel as an event.
        log.exception("api.stream_error", request_id=request_ids[0])
        yield sse(error_body(500, "internal error while streaming; see the supervisor log"))
        yield DONE
    finally:
        with anyio.CancelScope(shield=True):
            await events.aclose()
