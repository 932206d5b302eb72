"""Memory end to end: the node's and MLX's figures in status, and a model too large refused."""

from __future__ import annotations

import re

import httpx
import psutil

from actors.memory.fit import human_bytes
from tests.conftest import demo_hostfile, wait_for

LOCAL = [{"ssh": "localhost", "name": "local"}]
QUICK = {"backoff_initial": 0.05, "backoff_max": 0.1}


def test_status_carries_the_nodes_memory_hardware_and_each_ranks_mlx_figures(sup):
    def beating(kind: str, field: str):
        actor = sup.actor(kind)
        return actor if actor["vitals"].get(field) else None

    memory = wait_for(lambda: beating("memory", "mem_used"), 10, "a memory heartbeat")
    vitals = memory["vitals"]
    assert vitals["mem_total"] == psutil.virtual_memory().total
    assert vitals["mem_used"] + vitals["mem_available"] == vitals["mem_total"]
    assert vitals["swap_used"] >= 0
    assert vitals["pressure"] in ("normal", "warn", "critical")  # this Linux has PSI
    info = memory["info"]
    for key in ("chip", "cpu", "cpu_cores", "os", "python", "mlx", "mlx_lm", "mlx_supervisor"):
        assert isinstance(info.get(key), str) and info[key], key

    rank = wait_for(lambda: beating("generation", "model_bytes"), 10, "a generation heartbeat")
    figures = rank["vitals"]
    assert figures["model_bytes"] > 100_000  # demo:tiny's weights: about 1.4 MB
    assert figures["mlx_active_bytes"] >= figures["model_bytes"]  # the weights are held by MLX
    assert figures["mlx_peak_bytes"] >= figures["mlx_active_bytes"]
    assert figures["mlx_cache_bytes"] >= 0 and "prompt_cache_bytes" in figures


def test_a_model_too_large_for_the_node_is_refused_in_one_line_and_not_restarted(
    start_supervisor,
):
    huge = psutil.virtual_memory().total * 4
    hostfile = {
        "hosts": LOCAL,
        "groups": [
            {"name": "big", "hosts": [0], "model": f"fake:huge?weight_bytes={huge}"},
            {"name": "small", "hosts": [0], "model": "fake:small?weight_bytes=1000"},
        ],
        "restart": QUICK,
    }
    sup = start_supervisor(hostfile)
    sup.wait_healthy()

    def failed():
        big = next(g for g in sup.status()["groups"] if g["name"] == "big")
        return big if big["state"] == "failed" else None

    big = wait_for(failed, 30, "group big to fail")
    said = (
        f"node local: model fake:huge needs {human_bytes(huge + 2 * 10**9)} "
        f"(weights {human_bytes(huge)} + margin 2.0 GB), "
    )
    line = re.escape(said) + r"[\d.]+ [kMG]?B available; choose a smaller model or free memory"
    assert re.fullmatch(line, big["reason"]), big["reason"]
    assert sup.actor("fake_engine", "big")["restarts"] == 0  # refused for good, not retried
    gave_up = [
        entry
        for entry in sup.log_lines()
        if entry.get("event") == "supervisor_gave_up" and entry.get("supervisor") == "big"
    ]
    assert [entry["reason"] for entry in gave_up] == [big["reason"]]

    refused = httpx.post(
        sup.url + "/v1/completions",
        json={"model": "fake:huge", "prompt": "?", "max_tokens": 3},
        timeout=30,
    )
    assert refused.status_code == 503, refused.text
    served = httpx.post(
        sup.url + "/v1/completions",
        json={"model": "fake:small", "prompt": "?", "max_tokens": 3},
        timeout=30,
    )
    assert served.status_code == 200, served.text  # a model that fits loads beside it

    def small_weights() -> bool:
        return sup.actor("fake_engine", "small")["vitals"].get("model_bytes") == 1000

    wait_for(small_weights, 10, "the small model's weight bytes in a heartbeat")


def test_the_hostfile_margin_reaches_a_real_rank_which_refuses_before_loading(start_supervisor):
    margin = psutil.virtual_memory().total * 2
    sup = start_supervisor(demo_hostfile(memory_margin_bytes=margin, restart=QUICK))

    def failed():
        try:
            (group,) = sup.status()["groups"]
        except OSError:  # not listening yet
            return None
        return group if group["state"] == "failed" else None

    group = wait_for(failed, 60, "the demo group to fail")
    line = (
        r"node localhost: model demo:tiny needs [\d.]+ GB \(weights [\d.]+ MB \+ margin "
        + re.escape(human_bytes(margin))
        + r"\), [\d.]+ GB available; choose a smaller model or free memory"
    )
    assert re.fullmatch(line, group["reason"]), group["reason"]
    assert sup.actor("generation")["restarts"] == 0
    assert not any(e.get("event") == "model_loaded" for e in sup.log_lines())  # refused first
    code, health = sup.health()
    assert (code, health["status"]) == (503, "failed")
