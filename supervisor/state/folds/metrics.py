"""Counters and histograms of requests, folded by ``ClusterState.apply``: what /metrics
shows at scrape time (a prometheus_client custom collector reads them; nothing else counts).

Per model: requests by status, successes by finish reason, prompt and generation tokens,
prefix-cache queries and hits, and four latency histograms with vLLM's bucket bounds
(vllm/v1/metrics/loggers.py), so vLLM's Grafana dashboard reads them unchanged.
Accumulators, like ``RouterStats``: readers read, only the fold writes.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

# vLLM's bounds (seconds), as in vllm/v1/metrics/loggers.py.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
INTER_TOKEN_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

# Our finish reasons in vLLM's words (its request_success_total{finished_reason}).
VLLM_FINISH_REASONS = {"tool_calls": "stop", "cancelled": "abort"}


class Histogram:
    """Observations counted into fixed buckets (upper bounds inclusive, as Prometheus)."""

    def __init__(self, bounds: Sequence[float]):
        self.bounds = tuple(bounds)
        self._counts = [0] * (len(self.bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, n: int = 1) -> None:
        """``n`` observations of ``value``."""
        self._counts[bisect_left(self.bounds, value)] += n
        self.sum += value * n
        self.count += n

    def cumulative(self) -> list[tuple[float, int]]:
        """``(le, count)`` per bucket, cumulative, the last one ``le=inf`` (= ``count``)."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self._counts, strict=True):
            total += n
            out.append((bound, total))
        return out


class ModelFigures:
    """One model's counters and histograms since the supervisor started."""

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}  # by status: ok, error, cancelled
        self.success: dict[str, int] = {}  # finished requests by vLLM's finished_reason
        self.prompt_tokens = 0
        self.generation_tokens = 0  # as delivered to clients: once across failovers
        self.prefix_cache_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_cache_hits = 0  # of those, found there
        self.time_to_first_token = Histogram(TTFT_BUCKETS)
        self.inter_token_latency = Histogram(INTER_TOKEN_BUCKETS)
        self.e2e_request_latency = Histogram(REQUEST_LATENCY_BUCKETS)
        self.request_queue_time = Histogram(REQUEST_LATENCY_BUCKETS)

    def ended(self, status: str, finish_reason: str) -> None:
        self.requests[status] = self.requests.get(status, 0) + 1
        if status != "error":  # vLLM counts aborted requests as finished, not failed ones
            reason = VLLM_FINISH_REASONS.get(finish_reason or status, finish_reason or status)
            self.success[reason] = self.success.get(reason, 0) + 1


class RequestMetrics:
    """Every model's figures, actor restarts, and the cluster's token total."""

    def __init__(self) -> None:
        self.models: dict[str, ModelFigures] = {}
        self.restarts: dict[tuple[str, str], int] = {}  # by (actor kind, group or "")
        self.tokens_generated = 0  # delivered to clients, every model

    def model(self, name: str) -> ModelFigures:
        figures = self.models.get(name)
        if figures is None:
            figures = self.models[name] = ModelFigures()
        return figures

    def restarted(self, kind: str, group: str | None) -> None:
        key = (kind, group or "")
        self.restarts[key] = self.restarts.get(key, 0) + 1

    def latency_avg_ms(self) -> float:
        """Mean end-to-end latency of every request placed and ended (0: none yet)."""
        total = sum(m.e2e_request_latency.sum for m in self.models.values())
        count = sum(m.e2e_request_latency.count for m in self.models.values())
        return round(total / count * 1000, 1) if count else 0.0
