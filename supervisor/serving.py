"""ClusterService: the GenerationService over supervised generation groups.

Admission (draining, unknown model, prompt size, queue limit), placement through the
router, and the waiting rule when no group is ready:

- some group serving the model is starting or restarting (not ``failed``, not leaving):
  wait for it, at most ``ready_wait`` seconds, then serve. A fault costs latency, not an
  error, while any replica can come back;
- every group has failed (restart intensity exhausted): 503 at once, Retry-After 30;
- the wait ran out: 503, Retry-After ``RESTART_RETRY_AFTER``.

A request that lost its group mid-stream is placed the same way, away from the groups
it lost while another group is alive, else back on the one it lost once that restarts.
Requests waiting for a group count against ``queue_limit`` as placed ones do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from typing import Protocol

import msgspec

from actors.protocol import GenerationRequest
from supervisor.events import RouteDecided, RouterDeclared
from supervisor.handle import ActorHandle
from supervisor.hostfile import RouterSpec
from supervisor.routed_stream import RoutedStream
from supervisor.router import (
    Ask,
    GroupLoad,
    Hardware,
    RouterBook,
    RouterConfig,
    choose_group,
    session_key,
)
from supervisor.service import (
    ContextLengthExceeded,
    ModelInfo,
    ModelNotFound,
    QueueFull,
    Unavailable,
)
from supervisor.state import ClusterState

FAILED_RETRY_AFTER = 30.0
RESTART_RETRY_AFTER = 5.0
DEFAULT_COOLDOWN = 5.0
# No tokenizer's tokens average more bytes than this over a whole prompt (English runs
# ~4, code ~3; the longest vocabulary entries are runs of spaces or punctuation). A prompt
# past context_length x this cannot fit: refused before an actor templates or tokenizes it.
BYTES_PER_TOKEN_CEILING = 64
READY_POLL = 0.05  # seconds between looks at a group that is ready but cannot take work
_NO_HARDWARE = Hardware()


class ServedGroup(Protocol):
    """What the service needs of a supervised generation group."""

    name: str
    model: str
    leader: ActorHandle | None
    failed: bool
    ready: asyncio.Event
    context_length: int
    hardware: Hardware
    leaving: bool  # being drained away: finishes its work, takes none


class ClusterService:
    def __init__(
        self,
        state: ClusterState,
        groups: list[ServedGroup],
        *,
        queue_limit: int,
        router: RouterSpec | None = None,
        ready_wait: float = 30.0,
        cooldown: float = DEFAULT_COOLDOWN,
        created: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._state = state
        self._groups = groups  # shared with the Cluster: groups may come and go at runtime
        self._queue_limit = queue_limit
        self._ready_wait = ready_wait
        self._created = created or int(time.time())
        self._clock = clock
        spec = router or RouterSpec()
        self._book = RouterBook(RouterConfig(spec.policy, spec.session_ttl, cooldown))
        self._owed: dict[str, int] = {}  # group -> tokens promised, not yet delivered
        self.waiting = 0  # admitted requests waiting for a group to become ready
        state.apply(RouterDeclared(spec.policy, spec.session_ttl, cooldown))

    def draining(self) -> bool:
        return self._state.draining

    def list_models(self) -> list[ModelInfo]:
        by_model: dict[str, list[ServedGroup]] = {}
        for group in self._groups:
            by_model.setdefault(group.model, []).append(group)
        return [
            ModelInfo(
                id=model,
                created=self._created,
                groups=[g.name for g in groups],
                context_length=max((g.context_length for g in groups), default=0),
                ready=any(g.leader is not None for g in groups),
            )
            for model, groups in by_model.items()
        ]

    async def submit(self, request: GenerationRequest) -> RoutedStream:
        if self._state.draining:
            raise Unavailable("the server is shutting down; retry on another server", retry_after=5)
        if not any(g.model == request.model for g in self._groups):
            known = ", ".join(sorted({g.model for g in self._groups}))
            raise ModelNotFound(
                f"model {request.model!r} is not served here; known: {known}", param="model"
            )
        self._check_size(request)
        admitted = self._state.in_flight + self.waiting
        if admitted >= self._queue_limit:
            raise QueueFull(
                f"{admitted} requests in flight or waiting for a group reach the queue limit "
                f"of {self._queue_limit}; retry shortly",
                retry_after=1,
            )
        self.waiting += 1
        try:
            group = await self.place(request)
        finally:
            self.waiting -= 1
        return RoutedStream(self, self._state, group, request)

    def _check_size(self, request: GenerationRequest) -> None:
        """Refuse a prompt too large for the model's context by its bytes, before any actor."""
        context = max(
            (g.context_length for g in self._groups if g.model == request.model), default=0
        )
        if not context:
            return  # no group has been ready yet: the actor's exact check decides
        size, limit = prompt_bytes(request), context * BYTES_PER_TOKEN_CEILING
        if size > limit:
            field = "messages" if request.messages is not None else "prompt"
            raise ContextLengthExceeded(
                f"{field}: {size} bytes of prompt text cannot fit the model's context of "
                f"{context} tokens (at most {limit} bytes, {BYTES_PER_TOKEN_CEILING} per "
                "token); shorten the prompt",
                param=field,
            )

    # ------------------------------------------------------------------ placement

    async def place(self, request: GenerationRequest, exclude: Collection[str] = ()) -> ServedGroup:
        """A ready group for ``request``, or Unavailable (see module doc).

        ``exclude`` (groups the request lost) is honoured while another group of the model
        is alive; when only lost ones are left, the request waits for one of them to restart.
        """
        policy = self._book.config.policy
        session = session_key(request) if policy == "sticky" else None
        deadline = self._clock() + self._ready_wait
        while True:
            alive = self._alive(request.model)
            avoid = frozenset(exclude) if any(g.name not in exclude for g in alive) else frozenset()
            ask = Ask(request.model, session, avoid)
            group = self._decide(ask)
            if group is not None:
                return group
            coming = [g for g in alive if g.name not in avoid]
            remaining = deadline - self._clock()
            if not coming or remaining <= 0:
                raise self._unavailable(ask, waited=bool(coming))
            await self._wait_ready(coming, min(remaining, 1.0))

    async def _wait_ready(self, groups: list[ServedGroup], timeout: float) -> None:
        """Until one of ``groups`` turns ready, at most ``timeout`` (a group may also fail)."""
        if all(g.ready.is_set() for g in groups):
            # Ready yet not chosen: its actor was lost a moment ago and the supervisor has
            # not cleared it yet. Poll rather than spin on the set events.
            await asyncio.sleep(min(timeout, READY_POLL))
            return
        waits = [asyncio.ensure_future(g.ready.wait()) for g in groups if not g.ready.is_set()]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when the client hangs up meanwhile
            for w in waits:
                w.cancel()

    def _decide(self, ask: Ask) -> ServedGroup | None:
        began = time.thread_time()  # CPU time: a busy host's preemptions are not the router's
        now = self._clock()
        serving = [g for g in self._groups if g.model == ask.model]
        free = self._free_memory() if self._book.config.policy == "hardware_aware" else None
        loads = [self._load(g, free) for g in serving]
        decision = choose_group(loads, ask, self._book.memory(), self._book.config, now)
        self._book.record(ask, decision, now)
        seconds = time.thread_time() - began
        self._state.apply(
            RouteDecided(decision.group, decision.reason, seconds, len(self._book.sessions))
        )
        return next((g for g in serving if g.name == decision.group), None)

    def _load(self, group: ServedGroup, free: dict[str, float] | None) -> GroupLoad:
        view = self._state.groups.get(group.name)
        leader = group.leader
        return GroupLoad(
            group.name,
            group.model,
            leader is not None and leader.is_open and not group.leaving,
            view.in_flight if view is not None else 0,
            self._owed.get(group.name, 0),
            _NO_HARDWARE if free is None else self._hardware(group, free),
        )

    def _free_memory(self) -> dict[str, float]:
        """Each node's fraction of memory available, from its memory reporter's vitals."""
        return {
            a.node: a.vitals.mem_available / a.vitals.mem_total
            for a in self._state.actors.values()
            if a.kind == "memory" and a.vitals.mem_total
        }

    def _hardware(self, group: ServedGroup, free: dict[str, float]) -> Hardware:
        """The hostfile's hints for ``group`` plus its nodes' lowest free memory."""
        hints: Hardware = getattr(group, "hardware", _NO_HARDWARE)
        view = self._state.groups.get(group.name)
        known = [free[n] for n in (view.nodes if view is not None else ()) if n in free]
        if not known:
            return hints
        return Hardware(hints.chip, hints.gpu_cores, hints.memory_gb, min(known))

    def _alive(self, model: str) -> list[ServedGroup]:
        """Groups of ``model`` that serve or may serve soon: not failed, leaving or stopped,
        nor ``waiting`` for a host that cannot be reached (that may take hours: a client
        told so at once beats one held for ``ready_wait``)."""
        out = []
        for g in self._groups:
            view = self._state.groups.get(g.name)
            if g.model != model or g.failed or g.leaving or view is None:
                continue
            if view.state not in ("failed", "stopped", "waiting"):
                out.append(g)
        return out

    def _unavailable(self, ask: Ask, waited: bool) -> Unavailable:
        model = repr(ask.model)
        left = [g for g in self._groups if g.model == ask.model and g.name not in ask.exclude]
        if not left:
            return Unavailable(
                f"no other group serves {model}; retry shortly", retry_after=RESTART_RETRY_AFTER
            )
        if all(g.failed for g in left):
            reasons = "; ".join(self._reason(g.name) for g in left)
            return Unavailable(
                f"every group serving {model} has failed ({reasons})",
                retry_after=FAILED_RETRY_AFTER,
            )
        if waited:
            return Unavailable(
                f"no group serving {model} became ready within {self._ready_wait:g} s; "
                "retry shortly",
                retry_after=RESTART_RETRY_AFTER,
            )
        states = ", ".join(f"{g.name} {self._reason(g.name)}" for g in left)
        return Unavailable(
            f"no group serving {model} is ready ({states}); retry shortly",
            retry_after=RESTART_RETRY_AFTER,
        )

    def _reason(self, group: str) -> str:
        view = self._state.groups.get(group)
        if view is None:
            return "unknown"
        return f"{view.state}: {view.reason}" if view.reason else view.state

    # ------------------------------------------------------------ stream callbacks

    def owe(self, group: str, tokens: int) -> None:
        """Change the tokens ``group`` still owes its requests (the router's queued tokens)."""
        left = self._owed.get(group, 0) + tokens
        if left > 0:
            self._owed[group] = left
        else:
            self._owed.pop(group, None)

    def forget_group(self, group: str) -> None:
        """A group that left the cluster: drop what the router remembers of it."""
        self._book.forget_group(group)
        self._owed.pop(group, None)

    def cool(self, group: str) -> None:
        """``group`` just lost a request: other requests pass it over for a while."""
        self._book.cool(group, self._clock())


def prompt_bytes(request: GenerationRequest) -> int:
    """UTF-8 bytes of the text a request's prompt is made of: messages, prompt, tools."""
    size = _text_bytes(request.prompt)
    for message in request.messages or ():
        size += _text_bytes(message.content)
        for call in message.tool_calls or ():
            size += _text_bytes(call.name) + _text_bytes(call.arguments)
    if request.tools:
        size += len(msgspec.json.encode(request.tools))
    return size


def _text_bytes(text: str | None) -> int:
    if not text:
        return 0
    return len(text) if text.isascii() else len(text.encode())
