"""RoutedStream: one request's events, carried across groups when a group is lost.

A group that fails a request with a retryable GenerationFailed (its actor was
lost, its engine stopped) is replaced, invisibly to the client: the request goes
to another group of the same model with ``resume_tokens`` = every token id
already yielded, and that group's deltas and Finished continue the stream (its
usage counts the resumed tokens as completion tokens, so usage counts once).
A failure that is the request's own (``retryable=False``) ends the stream as is.
Placement may wait for a restarting group, the lost one included when no other group
is alive (``ClusterService.place``); a request is placed at most ``MAX_PLACEMENTS`` times.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Collection
from typing import TYPE_CHECKING, Protocol

import msgspec
import structlog

from actors.protocol import (
    Finished,
    GenerationEvent,
    GenerationFailed,
    GenerationRequest,
    TokenDelta,
    Usage,
)
from supervisor.events import RequestEnded, RequestMoved, RequestStarted
from supervisor.service import ServiceError
from supervisor.state import ClusterState

if TYPE_CHECKING:
    from supervisor.serving import ServedGroup

log = structlog.get_logger()

# tokens a request without max_tokens is assumed to owe, for the router's queued tokens
DEFAULT_BUDGET = 512
# Placements of one request (the first and its failovers). A request may go back to the
# group it lost once that restarts, so without a bound one whose own content fails every
# group it reaches (a retryable step failure) would loop.
MAX_PLACEMENTS = 4


class Placement(Protocol):
    """The service side a stream needs: another group, and the router's bookkeeping."""

    async def place(
        self, request: GenerationRequest, exclude: Collection[str] = ()
    ) -> ServedGroup: ...

    def owe(self, group: str, tokens: int) -> None: ...

    def cool(self, group: str) -> None: ...


class RoutedStream:
    """One request on a group's leader, accounted for in ClusterState exactly once.

    ``served_by`` is the group chosen at submit; ``groups`` lists every group that
    served the request, in order, once it has failed over.
    """

    def __init__(
        self,
        placement: Placement,
        state: ClusterState,
        group: ServedGroup,
        request: GenerationRequest,
    ):
        self._placement = placement
        self._state = state
        self._group = group
        self._request = request
        self.served_by = group.name
        self.groups = [group.name]
        self._sent: list[int] = []  # token ids yielded to the client
        self._credited = 0  # of those, tokens credited to groups already left
        self._owed = 0  # tokens the current group still owes (router's queued tokens)
        self._ended = False
        self._gen = self._run()
        state.apply(RequestStarted(request.request_id, group.name, request.model))
        self._promise()

    def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        return self._gen

    async def aclose(self) -> None:
        await self._gen.aclose()
        self._end("cancelled")

    async def _run(self) -> AsyncIterator[GenerationEvent]:
        outcome, usage, error = "cancelled", None, ""
        try:
            while True:
                lost: GenerationFailed | None = None
                async with contextlib.aclosing(self._attempt()) as events:
                    async for event in events:
                        if isinstance(event, GenerationFailed) and event.retryable:
                            lost = event  # the group's fault: keep the client's stream going
                            continue
                        if isinstance(event, TokenDelta):
                            self._sent.extend(event.token_ids)
                            self._deliver(len(event.token_ids))
                        elif isinstance(event, Finished):
                            outcome, usage = event.finish_reason, event.usage
                        elif isinstance(event, GenerationFailed):
                            outcome, error = "error", event.message
                        yield event
                if lost is None:
                    return
                failure = await self._fail_over(lost)
                if failure is not None:
                    outcome, error = "error", failure.message
                    yield failure
                    return
        finally:
            self._end(outcome, usage, error)

    def _attempt(self) -> AsyncIterator[GenerationEvent]:
        """The current group's events for the request, resumed from the tokens already sent."""
        leader = self._group.leader
        if leader is None or not leader.is_open:
            return _one(self._lost_event(f"group {self._group.name} is not ready"))
        request = self._request
        if self._sent:
            resume = list(request.resume_tokens) + self._sent
            request = msgspec.structs.replace(request, resume_tokens=resume)
        return leader.stream(request)

    async def _fail_over(self, lost: GenerationFailed) -> GenerationFailed | None:
        """Move to another group of the model; the failure to report if there is none."""
        old = self._group.name
        self._placement.cool(old)
        if len(self.groups) >= MAX_PLACEMENTS:
            return self._lost_event(
                f"{lost.message}; given up after {len(self.groups)} placements "
                f"({', '.join(self.groups)}), each lost"
            )
        try:
            group = await self._placement.place(self._request, exclude=self.groups)
        except ServiceError as exc:
            log.warning(
                "request_failover_impossible",
                request_id=self._request.request_id,
                group=old,
                reason=lost.message,
                error=exc.message,
            )
            return self._lost_event(f"{lost.message}; {exc.message}")
        self._placement.owe(old, -self._owed)
        moved = len(self._sent) - self._credited
        self._state.apply(RequestMoved(self._request.request_id, old, group.name, moved))
        self._credited = len(self._sent)
        self._group = group
        self.groups.append(group.name)
        self._promise()
        log.info(
            "request_failover",
            request_id=self._request.request_id,
            from_group=old,
            to_group=group.name,
            tokens_sent=len(self._sent),
            reason=lost.message,
        )
        return None

    def _lost_event(self, message: str) -> GenerationFailed:
        return GenerationFailed(self._request.request_id, message, retryable=True, status=503)

    def _promise(self) -> None:
        budget = self._request.max_tokens or DEFAULT_BUDGET
        self._owed = max(0, budget - len(self._request.resume_tokens) - len(self._sent))
        self._placement.owe(self._group.name, self._owed)

    def _deliver(self, tokens: int) -> None:
        tokens = min(tokens, self._owed)
        self._owed -= tokens
        self._placement.owe(self._group.name, -tokens)

    def _end(self, outcome: str, usage: Usage | None = None, error: str = "") -> None:
        if self._ended:
            return
        self._ended = True
        self._placement.owe(self._group.name, -self._owed)
        self._owed = 0
        self._state.apply(
            RequestEnded(
                self._request.request_id,
                self._group.name,
                outcome,
                completion_tokens=usage.completion_tokens if usage else len(self._sent),
                prompt_tokens=usage.prompt_tokens if usage else 0,
                error=error,
                groups=tuple(self.groups),
                resumed_tokens=self._credited,
            )
        )


async def _one(event: GenerationEvent) -> AsyncIterator[GenerationEvent]:
    yield event
