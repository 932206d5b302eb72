"""A hostfile node whose sshd is down is kept and waited for; a joined one is removed.

A real supervisor, a real sshd on loopback stopped and started again on the same port with
the same keys (a Mac that reboots), the real CLI for add-host.
"""

from __future__ import annotations

import socket
import sys

from tests.clients import post_chat
from tests.conftest import ROOT, RunningSupervisor, run_cli, wait_for
from tests.sshd import Sshd, sshd_fixture  # noqa: F401

MODEL = "demo:tiny"
ALIAS = "rebooting"
GRACE = 1.0


def hostfile(sshd: Sshd, tmp) -> dict:
    """One remote host, mac1, reached through the sshd; restart intensity 1, so that a
    second counted failure would fail its group."""
    config = sshd.write_ssh_config(tmp / "ssh_config", ALIAS)
    known = sshd.write_known_hosts(tmp / "known_hosts")
    host = {"ssh": ALIAS, "name": "mac1", "python": sys.executable, "workdir": str(ROOT)}
    return {
        "model": MODEL,
        "hosts": [host],
        "ssh": {"known_hosts": str(known), "config": str(config), "retries": 0},
        "restart": {"intensity": 1, "backoff_initial": 0.2, "backoff_max": 1},
        "membership": {"unreachable_grace": GRACE},
    }


def node(sup: RunningSupervisor, name: str) -> dict | None:
    try:
        nodes = sup.status()["nodes"]
    except OSError:  # not listening yet
        return None
    return next((n for n in nodes if n["name"] == name), None)


def events(sup: RunningSupervisor, event: str) -> list[dict]:
    return [e for e in sup.log_lines() if e.get("event") == event]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: connecting is refused


def test_a_hostfile_node_is_kept_while_down_and_its_group_starts_when_it_returns(sshd, tmp_path):
    sshd.stop()  # the host is off before the supervisor starts
    sup = RunningSupervisor(tmp_path, hostfile(sshd, tmp_path), env={"PYTHONUNBUFFERED": "1"})
    try:
        wait_for(
            lambda: (node(sup, "mac1") or {}).get("state") == "unreachable",
            60,
            "mac1 to be listed as unreachable",
        )
        # A joined host, unreachable too, under the same grace and the same watcher.
        added = run_cli(
            "add-host", f"root@127.0.0.1:{closed_port()}", "--name", "ghost", "--url", sup.url
        )
        assert added.returncode == 0, added.stderr
        wait_for(lambda: events(sup, "node_unreachable_removed"), 60, "ghost to be removed")
        kept = wait_for(lambda: events(sup, "node_unreachable_kept"), 30, "mac1 past the grace")
        assert [e["node"] for e in kept] == ["mac1"], "said once per outage"
        assert [e["node"] for e in events(sup, "node_unreachable_removed")] == ["ghost"]
        wait_for(lambda: node(sup, "ghost") is None, 30, "ghost to be forgotten")

        # Past the grace, mac1 is still listed, with why; its group waits, never failed.
        status = sup.status()
        mac1 = node(sup, "mac1")
        assert mac1["state"] == "unreachable"
        assert f"node mac1 (127.0.0.1:{sshd.port}): connection refused" in mac1["reason"]
        (main,) = [g for g in status["groups"] if g["name"] == "main"]
        assert [g["name"] for g in status["groups"]] == ["main"]
        assert main["state"] == "waiting"
        assert main["reason"].startswith("node mac1 unreachable: connection refused")
        tries = events(sup, "supervisor_host_unreachable")
        assert len([t for t in tries if t["supervisor"] == "main"]) >= 3  # intensity is 1
        assert not events(sup, "supervisor_gave_up")

        sshd.start()  # the host is back: same port, same host key
        wait_for(lambda: (node(sup, "mac1") or {}).get("state") == "up", 60, "mac1 to be up again")
        sup.wait_healthy(timeout=120)
        for actor in sup.status()["actors"]:
            sshd.remember(actor["pid"])
        reply = post_chat(sup, max_tokens=4)
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-served-by"] == "main"
        assert reply.json()["choices"][0]["message"]["content"]
        assert not events(sup, "supervisor_gave_up")
        assert "Traceback" not in sup.log_path.read_text()
    finally:
        for actor in _actors(sup):
            sshd.remember(actor["pid"])
        sup.stop()


def test_add_host_of_a_remote_host_into_a_loopback_control_cluster_is_refused(start_supervisor):
    sup = start_supervisor({"hosts": [{"ssh": "localhost"}], "model": MODEL})
    sup.wait_healthy()
    before = sup.status()
    refused = run_cli("add-host", "alice@192.0.2.7", "--name", "far", "--url", sup.url)
    assert refused.returncode == 2
    assert (
        'control.host "127.0.0.1" is a loopback address but host "far" is remote; set '
        "control.host to this machine's address on the cluster network, then restart the "
        "supervisor"
    ) in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    after = sup.status()
    assert [n["name"] for n in after["nodes"]] == [n["name"] for n in before["nodes"]]
    assert [g["name"] for g in after["groups"]] == ["main"]


def _actors(sup: RunningSupervisor) -> list[dict]:
    try:
        return sup.status()["actors"]
    except OSError:
        return []
