"""When a request's milestones happened, as Ollama reports them: durations in ns, RFC 3339.

The HTTP edge stamps ``Timings`` (``TimedStream`` stamps the first token and the end);
the last reply object carries the figures.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from actors.protocol.messages import Finished, GenerationEvent, GenerationFailed, TokenDelta, Usage
from supervisor.serving.contract import GenerationStream


def rfc3339(timestamp: float) -> str:
    """Unix seconds as Ollama writes times: RFC 3339 in UTC with a ``Z``."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


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


class TimedStream:
    """A GenerationStream that stamps the first token and the end on ``timings``."""

    def __init__(self, stream: GenerationStream, timings: Timings) -> None:
        self._stream = stream
        self.timings = timings
        self.served_by = stream.served_by

    async def _events(self) -> AsyncIterator[GenerationEvent]:
        async for event in self._stream:
            if isinstance(event, TokenDelta):
                self.timings.first_token = self.timings.first_token or time.monotonic_ns()
            elif isinstance(event, Finished | GenerationFailed):
                self.timings.finished = time.monotonic_ns()
            yield event

    def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        return self._events()

    async def aclose(self) -> None:
        await self._stream.aclose()
