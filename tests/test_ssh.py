"""SSH spawning against a real OpenSSH server on 127.0.0.1 (pure parts: test_ssh_target)."""

from __future__ import annotations

import asyncio
import secrets
import signal
import socket
import sys
import time
from pathlib import Path

import paramiko
import psutil
import pytest
import structlog

from actors.protocol.messages import ActorConfig
from supervisor.config.spec import HostSpec
from supervisor.control.server import ControlServer
from supervisor.ssh.spawner import (
    CONNECTION_LOST,
    RemoteProcess,
    SSHError,
    SSHSpawner,
    close_connections,
)
from supervisor.state import ClusterState
from supervisor.state.events import GroupDeclared
from supervisor.supervision.child import ChildSpec, Timeouts
from supervisor.supervision.policy import SupervisorFlags
from supervisor.supervision.spawner import ActorLaunch, HostUnreachable, openblas_path
from supervisor.supervision.supervisor import ChildSupervisor
from tests.conftest import until
from tests.sshd import Sshd, sshd_fixture  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
ALIAS = "testnode"


@pytest.fixture(autouse=True)
def _fresh_connections():
    yield
    close_connections()


def make_spawner(
    server: Sshd,
    tmp: Path,
    *,
    ssh: str = ALIAS,
    known: bool = True,
    workdir: str | None = str(ROOT),
    **options,
) -> SSHSpawner:
    config = server.write_ssh_config(tmp / "ssh_config", ALIAS)
    known_hosts = tmp / "known_hosts"
    if known:
        server.write_known_hosts(known_hosts)
    host = HostSpec(ssh=ssh, name="n1", python=sys.executable, workdir=workdir)
    return SSHSpawner(host, known_hosts=str(known_hosts), ssh_config=str(config), **options)


class Recording:
    """Wraps a spawner and keeps every process it started."""

    def __init__(self, spawner: SSHSpawner, server: Sshd):
        self.spawner, self.server = spawner, server
        self.processes: list[RemoteProcess] = []

    async def spawn(self, launch: ActorLaunch) -> RemoteProcess:
        process = await self.spawner.spawn(launch)
        self.server.remember(process.pid)
        self.processes.append(process)
        return process


class SSHTree:
    """A control server and a supervisor over one memory actor spawned over SSH."""

    def __init__(self, spawner: SSHSpawner, server: Sshd, env: dict[str, str] | None = None):
        self.token = secrets.token_hex(16)
        self.spawner = Recording(spawner, server)
        self.state = ClusterState()
        self.env = env or {}

    async def __aenter__(self):
        self.control = ControlServer(self.token, heartbeat_interval=0.2)
        _, port = await self.control.start()
        config = ActorConfig(
            actor_id="n1.memory",
            kind="memory",
            node="n1",
            control_host="127.0.0.1",
            control_port=port,
        )
        self.state.apply(GroupDeclared("g", "none", ["n1"], "tensor", "ring"))
        self.sup = ChildSupervisor(
            "g",
            [ChildSpec(config, self.spawner, env=self.env)],
            control=self.control,
            state=self.state,
            token=self.token,
            group="g",
            flags=SupervisorFlags("one_for_one", backoff_initial=0.05, backoff_max=0.2),
            timeouts=Timeouts(heartbeat=3.0),
        )
        self.task = asyncio.create_task(self.sup.run())
        return self

    async def __aexit__(self, *exc):
        await self.sup.stop(grace=5.0)
        await asyncio.wait_for(self.task, 20)
        await self.control.close()

    async def ready(self, timeout: float = 30.0) -> RemoteProcess:
        try:
            if not await self.state.wait_for(lambda: self.sup.leader is not None, timeout):
                raise TimeoutError
        except TimeoutError:
            group, actor = self.state.groups["g"], self.state.actors.get("n1.memory")
            raise AssertionError(
                f"not ready within {timeout:.0f} s: group {group.state!r} ({group.reason}), "
                f"restarts {group.restarts}; actor {actor}; spawned PIDs "
                f"{[p.pid for p in self.spawner.processes]}; sshd log:\n"
                f"{self.spawner.server.log_tail(15)}"
            ) from None
        return self.spawner.processes[-1]


