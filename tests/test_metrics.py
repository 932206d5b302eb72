"""The /metrics collector over a ClusterState fed with events: every documented name, with the
exact values the events make, read back by prometheus_client's own parser."""

from __future__ import annotations

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from actors.protocol.messages import Vitals
from supervisor.observe.metrics import exposition, metrics_registry
from supervisor.observe.observer import ClusterObserver
from supervisor.state import ClusterState
from supervisor.state.events import (
    ActorHeartbeat,
    ActorRestarted,
    ActorStarting,
    GroupDeclared,
    GroupState,
    LinkMeasured,
    NodeDeclared,
    NodeStatus,
    RequestAdmitted,
    RequestEnded,
    RequestRefused,
    RequestStarted,
    Tick,
    TokensDelivered,
)
from tests.test_grafana_dashboard import METRICS

GiB = 1 << 30


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def parse(text: str) -> tuple[dict, dict]:
    """``({family: type}, {(sample, labels): value})`` as Prometheus would read them."""
    types, values = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            values[(s.name, frozenset(s.labels.items()))] = s.value
    return types, values


def fed_state() -> ClusterState:
    """Two nodes (one up), two groups (one ready), a memory reporter and a rank, a restart,
    and five requests: one done, one refused, one cancelled, one running, one waiting."""
    clock = Clock()
    state = ClusterState(clock=clock, wall=lambda: 1_000.0 + clock.now)
    state.apply(NodeDeclared("n1", "localhost", True))
    state.apply(NodeStatus("n1", "up"))
    state.apply(NodeDeclared("n2", "mac2", False))
    state.apply(ActorStarting("mem-n1", "memory", "n1"))
    state.apply(ActorHeartbeat("mem-n1", Vitals(mem_total=16 * GiB, mem_used=4 * GiB)))
    state.apply(GroupDeclared("g", "m", ["n1"], "none", "ring"))
    state.apply(GroupState("g", "ready"))
    state.apply(GroupDeclared("h", "m2", ["n2"], "none", "ring"))
    state.apply(ActorStarting("g-0", "generation", "n1", "g", 0))
    state.apply(ActorHeartbeat("g-0", Vitals(mlx_active_bytes=3 * GiB)))
    state.apply(ActorRestarted("g-0"))
    link = ("n1↔n2", "g", ["n1", "n2"], "10.0.0.1↔10.0.0.2", 1_000.0, 0.01)
    state.apply(LinkMeasured(*link, latency_us=25.5))
    state.apply(LinkMeasured(*link, bandwidth_gbps=8.05))

    state.apply(RequestAdmitted("r1", "m"))  # t=0: queued 0.5 s, first token at 1 s
    clock.now = 0.5
    state.apply(RequestStarted("r1", "g", "m", owed=3))
    clock.now = 1.0
    state.apply(TokensDelivered("r1", 1))
    clock.now = 1.5
    state.apply(TokensDelivered("r1", 2))  # two gaps of 0.25 s
    clock.now = 2.0
    state.apply(RequestEnded("r1", "ok", "stop", completion_tokens=3, prompt_tokens=10,
                             cached_tokens=6))  # fmt: skip
    state.apply(Tick())  # 3 tokens in the first 2 s bucket: 1.5 tok/s

    state.apply(RequestAdmitted("r2", "m"))
    state.apply(RequestRefused("r2", "no group could take it"))
    state.apply(RequestAdmitted("r3", "m"))
    state.apply(RequestStarted("r3", "g", "m"))
    state.apply(RequestEnded("r3", "cancelled"))
    state.apply(RequestAdmitted("r4", "m"))
    state.apply(RequestStarted("r4", "g", "m"))  # running
    state.apply(RequestAdmitted("r5", "m"))  # waiting
    return state


