"""`supervisor stop`: finds the running supervisor by its pidfile and ends it like Ctrl-C."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from supervisor.cli.pidfile import default_pidfile, port_of
from tests.conftest import demo_hostfile, free_port, run_cli, wait_for


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_stop_drains_and_ends_the_supervisor_and_every_actor(start_supervisor):
    sup = start_supervisor(demo_hostfile())
    sup.wait_healthy()
    pidfile = default_pidfile(sup.port)
    assert pidfile.read_text().strip() == str(sup.proc.pid)
    actors = [a["pid"] for a in sup.status()["actors"]]
    result = run_cli("stop", "--url", sup.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"supervisor: stopped (pid {sup.proc.pid})"
    assert sup.proc.wait(30) == 0
    for pid in actors:
        wait_for(lambda p=pid: _gone(p), 10, f"actor {pid} to end")
    assert not pidfile.exists()


@pytest.mark.e2e  # starts real processes without a fixture
def test_stop_with_nothing_running_is_one_line_exit_1():
    port = free_port()
    result = run_cli("stop", "--url", f"http://127.0.0.1:{port}")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"supervisor: no supervisor pidfile at {default_pidfile(port)}; is `supervisor start` "
        "running on this machine with that API port?"
    )


@pytest.mark.e2e  # starts real processes without a fixture
def test_a_stale_pidfile_is_named_and_removed(tmp_path):
    pidfile = tmp_path / "sup.pid"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    pidfile.write_text(f"{dead.pid}\n")
    result = run_cli("stop", "--pidfile", str(pidfile))
    assert result.returncode == 1
    assert "is gone; removed the stale file" in result.stderr
    assert not pidfile.exists()


@pytest.mark.e2e  # starts real processes without a fixture
def test_a_pidfile_naming_another_program_is_refused(tmp_path):
    pidfile = tmp_path / "sup.pid"
    pidfile.write_text(f"{os.getpid()}\n")  # pytest: alive, and not a supervisor
    result = run_cli("stop", "--pidfile", str(pidfile))
    assert result.returncode == 1
    assert "is not a supervisor" in result.stderr
    assert psutil.pid_exists(os.getpid())


def test_ports_are_read_from_urls():
    assert port_of("http://127.0.0.1:8080") == 8080
    assert port_of("127.0.0.1:9000") == 9000
    assert port_of("http://mac1.local") == 80
