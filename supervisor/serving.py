"""ClusterService: the GenerationService over supervised generation groups."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Protocol

from actors.protocol import (
    Finished,
    GenerationEvent,
    GenerationFailed,
    GenerationRequest,
    Usage,
)
from supervisor.handle import ActorHandle
from supervisor.router import GroupLoad, choose_least_loaded
from supervisor.service import (
    GenerationStream,
    ModelInfo,
    ModelNotFound,
    QueueFull,
    Unavailable,
)
from supervisor.state import ClusterState, RequestEnded, RequestStarted


class ServedGroup(Protocol):
    """What the service needs of a supervised generation group."""

    name: str
    model: str
    leader: ActorHandle | None
    failed: bool
    ready: asyncio.Event
    context_length: int


class ClusterService:
    def __init__(
        self,
        state: ClusterState,
        groups: list[ServedGroup],
        *,
        queue_limit: int,
        ready_wait: float = 30.0,
        created: int | None = None,
    ):
        self._state = state
        self._groups = groups
        self._queue_limit = queue_limit
        self._ready_wait = ready_wait
        self._created = created or int(time.time())

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

    async def submit(self, request: GenerationRequest) -> GenerationStream:
        if self._state.draining:
            raise Unavailable("the server is shutting down; retry on another server", retry_after=5)
        serving = [g for g in self._groups if g.model == request.model]
        if not serving:
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
        group = await self._choose(serving, request.model)
        return RoutedStream(self._state, group, request)

    async def _choose(self, serving: list[ServedGroup], model: str) -> ServedGroup:
        deadline = time.monotonic() + self._ready_wait
        while True:
            group = self._pick(serving)
            if group is not None:
                return group
            alive = [g for g in serving if not g.failed]
            remaining = deadline - time.monotonic()
            if not alive:
                reasons = "; ".join(
                    self._state.groups[g.name].reason
                    for g in serving
                    if g.name in self._state.groups
                )
                raise Unavailable(
                    f"every group serving {model!r} has failed ({reasons})", retry_after=30
                )
            if remaining <= 0:
                raise Unavailable(
                    f"no group serving {model!r} is ready yet; retry shortly", retry_after=5
                )
            waits = [asyncio.ensure_future(g.ready.wait()) for g in alive]
            await asyncio.wait(
                waits, timeout=min(remaining, 1.0), return_when=asyncio.FIRST_COMPLETED
            )
            for w in waits:
                w.cancel()

    def _pick(self, serving: list[ServedGroup]) -> ServedGroup | None:
        loads = [
            GroupLoad(
                name=g.name,
                model=g.model,
                ready=g.leader is not None,
                in_flight=self._state.groups[g.name].in_flight
                if g.name in self._state.groups
                else 0,
            )
            for g in serving
        ]
        chosen = choose_least_loaded([g for g in loads if g.ready])
        if chosen is None:
            return None
        return next(g for g in serving if g.name == chosen.name)


class RoutedStream:
    """One request on one group's leader, accounted for in ClusterState exactly once."""

    def __init__(self, state: ClusterState, group: ServedGroup, request: GenerationRequest):
        self._state = state
        self._group = group
        self._request = request
        self.served_by = group.name
        self._ended = False
        self._gen = self._run()
        state.apply(RequestStarted(request.request_id, group.name, request.model))

    def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        return self._gen

    async def aclose(self) -> None:
        await self._gen.aclose()
        self._end("cancelled")

    async def _run(self) -> AsyncIterator[GenerationEvent]:
        outcome, usage, error = "cancelled", None, ""
        try:
            leader = self._group.leader
            if leader is None:
                outcome, error = "error", f"group {self._group.name} is not ready"
                yield GenerationFailed(self._request.request_id, error, retryable=True, status=503)
                return
            async for event in leader.stream(self._request):
                if isinstance(event, Finished):
                    outcome, usage = event.finish_reason, event.usage
                elif isinstance(event, GenerationFailed):
                    outcome, error = "error", event.message
                yield event
        finally:
            self._end(outcome, usage, error)

    def _end(self, outcome: str, usage: Usage | None = None, error: str = "") -> None:
        if self._ended:
            return
        self._ended = True
        self._state.apply(
            RequestEnded(
                self._request.request_id,
                self._group.name,
                outcome,
                completion_tokens=usage.completion_tokens if usage else 0,
                prompt_tokens=usage.prompt_tokens if usage else 0,
                error=error,
            )
        )
