"""Multi-rank generation groups end to end: real ranks over SSH on loopback, real faults.

Every rank is a real ``mx.distributed`` ring rank (pinned to its own core on this
2-core VM) reached through a real sshd, as on a cluster of Macs; output is compared
token for token with a one-rank run of the same demo model in this module.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from tests.clients import client_for
from tests.conftest import ROOT, RunningSupervisor, run_cli, wait_for
from tests.sshd import Sshd, sshd_fixture  # noqa: F401

MODEL = "demo:tiny"
ALIAS = "loopmac"
PROMPTS = ["The cat sat on", "Once upon a time", "hello world"]
TOKENS = 12
UNBUFFERED = {"PYTHONUNBUFFERED": "1"}  # the supervisor's log is complete even after a kill


def complete(sup: RunningSupervisor, prompt: str, **extra) -> str:
    client = client_for(sup, timeout=120)
    reply = client.completions.create(
        model=MODEL,
        prompt=prompt,
        max_tokens=TOKENS,
        extra_body={"ignore_eos": True},
        **{"temperature": 0, **extra},
    )
    if "stop" not in extra:
        assert reply.usage.completion_tokens == TOKENS
    return reply.choices[0].text


def complete_all(sup: RunningSupervisor) -> list[str]:
    """The prompts one after another, then all at once (ranks batching in lockstep), then
    one sampled at temperature 0.9 with a seed (every rank must draw the same tokens)."""
    alone = [complete(sup, p) for p in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda p: complete(sup, p), PROMPTS))
    assert together == alone
    return [*alone, complete(sup, PROMPTS[0], temperature=0.9, seed=1234)]


@pytest.fixture(scope="module")
def one_rank_outputs() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        sup = RunningSupervisor(
            Path(tmp), env=UNBUFFERED, hostfile={"model": MODEL, "hosts": [{"ssh": "localhost"}]}
        )
        try:
            sup.wait_healthy()
            return complete_all(sup)
        finally:
            sup.stop()


def ssh_cluster(sshd: Sshd, tmp: Path, **extra) -> dict:
    """Two hosts reached over SSH (one sshd on loopback), one group of both."""
    config = sshd.write_ssh_config(tmp / "ssh_config", ALIAS)
    known = sshd.write_known_hosts(tmp / "known_hosts")
    host = {"ssh": ALIAS, "ips": ["127.0.0.1"], "python": sys.executable, "workdir": str(ROOT)}
    return {
        "model": MODEL,
        "hosts": [{**host, "name": "mac1"}, {**host, "name": "mac2"}],
        "ssh": {"known_hosts": str(known), "config": str(config), "retries": 1},
        **extra,
    }


def local_pair(**extra) -> dict:
    return {
        "model": MODEL,
        "hosts": [{"ssh": "localhost", "name": "a"}, {"ssh": "localhost", "name": "b"}],
        **extra,
    }


def abandon_a_stream(sup: RunningSupervisor) -> None:
    client = client_for(sup)
    stream = client.completions.create(
        model=MODEL, prompt="go", max_tokens=100000, stream=True, extra_body={"ignore_eos": True}
    )
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    wait_for(lambda: group(sup)["in_flight"] == 0, 30, "the abandoned request to end")


def ranks(sup: RunningSupervisor) -> list[dict]:
    found = [a for a in sup.status()["actors"] if a["kind"] == "generation"]
    return sorted(found, key=lambda a: a["rank"])


def group(sup: RunningSupervisor) -> dict:
    return sup.status()["groups"][0]


def remember_remote(sshd: Sshd, sup: RunningSupervisor) -> None:
    for actor in sup.status()["actors"]:
        sshd.remember(actor["pid"])


def test_tensor_parallel_over_ssh_matches_one_rank(sshd, tmp_path, one_rank_outputs):
    sup = RunningSupervisor(tmp_path, env=UNBUFFERED, hostfile=ssh_cluster(sshd, tmp_path))
    try:
        sup.wait_healthy()
        remember_remote(sshd, sup)
        assert [(a["rank"], a["node"]) for a in ranks(sup)] == [(0, "mac1"), (1, "mac2")]
        assert group(sup)["parallel"] == "tensor"
        assert complete_all(sup) == one_rank_outputs
        # A stop string ends a sequence that the batch still holds: rank 0 retires it on
        # every rank. A client that goes away cancels its request on every rank.
        stop = one_rank_outputs[0][4:8]
        assert complete(sup, PROMPTS[0], stop=[stop]) == one_rank_outputs[0].split(stop)[0]
        abandon_a_stream(sup)
        assert complete(sup, PROMPTS[1]) == one_rank_outputs[1]  # still in step
        cores = {psutil.Process(a["pid"]).cpu_affinity()[0] for a in ranks(sup)}
        assert len(cores) == 2  # one core per rank: busy-polling ranks must not share one
    finally:
        sup.stop()


def test_pipeline_over_ssh_matches_one_rank(sshd, tmp_path, one_rank_outputs):
    sup = RunningSupervisor(
        tmp_path, env=UNBUFFERED, hostfile=ssh_cluster(sshd, tmp_path, parallel="pipeline")
    )
    try:
        sup.wait_healthy()
        remember_remote(sshd, sup)
        assert group(sup)["parallel"] == "pipeline"
        assert complete_all(sup) == one_rank_outputs
    finally:
        sup.stop()


def test_kill_9_of_rank_1_restarts_every_rank(tmp_path, one_rank_outputs):
    sup = RunningSupervisor(
        tmp_path, env=UNBUFFERED, hostfile=local_pair(restart={"backoff_initial": 0.1})
    )
    try:
        sup.wait_healthy()
        before = [a["pid"] for a in ranks(sup)]
        os.kill(before[1], signal.SIGKILL)
        wait_for(lambda: group(sup)["restarts"] >= 1, 30, "the group to restart")
        sup.wait_healthy()
        after = [a["pid"] for a in ranks(sup)]
        assert not set(after) & set(before), "one_for_all: every rank is a new process"
        assert complete(sup, PROMPTS[0]) == one_rank_outputs[0]
    finally:
        sup.stop()


def test_frozen_rank_1_is_ended_by_the_watchdog_and_the_stream_goes_on_after_the_restart(
    tmp_path,
):
    # Heartbeats would catch a frozen rank 1 too; they are slowed down here so that what
    # ends the hang is rank 0 making no progress inside its collective (the watchdog).
    restart = {"backoff_initial": 0.1, "heartbeat_timeout": 60, "watchdog_interval": 5}
    sup = RunningSupervisor(tmp_path, env=UNBUFFERED, hostfile=local_pair(restart=restart))
    frozen = 0
    try:
        sup.wait_healthy()
        before = [a["pid"] for a in ranks(sup)]
        client = client_for(sup)
        stream = client.completions.create(
            model=MODEL,
            prompt="go on",
            max_tokens=100000,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        next(iter(stream))
        frozen = before[1]
        os.kill(frozen, signal.SIGSTOP)
        # The only group: the stream waits for it to restart and resumes there, up to
        # the context's end.
        finishes = [c.choices[0].finish_reason for c in stream if c.choices]
        assert [f for f in finishes if f] == ["length"]
        assert group(sup)["restarts"] >= 1
        reasons = [line.get("reason", "") for line in sup.log_lines()]
        # Either rank may be the first seen stalled: rank 1 froze, rank 0 waits on it.
        assert any("made no progress" in r and "watchdog" in r for r in reasons)
        sup.wait_healthy()
        assert not {a["pid"] for a in ranks(sup)} & set(before)
        assert complete(sup, PROMPTS[1])
    finally:
        if frozen:
            _kill_quietly(frozen)
        sup.stop()


def test_restart_intensity_exceeded_fails_the_group(tmp_path):
    restart = {"intensity": 1, "period": 120, "backoff_initial": 0.05}
    sup = RunningSupervisor(tmp_path, env=UNBUFFERED, hostfile=local_pair(restart=restart))
    try:
        sup.wait_healthy()
        first = ranks(sup)[1]["pid"]
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: group(sup)["restarts"] >= 1, 30, "a restart")
        sup.wait_healthy()
        os.kill(ranks(sup)[1]["pid"], signal.SIGKILL)
        wait_for(lambda: group(sup)["state"] == "failed", 30, "the group to fail")
        code, health = sup.health()
        assert code == 503 and health["status"] == "failed"
        assert "exceeds intensity 1" in health["groups"]["main"]["reason"]
        shown = run_cli("status", "--url", sup.url).stdout
        line = next(x for x in shown.splitlines() if x.startswith("group main"))
        assert "failed" in line and "exceeds intensity 1" in line
    finally:
        sup.stop()


def test_unknown_host_key_and_unreachable_host_are_one_line_reasons(sshd, tmp_path):
    hostfile = ssh_cluster(sshd, tmp_path, restart={"intensity": 0})
    (tmp_path / "known_hosts").write_text("")  # the server's key is not trusted
    closed = _closed_port()
    hostfile["hosts"][1] = {**hostfile["hosts"][1], "ssh": f"root@127.0.0.1:{closed}"}
    hostfile["groups"] = [{"name": "a", "hosts": ["mac1"]}, {"name": "b", "hosts": ["mac2"]}]
    sup = RunningSupervisor(tmp_path, env=UNBUFFERED, hostfile=hostfile)
    try:

        def reasons():
            try:
                nodes = {n["name"]: n["reason"] for n in sup.status()["nodes"]}
            except OSError:  # not listening yet
                return None
            known = "unknown SSH host key" in nodes["mac1"] and "refused" in nodes["mac2"]
            return nodes if known else None

        nodes = wait_for(reasons, 60, "both nodes to say why they are unreachable")
        assert "ssh-keyscan" in nodes["mac1"]  # the fix, in the same line
        assert "connection refused; is sshd running" in nodes["mac2"]
        assert all("\n" not in r for r in nodes.values())
        # A refused host key is an answer: a failure. A refused connection is no host: wait.
        wait_for(
            lambda: (
                {g["name"]: g["state"] for g in sup.status()["groups"]}
                == {"a": "failed", "b": "waiting"}
            ),
            60,
            "a to fail and b to wait for its host",
        )
        assert {n["name"]: n["state"] for n in sup.status()["nodes"]} == {
            "mac1": "down",
            "mac2": "unreachable",
        }
        shown = run_cli("status", "--url", sup.url).stdout
        assert "unknown SSH host key" in shown and "connection refused" in shown
        assert "Traceback" not in sup.log_path.read_text()
    finally:
        sup.stop()


def test_a_group_that_cannot_split_its_model_is_refused_before_start(tmp_path):
    path = tmp_path / "three.json"
    hosts = [{"ssh": "localhost", "name": f"n{i}"} for i in range(3)]
    path.write_text(json.dumps({"model": "demo:tiny", "hosts": hosts}))
    result = run_cli("start", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f'supervisor: {path}: group "main": demo:tiny has 2 key/value heads; a '
        "tensor-parallel group of 3 cannot split them; use 1 or 2 hosts"
    )


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: connecting is refused


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
