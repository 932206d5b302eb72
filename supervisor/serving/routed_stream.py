"""RoutedStream: one request's events, carried across groups when a group is lost.

A group that fails a request with a retryable GenerationFailed (its actor was
lost, its engine stopped) is replaced, invisibly to the client: the request goes
to another group of the same model with ``resume_tokens`` = every token id
already yielded, and that group's deltas and Finished continue the stream (its
usage counts the resumed tokens as completion tokens, so usage counts once).
A failure that is the request's own (``retryable=False``) ends the stream as is.
Placement may wait for a restarting group, the lost one included when no other group
is alive (``ClusterService.place``); a request is placed at most ``MAX_PLACEMENTS`` times.

Its accounting is ClusterState's: the stream says what happened (started on a group owing
so many tokens, delivered tokens, moved, ended) and the state counts, once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import msgspec
import structlog

from actors.protocol.messages import (
    Finished,
    GenerationEvent,
    GenerationFailed,
    GenerationRequest,
    TokenDelta,
    Usage,
)
from supervisor.serving.contract import ServiceError
from supervisor.serving.placement import Placement, ServedGroup
from supervisor.state import ClusterState
from supervisor.state.events import RequestEnded, RequestMoved, RequestStarted, TokensDelivered
from supervisor.state.views import RequestStatus

log = structlog.get_logger()

# tokens a request without max_tokens is assumed to owe, for the router's queued tokens
DEFAULT_BUDGET = 512
# Placements of one request (the first and its failovers). A request may go back to the
# group it lost once that restarts, so without a bound one whose own content fails every
# group it reaches (a retryable step failure) would loop.
MAX_PLACEMENTS = 4


class RoutedStream:
    """One request on a group's leader, accounted for in ClusterState exactly once.

    ``served_by`` is the group chosen at submit; the groups that served it since, in
    order, are the state's (``ClusterState.running``).
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
        self._sent: list[int] = []  # token ids yielded to the client: a failover resumes them
        self._ended = False
        self._gen = self._run()
        state.apply(RequestStarted(request.request_id, group.name, request.model, self._owed()))

    def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        return self._gen

    async def aclose(self) -> None:
        await self._gen.aclose()
        self._end("cancelled")

    async def _run(self) -> AsyncIterator[GenerationEvent]:
        status, finish_reason, usage, error = "cancelled", "", None, ""
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
                            rid = self._request.request_id
                            self._state.apply(TokensDelivered(rid, len(event.token_ids)))
                        elif isinstance(event, Finished):
                            finish_reason, usage = event.finish_reason, event.usage
                            status = "cancelled" if finish_reason == "cancelled" else "ok"
                        elif isinstance(event, GenerationFailed):
                            status, error = "error", event.message
                        yield event
                if lost is None:
                    return
                failure = await self._fail_over(lost)
                if failure is not None:
                    status, error = "error", failure.message
                    yield failure
                    return
        finally:
            self._end(status, finish_reason, usage, error)

    def _attempt(self) -> AsyncIterator[GenerationEvent]:
        """The current group's events for the request, resumed from the tokens already sent."""
        leader = self._placement.leader(self._group)
        if leader is None:
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
        placed = self._state.running[self._request.request_id].groups
        if len(placed) >= MAX_PLACEMENTS:
            return self._lost_event(
                f"{lost.message}; given up after {len(placed)} placements "
                f"({', '.join(placed)}), each lost"
            )
        try:
            group = await self._placement.place(self._request, exclude=placed)
        except ServiceError as exc:
            log.warning(
                "request_failover_impossible",
                request_id=self._request.request_id,
                group=old,
                reason=lost.message,
                error=exc.message,
            )
            return self._lost_event(f"{lost.message}; {exc.message}")
        self._state.apply(RequestMoved(self._request.request_id, old, group.name, self._owed()))
        self._group = group
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

    def _owed(self) -> int:
        """Tokens a group placed now promises the request: its budget, less those given."""
        budget = self._request.max_tokens or DEFAULT_BUDGET
        return max(0, budget - len(self._request.resume_tokens) - len(self._sent))

    def _end(
        self,
        status: RequestStatus,
        finish_reason: str = "",
        usage: Usage | None = None,
        error: str = "",
    ) -> None:
        if self._ended:
            return
        self._ended = True
        # One line per request, with its id: `supervisor logs --request <id>` finds it.
        (log.warning if status == "error" else log.info)(
            "request_ended",
            request_id=self._request.request_id,
            model=self._request.model,
            group=self._group.name,
            status=status,
            finish_reason=finish_reason or None,
            completion_tokens=usage.completion_tokens if usage else len(self._sent),
            **({"error": error} if error else {}),
        )
        self._state.apply(
            RequestEnded(
                self._request.request_id,
                status,
                finish_reason,
                completion_tokens=usage.completion_tokens if usage else len(self._sent),
                prompt_tokens=usage.prompt_tokens if usage else 0,
                cached_tokens=usage.cached_tokens if usage else 0,
                error=error,
            )
        )


async def _one(event: GenerationEvent) -> AsyncIterator[GenerationEvent]:
    yield event
