"""The live link probe over a real 2-rank ring group on demo:tiny (local ranks, one core each).

Probes are timed from the feed's LinkMeasured events (``at``: when the probe started,
``seconds``: how long it ran, both rank 0's clock, this machine's) against the request
records' lifetimes; the outputs against a one-rank run, which never probes.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.clients import client_for
from tests.conftest import RunningSupervisor, http_json, wait_for

MODEL = "demo:tiny"
PROBE = {"latency_interval": 0.5, "bandwidth_interval": 1.5, "bandwidth_bytes": 4 << 20,
         "timeout": 60}  # fmt: skip
PROMPTS = ["The cat sat on", "Once upon a time", "hello world", "In the beginning"]
TOKENS = 8


def complete(sup: RunningSupervisor, prompt: str) -> tuple[str, str]:
    reply = client_for(sup, timeout=120).completions.create(
        model=MODEL, prompt=prompt, max_tokens=TOKENS, temperature=0,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    return reply.id, reply.choices[0].text


class Probes:
    """Every LinkMeasured / LinkDown of the feed, collected by a thread while the test runs."""

    def __init__(self, url: str):
        self.events: list[dict] = []
        self._thread = threading.Thread(target=self._read, args=(url,), daemon=True)
        self._thread.start()

    def _read(self, url: str) -> None:
        try:
            with httpx.stream("GET", url + "/api/cluster/events", timeout=None) as response:
                kind = ""
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        kind = line.partition(":")[2].strip()
                    elif line.startswith("data:") and kind in ("LinkMeasured", "LinkDown"):
                        self.events.append({"type": kind, **json.loads(line[5:])})
        except httpx.HTTPError:
            pass  # the supervisor went away: the feed ends

    def spans(self) -> list[tuple[float, float, dict]]:
        """(start, end, event) of every probe so far, in unix seconds."""
        return [(e["at"], e["at"] + e.get("seconds", 0.0), e) for e in list(self.events)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, str]:
    """Greedy outputs of a one-rank group: no link, so no probe."""
    tmp = tmp_path_factory.mktemp("one")
    sup = RunningSupervisor(tmp, hostfile={"model": MODEL, "hosts": [{"ssh": "localhost"}],
                                           "probe": PROBE})  # fmt: skip
    try:
        sup.wait_healthy()
        outputs = {p: complete(sup, p)[1] for p in PROMPTS}
        assert sup.status()["links"] == []  # single-rank groups never probe
        return outputs
    finally:
        sup.stop()


@pytest.fixture(scope="module")
def pair(tmp_path_factory, reference):
    tmp = tmp_path_factory.mktemp("pair")
    hosts = [{"ssh": "localhost", "name": "a"}, {"ssh": "localhost", "name": "b"}]
    sup = RunningSupervisor(tmp, hostfile={"model": MODEL, "hosts": hosts, "probe": PROBE})
    try:
        sup.wait_healthy()
        ready = time.time()
        probes = Probes(sup.url)
        yield sup, probes, ready
    finally:
        sup.stop()


def records(sup: RunningSupervisor) -> dict[str, dict]:
    return {r["id"]: r for r in http_json(sup.url + "/api/cluster/requests?limit=1000")[1]}


def test_an_idle_group_has_link_figures_within_one_interval(pair):
    sup, probes, ready = pair

    def measured():
        links = sup.status()["links"]
        return links if links and links[0]["bandwidth_gbps"] is not None else None

    # Both figures are due at once in a new group: one interval is plenty, with room for load.
    [link] = wait_for(measured, PROBE["bandwidth_interval"] + 10, "the first link figures")
    assert (link["id"], link["group"], link["nodes"]) == ("a↔b", "main", ["a", "b"])
    assert link["interface"] == "127.0.0.1↔127.0.0.1"
    assert link["status"] in ("active", "degraded")  # CPU timings here swing with load
    assert link["latency_us"] > 0 and link["bandwidth_gbps"] > 0
    assert link["baseline_latency_us"] > 0 and link["baseline_bandwidth_gbps"] > 0
    assert ready - 120 < link["last_probe"] <= time.time()
    # Probes go on while the group stays idle, about every latency interval.
    before = link["probes"]
    wait_for(lambda: sup.status()["links"][0]["probes"] >= before + 2, 20, "more probes")
    metrics = httpx.get(sup.url + "/metrics").text
    for family in ("mlx_cluster_rdma_bandwidth_gbps", "mlx_cluster_rdma_latency_us"):
        assert f'{family}{{group="main",link="a↔b"}}' in metrics
    assert 'mlx_cluster_link_up{group="main",link="a↔b"} 1.0' in metrics


def test_no_probe_runs_while_a_long_generation_is_in_flight(pair):
    sup, probes, _ = pair
    wait_for(lambda: len(probes.events) >= 2, 30, "probes before the generation")
    client = client_for(sup, timeout=120)
    stream = client.completions.create(
        model=MODEL, prompt="go on", max_tokens=100000, stream=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    began = time.monotonic()
    rid = None
    for chunk in stream:  # several probe intervals' worth of decoding
        rid = chunk.id
        if time.monotonic() - began > 6 * PROBE["latency_interval"]:
            break
    stream.close()
    record = wait_for(lambda: records(sup).get(rid), 30, "the request's record")
    first_token = record["created"] + record["ttft_ms"] / 1000
    end = record["created"] + record["duration_ms"] / 1000
    assert end - first_token > 4 * PROBE["latency_interval"]  # long enough to catch one
    wait_for(lambda: any(s > end for s, _, _ in probes.spans()), 30, "a probe after it")
    during = [e for s, _, e in probes.spans() if first_token <= s <= end]
    assert during == [], f"probes ran during the generation [{first_token}, {end}]: {during}"


def test_a_request_that_arrives_mid_probe_waits_for_it_and_completes_correctly(pair, reference):
    sup, probes, _ = pair
    done: list[dict] = []
    hit: list[tuple[dict, float]] = []
    deadline = time.monotonic() + 120
    # Back to back: each request ends with the group idle, so a probe is often due just
    # as the next one arrives; go on until one arrived while one ran.
    while not hit and time.monotonic() < deadline:
        for prompt in PROMPTS:
            rid, text = complete(sup, prompt)
            assert text == reference[prompt]  # greedy output as with no probe at all
            done.append(wait_for(lambda rid=rid: records(sup).get(rid), 30, "its record"))
        end = done[-1]["created"] + done[-1]["duration_ms"] / 1000
        # A probe reports when it ends: one begun after the last request, all are in.
        wait_for(lambda end=end: any(s > end for s, _, _ in probes.spans()), 30, "the next probe")
        spans = probes.spans()
        hit = [(r, e) for r in done for s, e, _ in spans if s <= r["created"] < e]
    assert hit, "no request arrived during a probe"
    hit_ids = {r["id"] for r, _ in hit}
    normal = max(r["ttft_ms"] / 1000 for r in done if r["id"] not in hit_ids)
    for record, probe_end in hit:
        left = probe_end - record["created"]  # what was left of the probe when it came
        # The probe's rest, then served as any request: measured here (printed), bounded
        # loosely, so that only a request left waiting past the probe (for the next
        # interval, or for ever) fails, not a slow moment of a loaded machine.
        print(f"mid-probe request: ttft {record['ttft_ms']:.0f} ms, probe left {left:.3f} s")
        assert record["ttft_ms"] / 1000 <= left + normal + 2.0, (record, probe_end)
    assert all(e["type"] == "LinkMeasured" for e in probes.events)  # none failed
    assert sup.status()["links"][0]["status"] in ("active", "degraded")
