"""Requests and cancels handed over by callers' threads, until the engine thread takes them.

A request enters the inbox with its prompt already templated and tokenized (``Prompted``),
by the caller's thread: a long prompt never stalls the engine thread, and so the batch.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Container
from dataclasses import dataclass, field

import msgspec

from actors.protocol.messages import GenerationRequest


class Prompted(msgspec.Struct, frozen=True):
    """A request and its rendered prompt's token ids (without ``resume_tokens``).

    Rank 0 of a group shares these, so the other ranks never render a prompt either.
    """

    request: GenerationRequest
    prompt: list[int]
    # (offset, kind) where prefill stores the KV cache on its way (cache.checkpoints)
    checkpoints: list[tuple[int, str]] = []

    @property
    def request_id(self) -> str:
        return self.request.request_id


@dataclass
class StepPlan:
    """Changes to the batch before the next step: what ranks of a group must agree on."""

    admit: list[Prompted] = field(default_factory=list)
    drop: list[Prompted] = field(default_factory=list)  # cancelled while queued
    cancel: list[str] = field(default_factory=list)  # running request ids to end as cancelled
    retire: list[int] = field(default_factory=list)  # uids already finished, still in the batch
    evict: list[int] = field(default_factory=list)  # prompt cache entries rank 0 evicted

    def __bool__(self) -> bool:
        return bool(self.admit or self.drop or self.cancel or self.retire or self.evict)


class Inbox:
    """A thread-safe queue of requests plus the cancels asked for since the last take."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queued: deque[Prompted] = deque()
        self._cancels: set[str] = set()
        self._closed = False
        self.wakeup = threading.Event()  # set on every put and cancel

    def put(self, request: Prompted) -> bool:
        """Queue a request; False once the inbox is closed (nobody will take it)."""
        with self._lock:
            if self._closed:
                return False
            self._queued.append(request)
        self.wakeup.set()
        return True

    def cancel(self, request_id: str) -> None:
        with self._lock:
            self._cancels.add(request_id)
        self.wakeup.set()

    def __len__(self) -> int:
        """Requests queued, not yet taken."""
        return len(self._queued)

    def pending(self) -> bool:
        """Whether a take would find anything."""
        return bool(self._queued or self._cancels)

    def take(self, room: int, running: Container[str]) -> StepPlan:
        """Up to ``room`` requests to admit, the queued ones cancelled, ``running`` ids cancelled.

        ``room`` counts the running requests cancelled here as gone already.
        """
        with self._lock:
            cancels, self._cancels = self._cancels, set()
            dropped: list[Prompted] = []
            cancelled: list[str] = []
            if cancels:
                dropped = [r for r in self._queued if r.request_id in cancels]
                self._queued = deque(r for r in self._queued if r.request_id not in cancels)
                cancelled = [rid for rid in cancels if rid in running]
            room += len(cancelled)
            admit = []
            while self._queued and len(admit) < room:
                admit.append(self._queued.popleft())
        return StepPlan(admit=admit, drop=dropped, cancel=cancelled)

    def close(self) -> list[Prompted]:
        """Refuse further requests; the ones still queued, for the caller to end."""
        with self._lock:
            self._closed = True
            queued, self._queued = list(self._queued), deque()
        return queued
