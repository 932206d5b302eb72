"""Restart types and escalation end to end: a real supervisor, fake-engine groups, kill -9."""

from __future__ import annotations

import os
import signal

import httpx

from tests.conftest import wait_for

LOCAL = [{"ssh": "localhost", "name": "local"}]
QUICK = {"backoff_initial": 0.05, "backoff_max": 0.1}


def cluster(groups: list[dict], **restart) -> dict:
    return {"hosts": LOCAL, "model": "fake:f", "groups": groups, "restart": {**QUICK, **restart}}


def groups(sup) -> dict[str, dict]:
    return {g["name"]: g for g in sup.status()["groups"]}


def pid_of(sup, group: str) -> int | None:
    return sup.actor("fake_engine", group)["pid"]


def wait_all_ready(sup) -> None:
    sup.wait_healthy()  # listening, and one group serves
    wait_for(
        lambda: all(g["state"] == "ready" for g in groups(sup).values()), 60, "every group ready"
    )


def completion(sup) -> httpx.Response:
    body = {"model": "fake:f", "prompt": "?", "max_tokens": 3}
    return httpx.post(sup.url + "/v1/completions", json=body, timeout=30)


def test_a_temporary_group_stays_down_after_kill_9_and_a_permanent_one_comes_back(
    start_supervisor,
):
    sup = start_supervisor(
        cluster(
            [
                {"name": "a", "hosts": ["local"], "restart": "temporary"},
                {"name": "b", "hosts": ["local"]},
            ]
        )
    )
    wait_all_ready(sup)
    a_pid = pid_of(sup, "a")
    os.kill(a_pid, signal.SIGKILL)
    wait_for(lambda: groups(sup)["a"]["state"] == "stopped", 20, "a to stop")
    b_pid = pid_of(sup, "b")
    os.kill(b_pid, signal.SIGKILL)  # the cluster default, permanent: b comes back
    wait_for(lambda: pid_of(sup, "b") not in (None, b_pid), 20, "b's next incarnation")
    wait_for(lambda: groups(sup)["b"]["state"] == "ready", 20, "b ready again")
    a = groups(sup)["a"]
    assert (a["state"], a["restarts"]) == ("stopped", 0)
    assert a["reason"].startswith("a.rank0 ")  # exited, or its connection lost first
    assert sup.actor("fake_engine", "a")["restarts"] == 0
    gave_up = [line for line in sup.log_lines() if line.get("event") == "supervisor_gave_up"]
    assert gave_up == []  # left, not failed: nothing escalated
    assert completion(sup).status_code == 200  # b serves


def test_groups_that_give_up_escalate_and_the_last_one_fails_the_cluster(start_supervisor):
    sup = start_supervisor(
        cluster([{"name": "a", "hosts": ["local"]}, {"name": "b", "hosts": ["local"]}], intensity=0)
    )
    wait_all_ready(sup)

    def cluster_failed() -> list[dict]:
        return [line for line in sup.log_lines() if line.get("event") == "cluster_failed"]

    os.kill(pid_of(sup, "a"), signal.SIGKILL)
    wait_for(lambda: groups(sup)["a"]["state"] == "failed", 20, "a to fail")
    code, health = sup.health()
    assert (code, health["status"]) == (200, "degraded")
    assert cluster_failed() == []  # b still serves
    assert completion(sup).status_code == 200
    os.kill(pid_of(sup, "b"), signal.SIGKILL)
    (line,) = wait_for(cluster_failed, 20, "cluster_failed in the log")
    assert "the last, b, failed" in line["reason"] and "exceeds intensity 0" in line["reason"]
    code, health = sup.health()
    assert (code, health["status"]) == (503, "failed")
    r = completion(sup)
    assert r.status_code == 503 and r.headers["retry-after"] == "30"


def test_a_node_actor_that_gives_up_marks_its_node_down_and_leaves_its_groups(start_supervisor):
    sup = start_supervisor(cluster([{"name": "a", "hosts": ["local"]}], intensity=0))
    wait_all_ready(sup)
    memory = sup.actor("memory")
    os.kill(memory["pid"], signal.SIGKILL)

    def node() -> dict:
        (local,) = sup.status()["nodes"]
        return local

    wait_for(lambda: node()["state"] == "down", 20, "the node down")
    assert "exceeds intensity 0" in node()["reason"]
    assert groups(sup)["a"]["state"] == "ready"
    assert completion(sup).status_code == 200
    assert sup.health()[1]["status"] == "ok"
