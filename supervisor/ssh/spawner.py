"""Actors on other machines, spawned over SSH with paramiko.

The cluster token and the actor config never appear on a command line (``ps`` shows
those to every user): the environment travels as one JSON line on the channel's stdin
and ``actors.runtime.boot`` answers with the actor's PID, which signals and kills then use.
Each remote process has two daemon threads relaying its output into the log.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
from collections import deque

import paramiko
import structlog

from supervisor.config.spec import HostSpec
from supervisor.logs.setup import relay_actor_line
from supervisor.ssh.connection import SSHConnector, close_connections
from supervisor.ssh.target import (
    DEFAULT_KNOWN_HOSTS,
    SSHError,
    SSHTarget,
    SSHTargetError,
    describe_failure,
    exit_code,
    load_ssh_config,
    parse_ssh_target,
    remote_command,
    resolve_endpoint,
)
from supervisor.supervision.spawner import ActorLaunch, actor_environment

__all__ = [
    "CONNECTION_LOST",
    "RemoteProcess",
    "SSHError",
    "SSHSpawner",
    "SSHTarget",
    "SSHTargetError",
    "close_connections",
    "parse_ssh_target",
]

log = structlog.get_logger()

CONNECTION_LOST = -255  # what wait() returns when the SSH connection, not the actor, ended
BOOT_TIMEOUT = 60.0  # from exec to the boot's {"pid": N} line
KILL_CONFIRM_TIMEOUT = 10.0


class SSHSpawner:
    """Spawns actors on one host over SSH; ``last_error`` says why that host is unreachable."""

    def __init__(
        self,
        host: HostSpec,
        *,
        known_hosts: str | None = None,
        accept_new_host_keys: bool = False,
        connect_timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
        ssh_config: str | None = None,
    ):
        self.host = host
        self.target = parse_ssh_target(host.ssh)
        self.connector = SSHConnector(
            host.name or host.ssh,
            resolve_endpoint(self.target, load_ssh_config(ssh_config)),
            known_hosts=known_hosts or DEFAULT_KNOWN_HOSTS,
            accept_new_host_keys=accept_new_host_keys,
            connect_timeout=connect_timeout,
            retries=retries,
            backoff=backoff,
        )

    @property
    def last_error(self) -> str | None:
        """The last failure reaching this host, None once a connection succeeded."""
        return self.connector.last_error

    async def spawn(self, launch: ActorLaunch) -> RemoteProcess:
        ssh, cfg = self.connector, launch.config
        await ssh.client()  # connected (with retries) before anything is started
        command = remote_command(cfg.kind, launch.python or self.host.python, self.host.workdir)
        env = actor_environment(launch, {})
        try:
            channel = await ssh.in_thread(ssh.exec_with_stdin, command, json.dumps(env))
        except SSHError:
            raise
        except Exception as exc:
            reason = describe_failure(exc)
            raise SSHError(f"{ssh.where}: cannot start {cfg.actor_id}: {reason}") from exc
        process = RemoteProcess(channel, launch, ssh)
        try:
            pid = await asyncio.wait_for(asyncio.shield(process.booted), BOOT_TIMEOUT)
        except TimeoutError:
            channel.close()
            raise SSHError(
                f"{ssh.where}: {cfg.actor_id} printed no PID within {BOOT_TIMEOUT:.0f} s "
                "of starting"
            ) from None
        log.info(
            "actor_spawned",
            actor_id=cfg.actor_id,
            node=cfg.node,
            pid=pid,
            kind=cfg.kind,
            address=ssh.endpoint.address,
            blas=env.get("LD_PRELOAD", "builtin"),
        )
        return process


class RemoteProcess:
    """An actor process on another host, known by its PID there."""

    def __init__(
        self,
        channel: paramiko.Channel,
        launch: ActorLaunch,
        connector: SSHConnector,
    ):
        self.pid = 0
        self.node = launch.config.node
        self.actor_id = launch.config.actor_id
        self._channel = channel
        self._ssh = connector
        self._loop = loop = asyncio.get_running_loop()
        self.booted: asyncio.Future[int] = loop.create_future()
        self._exit: asyncio.Future[int] = loop.create_future()
        self._stderr_tail: deque[str] = deque(maxlen=3)
        self._stderr = threading.Thread(
            target=self._relay_stderr, daemon=True, name=f"ssh-stderr-{self.actor_id}"
        )
        self._stderr.start()
        threading.Thread(
            target=self._read_stdout, daemon=True, name=f"ssh-stdout-{self.actor_id}"
        ).start()

    async def wait(self) -> int:
        """The remote exit status (``-N`` for signal N), or CONNECTION_LOST."""
        return await asyncio.shield(self._exit)

    def _may_run(self) -> bool:
        """Unknown after a lost connection: the actor may well outlive its SSH session."""
        if not self.pid:
            return False
        return not self._exit.done() or self._exit.result() == CONNECTION_LOST

    def send_signal(self, sig: int) -> None:
        if not self._may_run():
            return
        sent = asyncio.ensure_future(self._ssh.in_thread(self._ssh.signal_remote, self.pid, sig))
        sent.add_done_callback(lambda f: self._log_signal(f, sig))

    async def kill(self) -> None:
        """SIGKILL by PID, then wait for the exit; give up the channel if it never comes."""
        if self._may_run():
            try:
                result = await self._ssh.in_thread(
                    self._ssh.signal_remote, self.pid, signal.SIGKILL
                )
                self._log_signal_result(result, signal.SIGKILL)
            except Exception as exc:
                log.warning(
                    "ssh_kill_failed",
                    actor_id=self.actor_id,
                    node=self.node,
                    pid=self.pid,
                    reason=describe_failure(exc),
                )
            try:
                await asyncio.wait_for(asyncio.shield(self._exit), KILL_CONFIRM_TIMEOUT)
            except TimeoutError:
                log.warning(
                    "ssh_kill_unconfirmed",
                    actor_id=self.actor_id,
                    node=self.node,
                    pid=self.pid,
                    timeout=KILL_CONFIRM_TIMEOUT,
                )
                self._channel.close()  # wait() then returns CONNECTION_LOST
        await self.wait()

    def _log_signal(self, sent: asyncio.Future, sig: int) -> None:
        if sent.cancelled():
            return
        if sent.exception() is not None:
            log.warning(
                "ssh_signal_failed",
                actor_id=self.actor_id,
                node=self.node,
                pid=self.pid,
                signal=sig,
                reason=describe_failure(sent.exception()),
            )
        else:
            self._log_signal_result(sent.result(), sig)

    def _log_signal_result(self, result: tuple[int, str], sig: int) -> None:
        status, err = result
        if status and not (self._exit.done() and "no such process" in err.lower()):
            log.warning(
                "ssh_signal_failed",
                actor_id=self.actor_id,
                node=self.node,
                pid=self.pid,
                signal=sig,
                reason=err or f"kill exited {status}",
            )

    # ------------------------------------------------------- reader threads

    def _post(self, fn, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def _line(self, raw: bytes, stream: str) -> None:
        self._post(
            lambda: relay_actor_line(
                raw.decode(errors="replace"), actor_id=self.actor_id, node=self.node, stream=stream
            )
        )

    def _relay_stderr(self) -> None:
        for raw in self._channel.makefile_stderr("rb"):
            self._stderr_tail.append(raw.decode(errors="replace").strip())
            self._line(raw, "stderr")

    def _read_stdout(self) -> None:
        stdout = self._channel.makefile("rb")
        for raw in stdout:  # a login script may print first: the PID line is the boot's
            pid = _boot_pid(raw)
            if pid:
                self.pid = pid
                self._post(_settle, self.booted, pid)
                break
            self._line(raw, "stdout")
        for raw in stdout:
            self._line(raw, "stdout")
        code = self._exit_status()
        self._stderr.join(timeout=2.0)  # its last lines are relayed before wait() returns
        if not self.booted.done():
            said = "; ".join(line for line in self._stderr_tail if line)
            why = f"exited with status {code} before printing its PID" + (
                f": {said}" if said else ""
            )
            self._post(_settle, self.booted, SSHError(f"{self._ssh.where}: {self.actor_id} {why}"))
        self._post(_settle, self._exit, code)

    def _exit_status(self) -> int:
        status = self._channel.recv_exit_status()
        if status != -1:
            return exit_code(status)
        transport = self._channel.get_transport()
        cause = transport.get_exception() if transport is not None else None
        reason = (
            "SSH connection lost"
            if transport is None or not transport.is_active()
            else "SSH channel closed without an exit status"
        )
        if cause is not None:
            reason += f" ({describe_failure(cause)})"
        self._ssh.note_error(f"{self._ssh.where}: {reason}")
        self._post(
            lambda: log.warning(
                "ssh_connection_lost",
                actor_id=self.actor_id,
                node=self.node,
                pid=self.pid,
                reason=reason,
            )
        )
        return CONNECTION_LOST


def _settle(future: asyncio.Future, outcome) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
        future.exception()  # spawn may have given up on it already: never "never retrieved"
    else:
        future.set_result(outcome)


def _boot_pid(raw: bytes) -> int:
    try:
        said = json.loads(raw)
    except ValueError:
        return 0
    pid = said.get("pid") if isinstance(said, dict) else None
    return pid if type(pid) is int and pid > 0 else 0
