"""Tool calls in generated text: split ``<tool_call>…</tool_call>`` blocks from content, parse them.

The markers and the parser are the model's own, as mlx_lm picks them from the chat
template (``TokenizerWrapper.tool_call_start`` / ``tool_call_end`` / ``tool_parser``).
Text arrives in pieces as tokens are decoded; content is released as soon as it cannot
be the start of a marker, and a block becomes ``ToolCall``s when its end marker arrives.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from mlx_lm.tool_parsers import json_tools

from actors.protocol.messages import ToolCall

DEFAULT_MARKERS = (json_tools.tool_call_start, json_tools.tool_call_end)

ParseToolCall = Callable[[str, Any], Any]


def call_id(request_id: str, index: int) -> str:
    """``call_<24 hex>``: unpredictable across requests, stable for one request and call index.

    Stable so that a group resuming a request names the calls already streamed the same
    way, and the API layer (which dedups calls by id) does not send them twice.
    """
    digest = hashlib.sha256(f"{request_id}/{index}".encode()).hexdigest()
    return f"call_{digest[:24]}"


class ToolCallReader:
    """Splits decoded text into content and parsed tool calls, one request's worth.

    A block that does not parse into calls of declared functions stays content, markers
    included: nothing the model wrote is lost and nothing crashes. Whitespace-only runs
    are held back until it is known whether they border a call; whitespace next to calls
    is dropped, so a reply that only calls tools has no content.
    """

    def __init__(
        self,
        request_id: str,
        tools: list[dict[str, Any]],
        *,
        markers: tuple[str, str] = DEFAULT_MARKERS,
        parse: ParseToolCall | None = None,
        max_calls: int | None = None,
    ) -> None:
        self._request_id = request_id
        self._tools = tools
        self._names = {t["function"]["name"] for t in tools}
        self._start, self._end = markers
        self._parse = parse
        self._max_calls = max_calls
        self._buffer = ""  # text not classified yet: a partial marker, or an open block
        self._in_block = False
        self._gap = ""  # held whitespace-only content
        self._taken = 0
        self.calls: list[ToolCall] = []

    @property
    def done(self) -> bool:
        """No further call may be made (``parallel_tool_calls`` false and one was)."""
        return self._max_calls is not None and len(self.calls) >= self._max_calls

    @property
    def has_new_calls(self) -> bool:
        return len(self.calls) > self._taken

    def take_new_calls(self) -> list[ToolCall]:
        """Calls parsed since the last take."""
        new = self.calls[self._taken :]
        self._taken = len(self.calls)
        return new

    def replay(self, text: str) -> None:
        """Take output another group already sent: its content and calls are not sent again."""
        self.feed(text)
        self._taken = len(self.calls)

    def feed(self, text: str) -> str:
        """Take the next piece of text; returns the content that can be released now."""
        if self.done or not text:
            return ""
        self._buffer += text
        out: list[str] = []
        while not self.done:
            if self._in_block:
                end = self._buffer.find(self._end)
                if end < 0:
                    break
                body = self._buffer[:end]
                self._buffer = self._buffer[end + len(self._end) :]
                self._in_block = False
                self._settle_block(body, closed=True, out=out)
                continue
            start = self._buffer.find(self._start)
            if start < 0:
                keep = _marker_prefix_length(self._buffer, self._start)
                self._content(self._buffer[: len(self._buffer) - keep], out)
                self._buffer = self._buffer[len(self._buffer) - keep :]
                break
            self._content(self._buffer[:start], out)
            self._buffer = self._buffer[start + len(self._start) :]
            self._in_block = True
        if self.done:
            self._buffer = ""
        return "".join(out)

    def close(self) -> str:
        """The output has ended: the content still held back (an unfinished block included)."""
        out: list[str] = []
        if self._in_block:
            # Cut short (max_tokens, a stop string): a complete body still makes a call.
            self._settle_block(self._buffer, closed=False, out=out)
        elif self._buffer:
            self._content(self._buffer, out)
        self._buffer, self._in_block = "", False
        if not self.calls:
            out.append(self._gap)
        self._gap = ""
        return "".join(out)

    def _content(self, text: str, out: list[str]) -> None:
        if not text:
            return
        text = self._gap + text
        body = text.rstrip()
        if not body:
            self._gap = text
            return
        self._gap = text[len(body) :]
        out.append(body)

    def _settle_block(self, body: str, *, closed: bool, out: list[str]) -> None:
        calls = self._parsed(body)
        if calls is None:
            self._content(self._start + body + (self._end if closed else ""), out)
            return
        self._gap = ""  # whitespace between content and a call, or between calls
        if self._max_calls is not None:
            calls = calls[: self._max_calls - len(self.calls)]
        self.calls.extend(calls)

    def _parsed(self, body: str) -> list[ToolCall] | None:
        """The calls in one block, or None if it is not a well-formed call of declared tools."""
        items = None
        parsers = [p for p in (self._parse, json_tools.parse_tool_call) if p is not None]
        # The model's own parser first; then the JSON form that constrained decoding writes.
        for parse in parsers:
            try:
                items = parse(body, self._tools)
                break
            except Exception:  # noqa: BLE001, S112 - a parser rejecting a block is ordinary
                continue
        if items is None:
            return None
        calls = []
        for item in items if isinstance(items, list) else [items]:
            if not isinstance(item, dict) or item.get("name") not in self._names:
                return None
            arguments = _arguments_json(item.get("arguments", {}))
            if arguments is None:
                return None
            index = len(self.calls) + len(calls)
            calls.append(ToolCall(call_id(self._request_id, index), item["name"], arguments))
        return calls or None


def _arguments_json(arguments: Any) -> str | None:
    """OpenAI's ``arguments``: a JSON object as a string; None if it is not an object."""
    if isinstance(arguments, str):
        try:
            decoded = json.loads(arguments)
        except ValueError:
            return None
        return arguments if isinstance(decoded, dict) else None
    if not isinstance(arguments, dict):
        return None
    return json.dumps(arguments, ensure_ascii=False)


def _marker_prefix_length(text: str, marker: str) -> int:
    """Length of the longest tail of ``text`` that begins ``marker``."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0
