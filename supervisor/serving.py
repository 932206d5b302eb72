"""ClusterService: the GenerationService over supervised generation groups.

Admission (draining, unknown model, queue limit), placement through the router,
and the waiting rule when no group is ready:

- some group serving the model is starting for the first time (the cluster is
  coming up): wait for it, at most ``ready_wait`` seconds;
- every group has failed (restart intensity exhausted): 503 at once, Retry-After 30;
- otherwise (groups restarting after a crash, or only lost ones left): 503 at once,
  Retry-After ``RESTART_RETRY_AFTER``. A restart takes a model load, and a client
  told to come back beats one held for an unknown time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from typing import Protocol

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
    ModelInfo,
    ModelNotFound,
    QueueFull,
    Unavailable,
)
from supervisor.state import ClusterState

FAILED_RETRY_AFTER = 30.0
RESTART_RETRY_AFTER = 5.0
DEFAULT_COOLDOWN = 5.0
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
        if self._state.in_flight >= self._queue_limit:
            raise QueueFull(
                f"{self._state.in_flight} requests in flight reach the queue limit "
                f"of {self._queue_limit}; retry shortly",
                retry_after=1,
            )
        group = await self.place(request)
        return RoutedStream(self, self._state, group, request)

    # ------------------------------------------------------------------ placement

    async def place(self, request: GenerationRequest, exclude: Collection[str] = ()) -> ServedGroup:
        """A ready group for ``request`` (none of ``exclude``), or Unavailable (see module doc)."""
        policy = self._book.config.policy
        ask = Ask(
            request.model,
            session_key(request) if policy == "sticky" else None,
            frozenset(exclude),
        )
        deadline = self._clock() + self._ready_wait
        while True:
            group = self._decide(ask)
            if group is not None:
                return group
            coming = self._first_starts(ask)
            remaining = deadline - self._clock()
            if not coming or remaining <= 0:
                raise self._unavailable(ask, waited=bool(coming))
            waits = [asyncio.ensure_future(g.ready.wait()) for g in coming]
            try:
                await asyncio.wait(
                    waits, timeout=min(remaining, 1.0), return_when=asyncio.FIRST_COMPLETED
                )
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

    def _first_starts(self, ask: Ask) -> list[ServedGroup]:
        """Groups of the model still starting for the first time: worth waiting for."""
        out = []
        for g in self._groups:
            view = self._state.groups.get(g.name)
            if (
                g.model != ask.model
                or g.name in ask.exclude
                or g.failed
                or g.leaving
                or view is None
            ):
                continue
            if view.state == "starting" and view.restarts == 0:
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
