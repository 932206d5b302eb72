"""`supervisor status | nodes | monitor` against a real supervisor; `monitor` in a real
terminal (a detached tmux session), redrawing, riding out a lost server, ending on Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import ROOT, demo_hostfile, run_cli, wait_for


def _ask_once(sup) -> dict:
    with httpx.Client(base_url=sup.url, timeout=60) as client:
        answer = client.post(
            "/v1/chat/completions",
            json={"model": "demo:tiny", "messages": [{"role": "user", "content": "hi"}],
                  "max_tokens": 8},
        )  # fmt: skip
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_status_shows_the_node_its_memory_and_the_group(start_supervisor):
    sup = start_supervisor(demo_hostfile())
    sup.wait_healthy()
    _ask_once(sup)
    wait_for(lambda: sup.status()["nodes"][0]["mem_total"], 30, "a memory report")
    name = sup.status()["nodes"][0]["name"]
    shown = run_cli("status", "--url", sup.url)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("uptime ") and "requests 1" in lines[0]
    node = next(x for x in lines if x.startswith(f"{name} "))
    assert node.split()[1:3] == ["up", "ok"] and "GiB" in node and "%" in node, node
    group = next(x for x in lines if x.startswith("main "))
    assert group.split()[1:3] == ["ready", "demo:tiny"], group
    assert any(x.startswith("main.rank0 ") for x in lines)
    assert any("no link figures yet" in x for x in lines)

    raw = run_cli("status", "--url", sup.url, "--json")
    assert raw.returncode == 0, raw.stderr
    body = json.loads(raw.stdout)
    assert body["nodes"][0]["name"] == name and body["groups"][0]["name"] == "main"
    assert body["requests_total"] == 1

    nodes = run_cli("nodes", "--url", sup.url)
    assert nodes.returncode == 0 and "main.rank0" in nodes.stdout and "GiB" in nodes.stdout
    assert json.loads(run_cli("nodes", "--url", sup.url, "--json").stdout)[0]["name"] == name

    # monitor --json: one status body per line, every interval, until Ctrl-C (SIGINT)
    monitor = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "monitor", "--url", sup.url, "--json",
         "--interval", "0.2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        bodies = [json.loads(monitor.stdout.readline()) for _ in range(2)]
        assert bodies[1]["uptime_seconds"] > bodies[0]["uptime_seconds"]
        monitor.send_signal(signal.SIGINT)
        assert monitor.wait(30) == 0
        assert "Traceback" not in monitor.stderr.read()
    finally:
        monitor.kill()
        monitor.wait()


@pytest.mark.e2e  # runs the CLI
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "--bogus"], "supervisor: unrecognized arguments: --bogus"),
        (["monitor", "--interval", "0"], "interval 0 is outside 0.1..3600"),
        (["monitor", "--interval", "soon"], "expected seconds, got 'soon'"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


@pytest.mark.e2e  # runs the CLI
def test_status_with_nobody_answering_is_one_line_exit_1():
    from tests.conftest import free_port

    result = run_cli("status", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert result.stderr.startswith("supervisor: no supervisor answering at ")
    assert len(result.stderr.strip().splitlines()) == 1


class Tmux:
    """A tmux server of its own (``-S``), one detached session; ended by PID."""

    def __init__(self, command: list[str], socket: Path):
        if shutil.which("tmux") is None:
            if sys.platform == "darwin":
                pytest.skip("tmux is not installed (brew install tmux)")
            pytest.fail("tmux is not installed; ops/test installs it")
        self.socket = str(socket)  # in the test's temp dir: nothing left in /tmp/tmux-UID
        self.env = {**os.environ, "TERM": "xterm-256color"}
        # The exit code is printed by the pane's shell: tmux 3.3 may mark a pane dead and
        # never learn its status (#{pane_dead_status} stays empty).
        shell = " ".join(f"'{part}'" for part in command) + "; echo exit-code=$?"
        # remain-on-exit: the pane (and its exit status) stays after the command ends
        self.tmux("new-session", "-d", "-s", "t", "-x", "120", "-y", "50", "-c", str(ROOT),
                  shell, ";", "set-option", "-t", "t", "remain-on-exit", "on")  # fmt: skip
        self.server = psutil.Process(int(self.tmux("display-message", "-p", "#{pid}")))
        self.pane = psutil.Process(int(self.tmux("display-message", "-p", "#{pane_pid}")))

    def tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-S", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=10,
            env=self.env,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t")

    def exit_code(self) -> int | None:
        """The command's exit code once it has ended (its shell prints it), else None."""
        found = re.search(r"exit-code=(\d+)", self.screen())
        return int(found.group(1)) if found else None

    def close(self) -> None:
        for process in (self.pane, self.server):
            try:
                for kid in process.children(recursive=True):
                    kid.kill()
                process.kill()
            except psutil.Error:
                pass


def _uptime(screen: str) -> str | None:
    return next((x for x in screen.splitlines() if x.startswith("uptime ")), None)


def test_monitor_redraws_survives_a_lost_server_and_ends_on_ctrl_c(start_supervisor, tmp_path):
    sup = start_supervisor(demo_hostfile())
    sup.wait_healthy()
    monitor = [sys.executable, "-m", "supervisor", "monitor", "--url", sup.url, "--interval", "0.2"]
    term = Tmux(monitor, tmp_path / "tmux.sock")
    try:
        name = sup.status()["nodes"][0]["name"]
        first = wait_for(lambda: _uptime(term.screen()), 30, "the monitor's first frame")
        screen = term.screen()
        assert any(x.startswith(f"{name} ") and "up" in x for x in screen.splitlines()), screen
        assert any(x.startswith("main ") and "ready" in x for x in screen.splitlines()), screen
        # redrawn in place: the uptime moves on, and the view is on screen once
        later = wait_for(
            lambda: (u := _uptime(term.screen())) != first and u, 30, "the uptime to move on"
        )
        assert later != first
        assert term.screen().count("supervisor monitor ·") == 1

        sup.stop()
        wait_for(lambda: "unreachable" in term.screen(), 30, "the monitor to say unreachable")
        assert term.exit_code() is None  # still running, retrying
        assert _uptime(term.screen()) is not None  # the last view stays under the line

        term.tmux("send-keys", "-t", "t", "C-c")
        wait_for(lambda: term.exit_code() is not None, 30, "the monitor to end")
        assert term.exit_code() == 0
        assert "Traceback" not in term.screen() and "KeyboardInterrupt" not in term.screen()
    finally:
        term.close()
