"""Hosts join and leave a running cluster (real supervisor, real CLI, real actors)."""

from __future__ import annotations

import httpx
import psutil

from supervisor.cli.credentials import admin_key_file
from supervisor.cli.pidfile import default_pidfile
from tests.conftest import demo_hostfile, run_cli, wait_for

MODEL = "demo:tiny"


def served_by(sup) -> str:
    r = httpx.post(
        sup.url + "/v1/completions",
        timeout=60,
        json={"model": MODEL, "prompt": "hi", "max_tokens": 2},
    )
    assert r.status_code == 200, r.text
    return r.headers["x-served-by"]


def group_state(sup, name: str) -> str | None:
    return next((g["state"] for g in sup.status()["groups"] if g["name"] == name), None)


def test_add_host_serves_without_disturbing_then_remove_host_drains(start_supervisor):
    sup = start_supervisor(demo_hostfile(router={"policy": "round_robin"}))
    sup.wait_healthy()
    main_pid = sup.actor("generation", group="main")["pid"]

    added = run_cli("add-host", "localhost", "--name", "extra", "--url", sup.url)
    assert added.returncode == 0, added.stderr
    wait_for(lambda: group_state(sup, "extra") == "ready", 60, "the joined group to be ready")
    assert {served_by(sup) for _ in range(6)} == {"main", "extra"}
    assert sup.actor("generation", group="main")["pid"] == main_pid, "main was disturbed"
    extra_pid = sup.actor("generation", group="extra")["pid"]
    sup.remember_children()

    again = run_cli("add-host", "localhost", "--name", "extra", "--url", sup.url)
    assert again.returncode == 2 and "already in the cluster" in again.stderr

    removed = run_cli("remove-host", "extra", "--url", sup.url)
    assert removed.returncode == 0, removed.stderr
    status = sup.status()
    assert [g["name"] for g in status["groups"]] == ["main"]
    assert "extra" not in [n["name"] for n in status["nodes"]]
    wait_for(
        lambda: (
            not psutil.pid_exists(extra_pid)
            or psutil.Process(extra_pid).status() == psutil.STATUS_ZOMBIE
        ),
        15,
        "extra to end",
    )
    assert {served_by(sup) for _ in range(3)} == {"main"}
    assert sup.actor("generation", group="main")["pid"] == main_pid


def test_join_from_the_new_machine(start_supervisor):
    sup = start_supervisor(demo_hostfile())
    sup.wait_healthy()
    printed = run_cli("join-token", "--url", sup.url)  # on the supervisor's machine
    assert printed.returncode == 0, printed.stderr
    _, _, address, _, token = printed.stdout.split()
    joined = run_cli("join", address, "--token", token, "--ssh", "localhost", "--name", "j1")
    assert joined.returncode == 0, joined.stderr
    wait_for(lambda: group_state(sup, "j1") == "ready", 60, "the joined group to be ready")
    sup.remember_children()
    assert "j1" in [n["name"] for n in sup.status()["nodes"]]


def test_unreachable_host_is_removed_after_the_grace_period(start_supervisor):
    sup = start_supervisor(
        demo_hostfile(membership={"unreachable_grace": 2}, ssh={"retries": 0, "connect_timeout": 2})
    )
    sup.wait_healthy()
    added = run_cli("add-host", "root@127.0.0.1:1", "--name", "ghost", "--url", sup.url)
    assert added.returncode == 0, added.stderr
    wait_for(lambda: "ghost" in [n["name"] for n in sup.status()["nodes"]], 10, "ghost declared")
    wait_for(
        lambda: "ghost" not in [n["name"] for n in sup.status()["nodes"]],
        60,
        "the unreachable node to be removed",
    )
    assert [g["name"] for g in sup.status()["groups"]] == ["main"]
    removal = [e for e in sup.log_lines() if e.get("event") == "node_unreachable_removed"]
    assert removal and removal[0]["node"] == "ghost"
    assert served_by(sup) == "main"


def test_bad_join_requests_are_clear(start_supervisor):
    sup = start_supervisor(demo_hostfile())
    sup.wait_healthy()
    key = admin_key_file(default_pidfile(sup.port)).read_text().strip()
    r = httpx.post(
        sup.url + "/api/cluster/hosts",
        json={"name": "x"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert r.status_code == 400 and "ssh" in r.json()["error"]["message"]
    gone = run_cli("remove-host", "nobody", "--url", sup.url)
    assert gone.returncode == 2 and "no node 'nobody'" in gone.stderr
