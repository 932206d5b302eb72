"""End to end: /metrics on a real `supervisor start` (with an API key), read by prometheus_client's
own parser, moves by exactly what the official openai client was given."""

from __future__ import annotations

import httpx
import openai
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from tests.clients import MODEL
from tests.conftest import demo_hostfile, wait_for
from tests.test_grafana_dashboard import METRICS

KEY = "sk-metrics"
AUTH = {"Authorization": f"Bearer {KEY}"}
HISTOGRAMS = ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds",
              "vllm:request_queue_time_seconds")  # fmt: skip  # one observation per request


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    reply = httpx.get(url + "/metrics", headers=AUTH, timeout=10)
    assert reply.status_code == 200, reply.text
    # prometheus_client's, with one charset: Prometheus 3 refuses a duplicate parameter.
    assert reply.headers["content-type"] == CONTENT_TYPE_LATEST
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(reply.text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_counters_move_by_what_the_client_saw(start_supervisor):
    sup = start_supervisor(demo_hostfile(api_key=KEY))
    sup.wait_healthy()
    assert httpx.get(sup.url + "/metrics", timeout=10).status_code == 401
    wrong = httpx.get(sup.url + "/metrics", headers={"Authorization": "Bearer no"}, timeout=10)
    assert wrong.status_code == 401
    before = scrape(sup.url)
    names = {name for name, _ in before}
    for name, (kind, labels) in METRICS.items():  # every documented name, before any request
        if "link" in labels:
            continue  # one rank, no link: tests/test_e2e_link_probe.py sees those series
        assert (name + "_count" if kind == "histogram" else name) in names, name

    client = openai.OpenAI(base_url=sup.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    asks = [("count to ten", 3), ("count to ten", 3), ("say hi", 40), ("a long story", 16)]
    usages, reasons = [], {}
    for content, max_tokens in asks:
        reply = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": content}],
            max_tokens=max_tokens, temperature=0,
        )  # fmt: skip
        usages.append(reply.usage)
        reason = reply.choices[0].finish_reason
        reasons[reason] = reasons.get(reason, 0) + 1
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "stream it"}], max_tokens=6,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    for chunk in stream:
        if chunk.choices and chunk.choices[0].finish_reason:
            reason = chunk.choices[0].finish_reason
            reasons[reason] = reasons.get(reason, 0) + 1
        if chunk.usage is not None:
            usages.append(chunk.usage)
    n = len(asks) + 1
    assert len(usages) == n

    m = {"model_name": MODEL}
    ended = "vllm:e2e_request_latency_seconds_count"
    after = wait_for(
        lambda: (s := scrape(sup.url)) and value(s, ended, **m) - value(before, ended, **m) == n
        and s,
        30, "every request to be counted as ended",
    )  # fmt: skip

    def moved(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    completion = sum(u.completion_tokens for u in usages)
    prompt = sum(u.prompt_tokens for u in usages)
    cached = sum(u.prompt_tokens_details.cached_tokens for u in usages)
    assert completion > 0 and prompt > 0
    assert moved("vllm:generation_tokens_total", **m) == completion
    assert moved("mlx_cluster_tokens_generated_total") == completion
    assert moved("vllm:prompt_tokens_total", **m) == prompt
    assert moved("vllm:prefix_cache_queries_total", **m) == prompt
    assert moved("vllm:prefix_cache_hits_total", **m) == cached
    assert moved("mlx_cluster_requests_total", model=MODEL, status="ok") == n
    for name in HISTOGRAMS:
        assert moved(name + "_count", **m) == n, name
        assert moved(name + "_bucket", le="+Inf", **m) == n, name
    assert 0 < moved("vllm:inter_token_latency_seconds_count", **m) <= completion - n
    for reason, count in reasons.items():
        assert moved("vllm:request_success_total", finished_reason=reason, **m) == count, reason
    assert sum(reasons.values()) == n
    assert value(after, "mlx_cluster_group_up", group="main", model=MODEL) == 1
    assert value(after, "mlx_cluster_node_up", node="localhost") == 1
    assert value(after, "vllm:num_requests_running", **m) == 0
    assert value(after, "mlx_cluster_queue_depth") == 0
