"""The request half of ``ClusterState.apply``: admitted, refused, started, delivered, moved,
ended. Each request's counts go to its groups, its model's counters and histograms, the
time series, and, at its end, one record in the history (and one in the errors when it
failed). Times are the state's clocks: monotonic for durations, wall for ``created``.

A mixin of ClusterState (it folds into the state's own dicts), kept apart by concern.
"""

from __future__ import annotations

from collections.abc import Callable

from msgspec.structs import replace

from supervisor.state.events import (
    RequestAdmitted,
    RequestEnded,
    RequestMoved,
    RequestRefused,
    RequestStarted,
)
from supervisor.state.folds.history import ErrorRecord, RequestRecord, Ring, clip_prompt
from supervisor.state.folds.metrics import RequestMetrics
from supervisor.state.folds.router_stats import RouterStats
from supervisor.state.folds.series import Series
from supervisor.state.views import Admission, GroupView, RequestView


class RequestFold:
    _clock: Callable[[], float]
    _wall: Callable[[], float]
    groups: dict[str, GroupView]
    running: dict[str, RequestView]  # placed, in flight
    admitted: dict[str, Admission]  # admitted, waiting for a group
    metrics: RequestMetrics
    series: Series
    router: RouterStats
    requests_total: int
    tokens_total: int
    _request_log: Ring[RequestRecord]
    _error_log: Ring[ErrorRecord]

    def _group(self, name: str, **changes) -> GroupView | None:
        raise NotImplementedError

    def _error(self, kind: str, message: str, **where) -> None:
        raise NotImplementedError

    def _request_admitted(self, e: RequestAdmitted) -> None:
        self.admitted[e.request_id] = Admission(
            e.model, e.dialect, e.endpoint, self._wall(), self._clock(), clip_prompt(e.prompt)
        )

    def _request_refused(self, e: RequestRefused) -> None:
        admission = self.admitted.pop(e.request_id, None)
        if admission is None:
            return
        waited = (self._clock() - admission.admitted_at) * 1000
        error = e.reason if e.status == "error" else ""
        self.metrics.model(admission.model).ended(e.status, "")
        self._request_log.add(
            RequestRecord(
                e.request_id, admission.created, admission.dialect, admission.endpoint,
                admission.model, (), e.status, "", 0, 0, 0, round(waited, 1), None,
                round(waited, 1), 0.0, error, admission.prompt,
            )
        )  # fmt: skip
        if error:
            self._error("request_refused", error, request_id=e.request_id)

    def _request_started(self, e: RequestStarted) -> None:
        now = self._clock()
        admission = self.admitted.pop(e.request_id, None) or Admission(
            e.model, created=self._wall(), admitted_at=now
        )
        self.requests_total += 1
        self.running[e.request_id] = RequestView(
            e.request_id, e.model, e.group, (e.group,), e.owed, admission=admission, placed_at=now
        )
        group = self.groups.get(e.group)
        if group is not None:
            self._group(
                e.group, in_flight=group.in_flight + 1, queued_tokens=group.queued_tokens + e.owed
            )

    def _delivered(self, request_id: str, tokens: int) -> None:
        request = self.running[request_id]
        if tokens <= 0:
            return  # a delta of text or tool calls alone: no token, no token time
        now = self._clock()
        figures = self.metrics.model(request.model)
        if request.first_token_at is None:
            admitted = request.admission.admitted_at if request.admission else request.placed_at
            figures.time_to_first_token.observe(now - admitted)
            self.series.first_token(now - admitted)
        else:  # a chunk of n tokens after dt: n gaps of dt / n, as a client saw them
            figures.inter_token_latency.observe((now - request.last_token_at) / tokens, tokens)
        figures.generation_tokens += tokens
        self.metrics.tokens_generated += tokens
        self.series.delivered(tokens)
        paid = min(tokens, request.owed)
        self.running[request_id] = replace(
            request,
            sent=request.sent + tokens,
            owed=request.owed - paid,
            first_token_at=now if request.first_token_at is None else request.first_token_at,
            last_token_at=now,
        )
        group = self.groups.get(request.group)
        if group is not None and paid:
            self._group(request.group, queued_tokens=group.queued_tokens - paid)

    def _request_moved(self, e: RequestMoved) -> None:
        request = self.running[e.request_id]
        self.router.failovers += 1
        lost = self.groups.get(request.group)
        if lost is not None:
            self._group(
                request.group,
                in_flight=lost.in_flight - 1,
                tokens=lost.tokens + request.sent - request.credited,
                queued_tokens=lost.queued_tokens - request.owed,
            )
        to = self.groups.get(e.to_group)
        if to is not None:
            self._group(
                e.to_group, in_flight=to.in_flight + 1, queued_tokens=to.queued_tokens + e.owed
            )
        self.running[e.request_id] = replace(
            request,
            group=e.to_group,
            groups=(*request.groups, e.to_group),
            owed=e.owed,
            credited=request.sent,
        )

    def _request_ended(self, e: RequestEnded) -> None:
        request = self.running.pop(e.request_id)
        group = self.groups.get(request.group)
        if group is not None:
            self._group(
                request.group,
                in_flight=group.in_flight - 1,
                served=group.served + 1,
                tokens=group.tokens + e.completion_tokens - request.credited,
                errors=group.errors + (e.status == "error"),
                queued_tokens=group.queued_tokens - request.owed,
            )
        self.tokens_total += e.completion_tokens
        record = self._record(request, e)
        figures = self.metrics.model(request.model)
        figures.ended(e.status, e.finish_reason)
        figures.prompt_tokens += e.prompt_tokens
        figures.prefix_cache_queries += e.prompt_tokens
        figures.prefix_cache_hits += e.cached_tokens
        figures.e2e_request_latency.observe(record.duration_ms / 1000)
        figures.request_queue_time.observe(record.queue_ms / 1000)
        self.series.ended(record.duration_ms / 1000)
        self._request_log.add(record)
        if e.status == "error":
            self._error("request_failed", e.error, group=request.group, request_id=e.request_id)

    def _record(self, request: RequestView, e: RequestEnded) -> RequestRecord:
        now = self._clock()
        admission = request.admission or Admission(request.model, admitted_at=request.placed_at)
        since = admission.admitted_at
        first = request.first_token_at
        decoding = now - first if first is not None else 0.0
        rate = (request.sent - 1) / decoding if request.sent > 1 and decoding > 0 else 0.0
        return RequestRecord(
            id=e.request_id,
            created=admission.created,
            dialect=admission.dialect,
            endpoint=admission.endpoint,
            model=request.model,
            groups=request.groups,
            status=e.status,
            finish_reason=e.finish_reason,
            prompt_tokens=e.prompt_tokens,
            cached_tokens=e.cached_tokens,
            completion_tokens=e.completion_tokens,
            queue_ms=round((request.placed_at - since) * 1000, 1),
            ttft_ms=None if first is None else round((first - since) * 1000, 1),
            duration_ms=round((now - since) * 1000, 1),
            tokens_per_second=round(rate, 2),
            error=e.error,
            prompt=admission.prompt,
        )
