"""What leaves the engine for a sequence: its tokens as coalesced deltas, then its end.

Engine thread only, apart from ``emit``'s callee. A token first goes through the
sequence's ``Output`` (detokenizing, stop strings, tool calls); what it releases is
sent as a ``TokenDelta`` at most once per coalescing interval, the first at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from actors.generation.requests.admission import Sequence
from actors.generation.requests.sampling import token_logprob
from actors.protocol.messages import Finished, GenerationEvent, GenerationFailed, TokenDelta

log = structlog.get_logger()

Emit = Callable[[GenerationEvent], None]


class Outbox:
    """Turns one engine's sequences' tokens into events and sends them through ``emit``."""

    def __init__(self, emit: Emit, tokenizer: Any, coalesce_ms: float) -> None:
        self._emit_fn = emit
        self._tokenizer = tokenizer
        self._coalesce_s = coalesce_ms / 1000.0

    def token(
        self, seq: Sequence, token: int, logprobs: Any, *, eos: bool, at_length: bool
    ) -> str | None:
        """Add one sampled token to the sequence's output; the finish reason if it ends there."""
        seq.generated += 1
        if eos:
            seq.output.finish()
            return "stop"
        logprob = None
        if seq.wants_logprobs:
            logprob = token_logprob(logprobs, token, seq.request.top_logprobs, self._decode)
        if seq.output.add(token, logprob):
            return "stop"
        if at_length:
            return "stop" if seq.output.finish() else "length"
        return None

    def flush_due(self, seqs: Iterable[Sequence]) -> None:
        """Send what each sequence has gathered once its interval has passed."""
        now = time.monotonic()
        for seq in seqs:
            if seq.output.pending and now - seq.last_emit >= self._coalesce_s:
                self._flush(seq, now)

    def finished(self, seq: Sequence, reason: str) -> None:
        """The sequence's last text, then its end (a grammar it broke makes that a failure)."""
        seq.output.close()
        if seq.constraint is not None and seq.constraint.error is not None:
            # The mask forced an early EOS: the output does not follow the grammar.
            message = f"constrained decoding failed: {seq.constraint.error}"
            self.failed(seq.request_id, message, 500)
            return
        self._flush(seq, time.monotonic())
        calls = seq.output.tool_calls
        if calls and reason == "stop":
            reason = "tool_calls"
        self.emit(Finished(seq.request_id, reason, seq.usage(), tool_calls=calls or None))

    def failed(
        self, request_id: str, message: str, status: int, retryable: bool = False, code: str = ""
    ) -> None:
        self.emit(
            GenerationFailed(request_id, message, retryable=retryable, status=status, code=code)
        )

    def emit(self, event: GenerationEvent) -> None:
        try:
            self._emit_fn(event)
        except Exception:
            log.exception("emit_failed", request_id=event.request_id)

    def _flush(self, seq: Sequence, now: float) -> None:
        if not seq.output.pending:
            return
        text, token_ids, logprobs, calls = seq.output.take()
        self.emit(
            TokenDelta(
                request_id=seq.request_id,
                text=text,
                token_ids=token_ids,
                logprobs=logprobs if seq.wants_logprobs else None,
                tool_calls=calls or None,
            )
        )
        seq.last_emit = now

    def _decode(self, token: int) -> str:
        return self._tokenizer.decode([token])
