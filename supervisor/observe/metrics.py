"""``GET /metrics``: a prometheus_client custom collector that reads ``ClusterState`` at
scrape time. Nothing is counted here: every figure is the state's (``state.metrics`` for
the counters and histograms, the views for the gauges); this module only names them.

Two sets (docs/observability.md): the cluster's facts (``mlx_cluster_*``) and the request
figures under vLLM's names and label ``model_name``, so vLLM's Grafana dashboard reads them
unchanged. ``CounterMetricFamily`` appends ``_total`` to the samples itself, so counters
are declared by their exposed name (it strips the suffix from the family and adds it back).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.utils import floatToGoString

from supervisor.state import ClusterState
from supervisor.state.folds.metrics import Histogram, ModelFigures
from supervisor.state.folds.nodes import mem_used

STATUSES = ("ok", "error", "cancelled")  # shown at 0 before the first, so rate() starts at once
FINISHED_REASONS = ("stop", "length", "abort")  # vLLM's, likewise
_NONE = ModelFigures()  # a model with no request yet: zeros (never written)


class ClusterCollector:
    """Yields every metric family from ``state`` each time the registry is collected."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        yield from cluster_families(self.state)
        yield from vllm_families(self.state)


def metrics_registry(state: ClusterState) -> CollectorRegistry:
    """A registry of its own (never the global one) holding only the cluster's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(state))
    return registry


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The Prometheus text of ``registry`` now, and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def cluster_families(state: ClusterState) -> Iterator[Metric]:
    figures = state.metrics
    requests = CounterMetricFamily(
        "mlx_cluster_requests_total", "Finished requests by model and status.",
        labels=["model", "status"],
    )  # fmt: skip
    for model in _models(state):
        counts = figures.models.get(model, _NONE).requests
        for status in sorted({*STATUSES, *counts}):
            requests.add_metric([model, status], counts.get(status, 0))
    yield requests
    yield CounterMetricFamily(
        "mlx_cluster_tokens_generated_total", "Completion tokens sent to clients, all models.",
        value=figures.tokens_generated,
    )  # fmt: skip
    avg, _ = state.series.tokens_per_second(60)
    yield GaugeMetricFamily(
        "mlx_cluster_tokens_per_second",
        "Generation throughput: the average of the last 60 s (2 s time-series points).",
        value=avg,
    )
    yield GaugeMetricFamily(
        "mlx_cluster_queue_depth", "Requests admitted, waiting for a group.", value=state.waiting
    )
    used = GaugeMetricFamily(
        "mlx_cluster_memory_used_bytes", "Memory in use on the node.", labels=["node"]
    )
    total = GaugeMetricFamily(
        "mlx_cluster_memory_total_bytes", "The node's physical memory.", labels=["node"]
    )
    for actor in state.actors.values():  # a node's figures are its memory reporter's
        if actor.kind == "memory" and actor.vitals.mem_total and actor.node in state.nodes:
            used.add_metric([actor.node], mem_used(actor.vitals))
            total.add_metric([actor.node], actor.vitals.mem_total)
    yield used
    yield total
    active = GaugeMetricFamily(
        "mlx_cluster_mlx_active_bytes", "Memory MLX holds in a generation actor.",
        labels=["actor"],
    )  # fmt: skip
    for actor in state.actors.values():
        if actor.kind == "generation":
            active.add_metric([actor.actor_id], actor.vitals.mlx_active_bytes)
    yield active
    restarts = CounterMetricFamily(
        "mlx_cluster_actor_restarts_total", "Actor restarts by the supervisor.",
        labels=["kind", "group"],
    )  # fmt: skip
    actors = {(a.kind, a.group or "") for a in state.actors.values()}  # 0 before the first
    for kind, group in sorted(actors | set(figures.restarts)):
        restarts.add_metric([kind, group], figures.restarts.get((kind, group), 0))
    yield restarts
    group_up = GaugeMetricFamily(
        "mlx_cluster_group_up", "1 while the generation group is ready, else 0.",
        labels=["group", "model"],
    )  # fmt: skip
    for group in state.groups.values():
        group_up.add_metric([group.name, group.model], 1 if group.state == "ready" else 0)
    yield group_up
    node_up = GaugeMetricFamily(
        "mlx_cluster_node_up", "1 while the node is up (answers heartbeats), else 0.",
        labels=["node"],
    )  # fmt: skip
    for node in state.nodes.values():
        node_up.add_metric([node.name], 1 if node.state == "up" else 0)
    yield node_up
    yield from link_families(state)


def link_families(state: ClusterState) -> Iterator[Metric]:
    """The live link probe's figures per link (state.links): none before a first probe."""
    labels = ["link", "group"]
    bandwidth = GaugeMetricFamily(
        "mlx_cluster_rdma_bandwidth_gbps",
        "The link's last measured all_sum bandwidth, GB/s (1e9 bytes), while serving.",
        labels=labels,
    )
    latency = GaugeMetricFamily(
        "mlx_cluster_rdma_latency_us",
        "The link's last measured round trip of a 1 KiB all_sum, microseconds.",
        labels=labels,
    )
    up = GaugeMetricFamily(
        "mlx_cluster_link_up", "1 while the link's last probe passed (active or degraded).",
        labels=labels,
    )  # fmt: skip
    for link in state.links.views.values():
        key = [link.id, link.group]
        if link.bandwidth_gbps is not None:
            bandwidth.add_metric(key, link.bandwidth_gbps)
        if link.latency_us is not None:
            latency.add_metric(key, link.latency_us)
        up.add_metric(key, 0 if link.status == "down" else 1)
    yield bandwidth
    yield latency
    yield up


