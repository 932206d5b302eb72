"""The shipped Grafana dashboard: importable JSON that reads only the metrics /metrics documents.

A panel naming a metric we do not export shows "No data" forever, and a documented metric no
panel shows is one nobody looks at; both are caught here without Grafana or Prometheus.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "ops" / "grafana" / "mlx-supervisor.json"
DOCS = ROOT / "docs" / "observability.md"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

# What /metrics exports (docs/observability.md): name -> (type, labels).
METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "mlx_cluster_requests_total": ("counter", frozenset({"model", "status"})),
    "mlx_cluster_tokens_generated_total": ("counter", frozenset()),
    "mlx_cluster_tokens_per_second": ("gauge", frozenset()),
    "mlx_cluster_queue_depth": ("gauge", frozenset()),
    "mlx_cluster_memory_used_bytes": ("gauge", frozenset({"node"})),
    "mlx_cluster_memory_total_bytes": ("gauge", frozenset({"node"})),
    "mlx_cluster_mlx_active_bytes": ("gauge", frozenset({"actor"})),
    "mlx_cluster_actor_restarts_total": ("counter", frozenset({"kind", "group"})),
    "mlx_cluster_group_up": ("gauge", frozenset({"group", "model"})),
    "mlx_cluster_node_up": ("gauge", frozenset({"node"})),
    "mlx_cluster_rdma_bandwidth_gbps": ("gauge", frozenset({"link", "group"})),
    "mlx_cluster_rdma_latency_us": ("gauge", frozenset({"link", "group"})),
    "mlx_cluster_link_up": ("gauge", frozenset({"link", "group"})),
    "vllm:time_to_first_token_seconds": ("histogram", frozenset({"model_name"})),
    "vllm:inter_token_latency_seconds": ("histogram", frozenset({"model_name"})),
    "vllm:e2e_request_latency_seconds": ("histogram", frozenset({"model_name"})),
    "vllm:request_queue_time_seconds": ("histogram", frozenset({"model_name"})),
    "vllm:num_requests_running": ("gauge", frozenset({"model_name"})),
    "vllm:num_requests_waiting": ("gauge", frozenset({"model_name"})),
    "vllm:prompt_tokens_total": ("counter", frozenset({"model_name"})),
    "vllm:generation_tokens_total": ("counter", frozenset({"model_name"})),
    "vllm:request_success_total": ("counter", frozenset({"model_name", "finished_reason"})),
    "vllm:prefix_cache_queries_total": ("counter", frozenset({"model_name"})),
    "vllm:prefix_cache_hits_total": ("counter", frozenset({"model_name"})),
}
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}

# A metric name (not inside a number), then optionally its label matchers.
SELECTOR = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _data_panels() -> list[dict]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _exprs() -> list[str]:
    exprs = [t["expr"] for p in _data_panels() for t in p["targets"]]
    for var in _dashboard()["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", var["query"]["query"]))
    return exprs


def base_name(series: str) -> str | None:
    """The documented metric a series belongs to (a histogram's _bucket/_sum/_count too)."""
    if series in METRICS:
        return series
    for suffix in HISTOGRAM_SERIES:
        name = series.removesuffix(suffix)
        if name != series and METRICS.get(name, ("",))[0] == "histogram":
            return name
    return None


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """Every (series name, label names matched) in a PromQL expression; functions are skipped."""
    text = re.sub(r'"[^"]*"', '""', expr)
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors, e.g. [$__rate_interval]
    text = GROUPING.sub("", text)
    found = []
    for match in SELECTOR.finditer(text):
        name, matchers = match.group(1), match.group(2) or ""
        if text[match.end() :].lstrip().startswith("(") and not matchers:
            continue  # a function call such as rate( or histogram_quantile(
        if name in PROMQL_WORDS:
            continue
        labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
        found.append((name, labels))
    return found


def test_dashboard_is_importable_json() -> None:
    board = _dashboard()
    assert board["title"] and board["uid"]
    assert 36 <= board["schemaVersion"] <= 41
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    model_query = variables["model_name"]["query"]["query"]
    assert model_query == "label_values(vllm:num_requests_running, model_name)"
    assert variables["node"]["query"]["query"] == "label_values(mlx_cluster_node_up, node)"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


@pytest.mark.parametrize("panel", _data_panels(), ids=lambda p: p["title"])
def test_every_panel_reads_prometheus(panel: dict) -> None:
    assert panel["datasource"] == DATASOURCE
    assert panel["targets"], f"{panel['title']}: no queries"
    refs = [t["refId"] for t in panel["targets"]]
    assert len(refs) == len(set(refs)), f"{panel['title']}: refIds repeat"
    for t in panel["targets"]:
        assert t["datasource"] == DATASOURCE
        assert t["expr"].strip()


def test_selector_parsing_sees_metrics_and_labels() -> None:
    expr = 'histogram_quantile(0.5, sum by(le) (rate(vllm:x_bucket{model_name=~"$m"}[5m]))) / 1e3'
    assert selectors(expr) == [("vllm:x_bucket", {"model_name"})]
    assert selectors('100 * a{node=~"$node"}\n/\nb') == [("a", {"node"}), ("b", set())]


def test_every_expression_reads_only_documented_metrics_and_labels() -> None:
    for expr in _exprs():
        for series, labels in selectors(expr):
            name = base_name(series)
            assert name is not None, f"{series} is not exported by /metrics: {expr}"
            allowed = METRICS[name][1] | ({"le"} if series.endswith("_bucket") else set())
            assert labels <= allowed, f"{series} has no label {labels - allowed}: {expr}"


def test_every_documented_metric_has_a_panel() -> None:
    used = {base_name(s) for e in _exprs() for s, _ in selectors(e)}
    unused = sorted(set(METRICS) - used)
    assert not unused, f"no panel shows {unused}"


def test_docs_list_every_metric() -> None:
    text = DOCS.read_text()
    missing = [name for name in METRICS if f"`{name}`" not in text]
    assert not missing, f"docs/observability.md does not list {missing}"
