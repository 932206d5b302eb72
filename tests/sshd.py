"""A real OpenSSH server on 127.0.0.1 for tests: generated keys, ended by PID.

``stop()`` and ``start()`` take the server down and bring it back on the same port with the
same keys, as a host that reboots.

A test module gets the ``sshd`` fixture with ``from tests.sshd import sshd_fixture  # noqa: F401``
(named apart from the fixture so that test parameters do not shadow the import).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")


@dataclass
class Sshd:
    """A running sshd: where it listens, the client key it accepts, its host key."""

    host: str
    port: int
    client_key: Path
    host_key_line: str  # a known_hosts line for this server's host key
    pid: int
    log_path: Path
    config: Path
    remembered: list[psutil.Process] = field(default_factory=list)
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self, timeout: float = 10.0) -> None:
        """Run ``/usr/sbin/sshd -D -e`` on this server's port; return once it answers."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.pid = self.proc.pid
        _wait_listening(self.proc, self.port, self.log_path, timeout)

    def stop(self) -> None:
        """End the server and every session it forked, by PID: the port refuses connections."""
        if self.proc is None:
            return
        sessions = self.session_processes()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        _end(sessions)

    def write_known_hosts(self, path: Path) -> Path:
        path.write_text(self.host_key_line + "\n")
        return path

    def write_ssh_config(self, path: Path, alias: str) -> Path:
        """An ssh_config naming this server ``alias`` (HostName, Port, User, IdentityFile)."""
        path.write_text(
            f"Host {alias}\n  HostName {self.host}\n  Port {self.port}\n  User root\n"
            f"  IdentityFile {self.client_key}\n"
        )
        return path

    def remember(self, pid: int | None) -> None:
        """A process the test saw on the server side, ended by PID at teardown."""
        if pid:
            try:
                self.remembered.append(psutil.Process(pid))  # keeps its start time: no reuse
            except psutil.NoSuchProcess:
                pass

    def session_processes(self) -> list[psutil.Process]:
        """Every process the server forked (connection monitors, shells, actors)."""
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )


def _sshd_config(tmp: Path, port: int, host_key: Path) -> Path:
    config = tmp / "sshd_config"
    config.write_text(
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {host_key}\n"
        f"PidFile {tmp / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "StrictModes no\n"
        "UsePAM no\n"
        "PrintMotd no\n"
        "Subsystem sftp internal-sftp\n"  # model transfers and bootstrap copy files over SFTP
        # Several test "nodes" share one server and so one pooled connection: their actors'
        # sessions and the files in flight add up past OpenSSH's default of 10.
        "MaxSessions 64\n"
        "LogLevel VERBOSE\n"
    )
    return config


def _banner(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
        return s.recv(64)


def _wait_listening(proc: subprocess.Popen, port: int, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            if _banner(port).startswith(b"SSH-2.0-"):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"sshd did not answer on port {port} within {timeout} s")
        time.sleep(0.02)  # polling the port, bounded by the deadline


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE  # dead; reaping is init's business
    except psutil.NoSuchProcess:
        return True


def _end(processes: list[psutil.Process], timeout: float = 5.0) -> None:
    for process in processes:
        try:
            process.kill()  # psutil checks it is still the process it saw (no PID reuse)
        except psutil.Error:
            pass
    deadline = time.monotonic() + timeout
    while not all(_gone(p) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.fixture(name="sshd")
def sshd_fixture(tmp_path_factory):
    """Start ``/usr/sbin/sshd -D -e`` on a free port; yield an ``Sshd``; end it by PID."""
    if not os.path.exists(SSHD):
        pytest.skip(f"{SSHD} is missing; install it with: apt-get install openssh-server")
    with running_sshd(tmp_path_factory.mktemp("sshd")) as running:
        yield running


@contextlib.contextmanager
def running_sshd(tmp: Path) -> Iterator[Sshd]:
    """An ``Sshd`` with its keys and config in ``tmp``, ended by PID on leaving (benchmarks
    use it outside pytest: ops/bench_models.py)."""
    host_key, client_key = tmp / "host_ed25519", tmp / "client_ed25519"
    _keygen(host_key)
    _keygen(client_key)
    (tmp / "authorized_keys").write_text((tmp / "client_ed25519.pub").read_text())
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    port = _free_port()
    key_type, key_data = (tmp / "host_ed25519.pub").read_text().split()[:2]
    running = Sshd(
        host="127.0.0.1",
        port=port,
        client_key=client_key,
        host_key_line=f"[127.0.0.1]:{port} {key_type} {key_data}",
        pid=0,
        log_path=tmp / "sshd.log",
        config=_sshd_config(tmp, port, host_key),
    )
    try:
        running.start()
        yield running
    finally:
        running.stop()
        _end(running.remembered)  # may be orphans whose session is already gone
