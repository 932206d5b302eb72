"""What one choice's generation events add up to, in neither dialect's words.

Both dialects collect a non-streamed choice into a ``ChoiceResult`` and count the tool
calls a stream has sent with ``add_new_tool_calls``; each then words the result its own way.
"""

from __future__ import annotations

from actors.protocol.messages import (
    Finished,
    GenerationEvent,
    GenerationFailed,
    TokenDelta,
    TokenLogprob,
    ToolCall,
    Usage,
)


class ChoiceResult:
    """What one choice's event stream adds up to; ``finish_reason`` is the engine's own."""

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
            self.finish_reason = event.finish_reason
        else:
            self.failure = event


def add_new_tool_calls(seen: list[ToolCall], calls: list[ToolCall] | None) -> list[ToolCall]:
    """Append calls not seen yet (by id) and return them: Finished may repeat streamed ones."""
    known = {c.id for c in seen}
    new = [c for c in calls or () if c.id not in known]
    seen.extend(new)
    return new
