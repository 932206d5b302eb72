"""Shared fixtures: free ports, and real `supervisor start` processes ended by PID."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent


# What makes a test end-to-end (marker `e2e`; `pytest -m "not e2e"` is the fast loop): its file
# is tests/test_e2e_*.py, or it asks for a fixture that starts real processes, or it carries
# @pytest.mark.e2e itself because it starts an actor, the CLI or rank peers without a fixture.
E2E_FIXTURES = frozenset({"sup", "start_supervisor", "sshd"})
# Tests that spawn actors through a ChildSupervisor in a module another change owns this round;
# listed by name so the module's one in-process test stays fast. A stale name is an error.
E2E_BY_NAME = {
    "test_supervision.py": frozenset(
        {
            "test_children_start_and_report_heartbeats",
            "test_kill_9_of_one_child_restarts_all_children_one_for_all",
            "test_sigstop_is_detected_by_heartbeat_silence",
            "test_restart_intensity_exceeded_marks_group_failed",
            "test_wrong_token_is_refused_and_the_actor_exits",
            "test_stop_ends_every_child",
        }
    ),
}


def is_e2e(item: pytest.Item) -> bool:
    file = item.path.name
    return (
        file.startswith("test_e2e_")
        or bool(E2E_FIXTURES.intersection(getattr(item, "fixturenames", ())))
        or getattr(item, "originalname", item.name) in E2E_BY_NAME.get(file, ())
        or item.get_closest_marker("e2e") is not None
    )


def pytest_collection_modifyitems(config, items):
    modules = {}
    for item in items:
        if is_e2e(item):
            item.add_marker(pytest.mark.e2e)
        if item.path.name in E2E_BY_NAME and getattr(item, "module", None) is not None:
            modules[item.path.name] = item.module
    for file, module in modules.items():
        if stale := sorted(n for n in E2E_BY_NAME[file] if not hasattr(module, n)):
            raise pytest.UsageError(f"tests/conftest.py E2E_BY_NAME: no {stale} in {file}")


def pytest_collection_finish(session):
    # Collection leaves ~10^6 long-lived objects (test items, every imported library) that each
    # full gc pass would walk again: the engine's gc.collect() at stop cost 0.4 s per test.
    # Frozen, they are skipped; what the tests allocate afterwards is collected as before.
    gc.collect()
    gc.freeze()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str, interval: float = 0.05):
    """Poll ``condition`` until it returns a truthy value or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


async def until(condition, timeout: float, what: str) -> None:
    """``wait_for`` for async tests: poll without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real `supervisor` command line with ``args``."""
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def http_json(url: str, timeout: float = 5.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


class RunningSupervisor:
    """A `supervisor start` child process; every PID it or its children had is ended."""

    def __init__(
        self,
        tmp: Path,
        hostfile: dict,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ):
        self.port = free_port()
        api = {**hostfile.get("api", {}), "host": "127.0.0.1", "port": self.port}
        hostfile = {**hostfile, "api": api}  # a test's limits kept, its address replaced
        self.hostfile_path = tmp / "hostfile.json"
        self.hostfile_path.write_text(json.dumps(hostfile))
        self.log_path = tmp / "supervisor.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "supervisor",
                "start",
                str(self.hostfile_path),
                *(extra_args or []),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self._seen: dict[int, psutil.Process] = {self.proc.pid: psutil.Process(self.proc.pid)}

    def remember_children(self) -> set[int]:
        """Record every descendant (psutil keeps their start time, so a reused PID is safe)."""
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            kids = []
        for kid in kids:
            self._seen.setdefault(kid.pid, kid)
        return set(self._seen)

    def status(self) -> dict:
        self.remember_children()
        return http_json(self.url + "/api/cluster/status")[1]

    def health(self) -> tuple[int, dict]:
        return http_json(self.url + "/health")

    def wait_healthy(self, timeout: float = 120.0) -> None:
        def healthy():
            if self.proc.poll() is not None:
                raise AssertionError(f"supervisor exited early:\n{self.log_tail()}")
            try:
                return self.health()[0] == 200
            except OSError:
                return False

        wait_for(healthy, timeout, "the supervisor to be healthy")
        self.remember_children()

    def actor(self, kind: str = "generation", group: str | None = None) -> dict:
        for a in self.status()["actors"]:
            if a["kind"] == kind and (group is None or a["group"] == group):
                return a
        raise AssertionError(f"no {kind} actor in status")

    def log_lines(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self, timeout: float = 30.0) -> int | None:
        self.remember_children()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for process in self._seen.values():
            try:
                process.kill()  # psutil checks it is still the process we saw
            except psutil.Error:
                pass
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def sup(tmp_path_factory):
    """One demo supervisor shared by the tests that only send it requests (never kill it)."""
    running = RunningSupervisor(tmp_path_factory.mktemp("shared"), demo_hostfile(max_batch=16))
    try:
        running.wait_healthy()
        yield running
    finally:
        running.stop()


@pytest.fixture
def start_supervisor(tmp_path):
    started: list[RunningSupervisor] = []

    def start(hostfile: dict, **kwargs) -> RunningSupervisor:
        sub = tmp_path / f"sup{len(started)}"
        sub.mkdir()
        sup = RunningSupervisor(sub, hostfile, **kwargs)
        started.append(sup)
        return sup

    yield start
    for sup in started:
        sup.stop()


def demo_hostfile(**extra) -> dict:
    return {"hosts": [{"ssh": "localhost"}], "model": "demo:tiny", **extra}