def ended(pid: int) -> bool:
    """Gone, or a zombie nobody reaped yet."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def connections_accepted(server: Sshd) -> int:
    return server.log_path.read_text().count("Accepted publickey")


def cmdlines() -> list[str]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        found.append(" ".join(process.info["cmdline"] or ()))
    return found


# ---------------------------------------------------------------- real sshd


async def test_memory_actor_over_ssh_heartbeats_and_restarts_after_kill_9(sshd, tmp_path):
    with structlog.testing.capture_logs() as logs:
        async with SSHTree(make_spawner(sshd, tmp_path), sshd) as tree:
            first = await tree.ready()
            assert first.pid == tree.sup.leader.pid, "the recorded PID is the one that said Hello"
            assert "actors" in Path(f"/proc/{first.pid}/cmdline").read_text()
            assert "sshd" in " ".join(p.name() for p in psutil.Process(first.pid).parents())
            assert not [c for c in cmdlines() if tree.token in c or "control_port" in c]
            await until(
                lambda: tree.state.actors["n1.memory"].vitals.mem_total > 0, 10, "heartbeat vitals"
            )

            first.send_signal(signal.SIGKILL)  # `kill -s KILL PID` over its own channel
            assert await asyncio.wait_for(first.wait(), 10) == -signal.SIGKILL
            await until(lambda: tree.state.groups["g"].restarts == 1, 10, "a restart")
            second = await tree.ready()
            assert second.pid != first.pid and ended(first.pid)
            assert connections_accepted(sshd) == 1, "one connection for all of the host's work"
        assert await asyncio.wait_for(second.wait(), 10) == 0, "Shutdown ends it cleanly"
    boots = [e for e in logs if e["event"] == "actor_boot"]
    assert len(boots) == 2
    assert boots[0]["actor_id"] == "n1.memory" and boots[0]["node"] == "n1"
    assert boots[0]["source"] == "actor" and boots[0]["pid"] == first.pid
    assert any(e["event"] == "actor_spawned" and e["pid"] == first.pid for e in logs)


@pytest.mark.skipif(openblas_path() is None, reason="needs Debian's OpenBLAS to preload")
async def test_ld_preload_reexecs_and_keeps_the_recorded_pid(sshd, tmp_path):
    blas = openblas_path()
    async with SSHTree(make_spawner(sshd, tmp_path), sshd, env={"LD_PRELOAD": blas}) as tree:
        process = await tree.ready()
        assert process.pid == tree.sup.leader.pid
        argv = Path(f"/proc/{process.pid}/cmdline").read_text().rstrip("\0").split("\0")
        assert argv[-3:] == ["-m", "actors", "memory"], "boot exec'd itself into the actor"
        assert blas in Path(f"/proc/{process.pid}/maps").read_text()
        environ = Path(f"/proc/{process.pid}/environ").read_bytes()  # given to execve: fine
        assert tree.token.encode() in environ
        assert not [c for c in cmdlines() if tree.token in c]


async def test_connection_drop_is_a_distinct_exit_and_the_actor_restarts(sshd, tmp_path):
    spawner = make_spawner(sshd, tmp_path)
    with structlog.testing.capture_logs() as logs:
        async with SSHTree(spawner, sshd) as tree:
            first = await tree.ready()
            for process in sshd.session_processes():  # the connection's sshd, not the actor
                if process.name() == "sshd":
                    process.kill()
            assert await asyncio.wait_for(first.wait(), 10) == CONNECTION_LOST
            assert "SSH connection lost" in spawner.last_error
            await until(lambda: tree.state.groups["g"].restarts == 1, 15, "a restart")
            second = await tree.ready()
            assert second.pid != first.pid
            assert spawner.last_error is None, "a new connection clears the failure"
            assert connections_accepted(sshd) == 2, "reconnected once"
            await until(lambda: ended(first.pid), 10, "the old actor killed by PID")
    lost = [e for e in logs if e["event"] == "ssh_connection_lost"]
    assert lost and lost[0]["node"] == "n1" and lost[0]["pid"] == first.pid


async def test_spawners_of_one_host_share_one_connection(sshd, tmp_path):
    spawners = [make_spawner(sshd, tmp_path) for _ in range(4)]
    clients = await asyncio.gather(*(s.connector.client() for s in spawners))
    assert len({id(c) for c in clients}) == 1
    assert connections_accepted(sshd) == 1


async def test_boot_failure_says_why_and_relays_stderr(sshd, tmp_path):
    spawner = make_spawner(sshd, tmp_path, workdir="/nonexistent-dir")
    config = ActorConfig(
        actor_id="n1.memory", kind="memory", node="n1", control_host="127.0.0.1", control_port=9
    )
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(SSHError) as failed:
            await spawner.spawn(ActorLaunch(config, token="t"))
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith("node n1 (127.0.0.1:") and "/nonexistent-dir" in message
    relayed = [e for e in logs if e["event"] == "actor_output"]
    assert relayed and relayed[0]["stream"] == "stderr" and relayed[0]["node"] == "n1"
    assert relayed[0]["actor_id"] == "n1.memory" and "nonexistent-dir" in relayed[0]["line"]


async def test_unknown_host_key_is_refused_with_the_keyscan_hint(sshd, tmp_path):
    spawner = make_spawner(sshd, tmp_path, known=False)
    started = time.monotonic()
    with pytest.raises(SSHError) as failed:
        await spawner.connector.client()
    message = str(failed.value)
    assert "\n" not in message and time.monotonic() - started < 5, "not retried"
    assert message.startswith(f"node n1 (127.0.0.1:{sshd.port}): unknown SSH host key")
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> " in message
    assert '"accept_new_host_keys": true' in message
    assert spawner.last_error == message
    assert not isinstance(failed.value, HostUnreachable), "a host key refusal is a failure"
    assert not (tmp_path / "known_hosts").exists()


async def test_accept_new_host_keys_connects_and_writes_the_key(sshd, tmp_path):
    spawner = make_spawner(sshd, tmp_path, known=False, accept_new_host_keys=True)
    client = await spawner.connector.client()
    assert client.get_transport().is_active()
    written = (tmp_path / "known_hosts").read_text().split()
    assert written == sshd.host_key_line.split()
    close_connections()
    strict = make_spawner(sshd, tmp_path, known=False)  # the written file is now enough
    assert (await strict.connector.client()).get_transport().is_active()


async def test_changed_host_key_is_refused_even_with_accept_new(sshd, tmp_path):
    other = paramiko.Ed25519Key.from_private_key_file(str(sshd.client_key))
    (tmp_path / "known_hosts").write_text(
        f"[127.0.0.1]:{sshd.port} ssh-ed25519 {other.get_base64()}\n"
    )
    spawner = make_spawner(sshd, tmp_path, known=False, accept_new_host_keys=True)
    with pytest.raises(SSHError) as failed:
        await spawner.connector.client()
    message = str(failed.value)
    assert "\n" not in message and "host key CHANGED" in message and "attack" in message
    assert f"ssh-keygen -R '[127.0.0.1]:{sshd.port}'" in message
    assert not isinstance(failed.value, HostUnreachable)


async def test_unreachable_host_fails_after_retries_naming_node_and_reason(tmp_path):
    (tmp_path / "ssh_config").write_text("")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        host = HostSpec(ssh=f"root@127.0.0.1:{port}", name="mac2")
        spawner = SSHSpawner(
            host,
            known_hosts=str(tmp_path / "known_hosts"),
            retries=2,
            backoff=0.01,
            ssh_config=str(tmp_path / "ssh_config"),
        )
        started = time.monotonic()
        with structlog.testing.capture_logs() as logs:
            with pytest.raises(SSHError) as failed:
                await spawner.spawn(
                    ActorLaunch(
                        ActorConfig(
                            actor_id="mac2.memory",
                            kind="memory",
                            node="mac2",
                            control_host="127.0.0.1",
                            control_port=9,
                        ),
                        token="t",
                    )
                )
    message = str(failed.value)
    assert time.monotonic() - started < 3
    assert message == (
        f"node mac2 (127.0.0.1:{port}): connection refused; is sshd running "
        f"and listening on port {port}?; gave up after 3 attempts"
    )
    assert [e["attempt"] for e in logs if e["event"] == "ssh_connect_failed"] == [1, 2, 3]
    assert "connection refused" in spawner.last_error
    # No host to talk to: the supervisor waits for it rather than counting a failure.
    assert isinstance(failed.value, HostUnreachable)
    assert failed.value.reason == (
        f"connection refused; is sshd running and listening on port {port}?"
    )


async def test_a_key_the_server_does_not_accept_is_an_authentication_failure(sshd, tmp_path):
    sshd.write_known_hosts(tmp_path / "known_hosts")
    stranger = tmp_path / "stranger_ed25519"
    (tmp_path / "ssh_config").write_text(
        f"Host n1\n  HostName 127.0.0.1\n  Port {sshd.port}\n  IdentityFile {stranger}\n"
    )
    stranger.write_bytes((sshd.log_path.parent / "host_ed25519").read_bytes())  # not authorized
    stranger.chmod(0o600)
    spawner = SSHSpawner(
        HostSpec(ssh="alice@n1"),
        known_hosts=str(tmp_path / "known_hosts"),
        retries=1,
        backoff=0.01,
        ssh_config=str(tmp_path / "ssh_config"),
    )
    with pytest.raises(SSHError) as failed:
        await spawner.connector.client()
    assert str(failed.value).startswith(
        f"node alice@n1 (127.0.0.1:{sshd.port}): authentication failed for alice"
    )
    assert "gave up after 2 attempts" in str(failed.value)
    assert not isinstance(failed.value, HostUnreachable), "the host answered: a failure"


async def test_no_key_to_offer_says_so(sshd, tmp_path, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/id_* to fall back on
    sshd.write_known_hosts(tmp_path / "known_hosts")
    (tmp_path / "ssh_config").write_text("")
    host = HostSpec(ssh=f"root@127.0.0.1:{sshd.port}", name="n1")
    spawner = SSHSpawner(
        host,
        known_hosts=str(tmp_path / "known_hosts"),
        retries=0,
        ssh_config=str(tmp_path / "ssh_config"),
    )
    with pytest.raises(SSHError) as failed:
        await spawner.connector.client()
    assert "no SSH key to offer for root" in str(failed.value)
    assert "gave up after 1 attempts" in str(failed.value)