def test_every_figure_is_the_states():
    body, content_type = exposition(metrics_registry(fed_state()))
    assert content_type == prometheus_client.CONTENT_TYPE_LATEST
    _, v = parse(body.decode())

    def at(name: str, **labels) -> float:
        return v[(name, frozenset(labels.items()))]

    assert at("mlx_cluster_requests_total", model="m", status="ok") == 1
    assert at("mlx_cluster_requests_total", model="m", status="error") == 1
    assert at("mlx_cluster_requests_total", model="m", status="cancelled") == 1
    assert at("mlx_cluster_requests_total", model="m2", status="ok") == 0  # known, no request
    assert at("mlx_cluster_tokens_generated_total") == 3
    assert at("mlx_cluster_tokens_per_second") == 1.5
    assert at("mlx_cluster_queue_depth") == 1
    assert at("mlx_cluster_memory_used_bytes", node="n1") == 4 * GiB
    assert at("mlx_cluster_memory_total_bytes", node="n1") == 16 * GiB
    assert ("mlx_cluster_memory_used_bytes", frozenset({("node", "n2")})) not in v  # no reporter
    assert at("mlx_cluster_mlx_active_bytes", actor="g-0") == 3 * GiB
    assert at("mlx_cluster_actor_restarts_total", kind="generation", group="g") == 1
    assert at("mlx_cluster_group_up", group="g", model="m") == 1
    assert at("mlx_cluster_group_up", group="h", model="m2") == 0
    assert at("mlx_cluster_node_up", node="n1") == 1
    assert at("mlx_cluster_node_up", node="n2") == 0
    assert at("mlx_cluster_rdma_latency_us", link="n1↔n2", group="g") == 25.5
    assert at("mlx_cluster_rdma_bandwidth_gbps", link="n1↔n2", group="g") == 8.05
    assert at("mlx_cluster_link_up", link="n1↔n2", group="g") == 1

    assert at("vllm:num_requests_running", model_name="m") == 1
    assert at("vllm:num_requests_waiting", model_name="m") == 1
    assert at("vllm:num_requests_running", model_name="m2") == 0
    assert at("vllm:prompt_tokens_total", model_name="m") == 10
    assert at("vllm:generation_tokens_total", model_name="m") == 3
    assert at("vllm:prefix_cache_queries_total", model_name="m") == 10
    assert at("vllm:prefix_cache_hits_total", model_name="m") == 6
    assert at("vllm:request_success_total", model_name="m", finished_reason="stop") == 1
    assert at("vllm:request_success_total", model_name="m", finished_reason="abort") == 1
    assert at("vllm:request_success_total", model_name="m", finished_reason="length") == 0

    ttft = "vllm:time_to_first_token_seconds"
    assert at(ttft + "_count", model_name="m") == 1 and at(ttft + "_sum", model_name="m") == 1.0
    assert at(ttft + "_bucket", model_name="m", le="0.75") == 0
    assert at(ttft + "_bucket", model_name="m", le="1.0") == 1  # bounds are inclusive
    assert at(ttft + "_bucket", model_name="m", le="+Inf") == 1
    itl = "vllm:inter_token_latency_seconds"
    assert (at(itl + "_count", model_name="m"), at(itl + "_sum", model_name="m")) == (2, 0.5)
    assert at(itl + "_bucket", model_name="m", le="0.2") == 0
    assert at(itl + "_bucket", model_name="m", le="0.3") == 2
    e2e = "vllm:e2e_request_latency_seconds"  # r1 (2 s) and r3 (cancelled at once)
    assert at(e2e + "_count", model_name="m") == 2 and at(e2e + "_sum", model_name="m") == 2.0
    assert at(e2e + "_bucket", model_name="m", le="0.3") == 1
    assert at(e2e + "_bucket", model_name="m", le="2.0") == 2
    queue = "vllm:request_queue_time_seconds"
    assert at(queue + "_sum", model_name="m") == 0.5
    assert at(queue + "_bucket", model_name="m", le="0.5") == 2
    assert at(queue + "_count", model_name="m2") == 0


def test_every_documented_name_type_and_label_is_exposed():
    types, values = parse(exposition(metrics_registry(fed_state()))[0].decode())
    seen_labels: dict[str, set[str]] = {}
    for (sample, labels), _ in values.items():
        seen_labels.setdefault(sample, set()).update(k for k, _ in labels if k != "le")
    for name, (kind, labels) in METRICS.items():
        family = name.removesuffix("_total") if kind == "counter" else name
        assert types.get(family) == kind, name
        sample = name + "_count" if kind == "histogram" else name
        assert seen_labels[sample] == set(labels), name
    assert len(types) == len(METRICS)  # and nothing undocumented


def test_the_global_registry_is_left_alone():
    ClusterObserver(fed_state()).metrics()
    assert b"mlx_cluster" not in prometheus_client.generate_latest()


def test_a_scrape_reads_the_state_now_not_a_copy():
    state = fed_state()
    observer = ClusterObserver(state)
    before = parse(observer.metrics()[0].decode())[1]
    state.apply(TokensDelivered("r4", 5))
    after = parse(observer.metrics()[0].decode())[1]
    key = ("vllm:generation_tokens_total", frozenset({("model_name", "m")}))
    assert after[key] - before[key] == 5
