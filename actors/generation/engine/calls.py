"""The caller side of the engine: what other threads call, and what they share with it.

``submit`` renders a request's prompt on the caller's thread and queues it in the
``Inbox``; ``cancel`` queues a cancel; ``vitals`` reads the counters. None of them waits
for compute, so an actor runtime keeps sending heartbeats while a long prompt prefills.
The engine thread (``actors.generation.engine.engine.Engine``, a subclass) takes from the inbox.
"""

from __future__ import annotations

import threading
from typing import Any

import structlog

from actors.generation.engine.inbox import Inbox
from actors.generation.engine.outbox import Outbox
from actors.generation.requests.admission import ModelFacts, render
from actors.protocol.messages import GenerationRequest

log = structlog.get_logger()

_COUNTERS = (
    "peak_batch_size",
    "progress",
    "tokens_generated",
    "prompt_tokens",  # prefilled, i.e. not served from the prompt cache
    "requests_done",
    "cache_hits",
)


class CallerSide:
    """Thread start and stop, request intake and the counters of an engine."""

    def __init__(self, facts: ModelFacts, out: Outbox) -> None:
        self._facts = facts
        self._out = out
        # Shared with callers' threads: the inbox, and the counters under _lock.
        self._inbox = Inbox()
        self._wakeup = self._inbox.wakeup
        self._lock = threading.Lock()
        self._counters = dict.fromkeys(_COUNTERS, 0)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._active: dict[str, Any] = {}  # request id: Sequence (engine thread writes)

    def start(self) -> None:
        """Start the engine thread."""
        if self._thread is not None:
            raise RuntimeError("engine already started")
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread; requests still running end with a retryable GenerationFailed."""
        self._stopping.set()
        self._wakeup.set()
        if self._thread is None:
            self._fail_all("engine stopped")  # never started: no MLX state to release
        else:
            self._thread.join(timeout)

    def submit(self, request: GenerationRequest) -> None:
        """Render and queue a request; its events arrive through ``emit``.

        The prompt is templated and tokenized here, on the caller's thread: a long one
        costs its sender time, not the batch (and one past the context never queues).
        """
        if self._stopping.is_set():
            self._out.failed(request.request_id, "engine is stopped", 503, retryable=True)
            return
        try:
            prompted = render(request, self._facts)
        except Exception as error:  # the request's own fault: template, length
            self._reject(request.request_id, error)
            return
        if not self._inbox.put(prompted):
            self._out.failed(request.request_id, "engine is stopped", 503, retryable=True)

    def cancel(self, request_id: str) -> None:
        """End a request as "cancelled" at the next step; unknown ids are ignored."""
        self._inbox.cancel(request_id)

    def vitals(self) -> dict[str, int]:
        """Fields of ``Vitals`` (protocol); ``progress`` moves per prefill chunk and token."""
        with self._lock:
            return {
                **self._counters,
                "active_requests": len(self._active),
                "queued_requests": len(self._inbox),
                **self._engine_vitals(),
            }

    def _engine_vitals(self) -> dict[str, int]:
        """The engine thread's own figures (batch, cache)."""
        return {}

    def _run(self) -> None:
        raise NotImplementedError

    def _fail_all(self, message: str) -> None:
        raise NotImplementedError

    def _reject(self, request_id: str, error: Exception) -> None:
        """A request refused for its own fault: a 400 saying why (any thread)."""
        log.info("request_rejected", request_id=request_id, error=str(error))
        code = getattr(error, "code", "")
        self._out.failed(request_id, str(error) or repr(error), 400, code=code)
        self._count(requests_done=1)

    def _count(self, **increments: int) -> None:
        with self._lock:
            for name, n in increments.items():
                self._counters[name] += n