def vllm_families(state: ClusterState) -> Iterator[Metric]:
    models = _models(state)
    each = {m: state.metrics.models.get(m, _NONE) for m in models}
    label = ["model_name"]
    for name, doc, read in _HISTOGRAMS:
        family = HistogramMetricFamily(name, doc, labels=label)
        for model, figures in each.items():
            histogram = read(figures)
            family.add_metric([model], _buckets(histogram), sum_value=histogram.sum)
        yield family
    running = GaugeMetricFamily("vllm:num_requests_running", "Requests generating.", labels=label)
    waiting = GaugeMetricFamily("vllm:num_requests_waiting", "Requests queued.", labels=label)
    for model in models:
        running.add_metric([model], sum(1 for r in state.running.values() if r.model == model))
        waiting.add_metric([model], sum(1 for a in state.admitted.values() if a.model == model))
    yield running
    yield waiting
    for name, doc, read in _COUNTERS:
        family = CounterMetricFamily(name, doc, labels=label)
        for model, figures in each.items():
            family.add_metric([model], read(figures))
        yield family
    success = CounterMetricFamily(
        "vllm:request_success_total", "Finished requests by vLLM's finished_reason.",
        labels=["model_name", "finished_reason"],
    )  # fmt: skip
    for model, figures in each.items():
        for reason in sorted({*FINISHED_REASONS, *figures.success}):
            success.add_metric([model, reason], figures.success.get(reason, 0))
    yield success


_HISTOGRAMS = (
    ("vllm:time_to_first_token_seconds", "Arrival to first token.",
     lambda f: f.time_to_first_token),
    ("vllm:inter_token_latency_seconds", "Time between two tokens of a stream.",
     lambda f: f.inter_token_latency),
    ("vllm:e2e_request_latency_seconds", "Arrival to last token.",
     lambda f: f.e2e_request_latency),
    ("vllm:request_queue_time_seconds", "Time waiting before generation starts.",
     lambda f: f.request_queue_time),
)  # fmt: skip
_COUNTERS = (
    ("vllm:prompt_tokens_total", "Prompt tokens processed.", lambda f: f.prompt_tokens),
    ("vllm:generation_tokens_total", "Completion tokens generated and sent.",
     lambda f: f.generation_tokens),
    ("vllm:prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.",
     lambda f: f.prefix_cache_queries),
    ("vllm:prefix_cache_hits_total", "Prompt tokens found in the prefix cache.",
     lambda f: f.prefix_cache_hits),
)  # fmt: skip


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    return [(floatToGoString(le), count) for le, count in histogram.cumulative()]


def _models(state: ClusterState) -> list[str]:
    """Every model served or asked for: the groups' (so a dashboard's model list and the
    gauges are there before the first request) and any with figures."""
    return sorted({g.model for g in state.groups.values()} | set(state.metrics.models))
