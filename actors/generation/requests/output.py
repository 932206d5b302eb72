"""A request's decoded output: incremental detokenizing, stop strings cut, prefixes held."""

from __future__ import annotations

from mlx_lm.tokenizer_utils import StreamingDetokenizer

from actors.generation.requests.tool_calls import ToolCallReader
from actors.protocol.messages import TokenLogprob, ToolCall


class Output:
    """A request's decoded text: incremental, with stop strings cut and their prefixes held.

    Text is released a whole token at a time, so the ids sent with a piece of text
    are exactly the tokens that produced it; a group resuming from those ids then
    continues the same text. With a ``ToolCallReader``, released text is split into
    content and tool calls; the ids of a call's tokens are released all the same.
    """

    def __init__(
        self,
        detokenizer: StreamingDetokenizer,
        stop: list[str],
        primer: list[int],
        tool_calls: ToolCallReader | None = None,
    ):
        self._detokenizer = detokenizer
        for token in primer:
            detokenizer.add_token(token)
        sent = detokenizer.last_segment  # the primer's text reached the client from another group
        self._reader = tool_calls
        if tool_calls is not None:
            tool_calls.replay(sent)
        self._stops = [s for s in stop if s]
        self._held: list[tuple[int | None, str, TokenLogprob | None]] = []
        self._text: list[str] = []
        self._token_ids: list[int] = []
        self._logprobs: list[TokenLogprob] = []
        self._closed = False
        # A resumed output may already hold its one allowed call: nothing more is wanted.
        self.stopped = tool_calls is not None and tool_calls.done

    def add(self, token: int, logprob: TokenLogprob | None) -> bool:
        """Take one sampled token; True once a stop string (or the last allowed call) appeared."""
        self._detokenizer.add_token(token)
        text = self._detokenizer.last_segment
        if self._stops or self.stopped:
            return self._push(token, text, logprob, final=False)
        # No stop strings: nothing is ever held, so skip the bookkeeping (this runs per token).
        self._token_ids.append(token)
        if logprob is not None:
            self._logprobs.append(logprob)
        self._add_text(text)
        return self.stopped

    def finish(self) -> bool:
        """Release everything (the text can no longer grow into a stop string)."""
        self._detokenizer.finalize()
        return self._push(None, self._detokenizer.last_segment, None, final=True)

    def close(self) -> None:
        """The output has ended: settle any tool-call block still open (idempotent)."""
        if self._reader is not None and not self._closed:
            self._text.append(self._reader.close())
        self._closed = True

    @property
    def tool_calls(self) -> list[ToolCall]:
        """Every call parsed so far, the resumed part of the output included."""
        return self._reader.calls if self._reader is not None else []

    @property
    def pending(self) -> bool:
        return bool(
            self._text
            or self._token_ids
            or (self._reader is not None and self._reader.has_new_calls)
        )

    def take(self) -> tuple[str, list[int], list[TokenLogprob], list[ToolCall]]:
        """The released output not yet emitted (content, ids, logprobs, new calls), cleared."""
        calls = self._reader.take_new_calls() if self._reader is not None else []
        out = ("".join(self._text), self._token_ids, self._logprobs, calls)
        self._text, self._token_ids, self._logprobs = [], [], []
        return out

    def _add_text(self, text: str) -> None:
        if self._reader is None:
            self._text.append(text)
            return
        self._text.append(self._reader.feed(text))
        if self._reader.done:
            self.stopped = True  # parallel_tool_calls=false: the one call is complete

    def _push(
        self, token: int | None, text: str, logprob: TokenLogprob | None, final: bool
    ) -> bool:
        if self.stopped:
            return True
        self._held.append((token, text, logprob))
        if not self._stops:
            self._release(len(self._held), None)
            return self.stopped
        held = "".join(piece[1] for piece in self._held)
        cut = _find_stop(held, self._stops)
        if cut is not None:
            self._release_until(cut)
            self.stopped = True
            return True
        safe = len(held) if final else len(held) - _partial_stop_length(held, self._stops)
        end = count = 0
        for _, piece, _ in self._held:
            if end + len(piece) > safe:
                break
            end += len(piece)
            count += 1
        self._release(count, None)
        return self.stopped

    def _release_until(self, cut: int) -> None:
        """Release the text before a stop string and the tokens that wrote it."""
        start = count = 0
        for _, piece, _ in self._held:
            if start >= cut:
                break
            start += len(piece)
            count += 1
        self._release(count, cut)
        self._held.clear()

    def _release(self, count: int, cut: int | None) -> None:
        released, self._held = self._held[:count], self._held[count:]
        text = "".join(piece for _, piece, _ in released)
        for token, _, logprob in released:
            if token is not None:
                self._token_ids.append(token)
                if logprob is not None:
                    self._logprobs.append(logprob)
        self._add_text(text if cut is None else text[:cut])


def _find_stop(text: str, stops: list[str]) -> int | None:
    """Index of the earliest stop string in ``text``."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _partial_stop_length(text: str, stops: list[str]) -> int:
    """Length of the longest tail of ``text`` that begins some stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(text), len(stop) - 1), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest
