"""Reaching a host over SSH: one shared paramiko connection per host, known_hosts checked.

paramiko blocks, so connecting and short commands run on a small thread pool of their
own (the event loop never waits on the network, and a slow host cannot starve the
loop's default executor).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import paramiko
import structlog

from supervisor.ssh.target import (
    ChangedHostKey,
    Endpoint,
    SSHError,
    SSHUnreachable,
    UnknownHostKey,
    describe_failure,
    display_path,
    is_unreachable,
    keyscan_hint,
)

log = structlog.get_logger()

KEEPALIVE_INTERVAL = 15

ssh_threads = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ssh")


class _Connections:
    """One paramiko client per endpoint, shared by every actor there; safe across threads."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[Endpoint, threading.Lock] = {}
        self._clients: dict[Endpoint, paramiko.SSHClient] = {}
        self.errors: dict[Endpoint, str] = {}

    def get(
        self, endpoint: Endpoint, connect: Callable[[], paramiko.SSHClient]
    ) -> paramiko.SSHClient:
        """The live client for ``endpoint``, connecting (once, for all callers) if needed."""
        with self._guard:
            lock = self._locks.setdefault(endpoint, threading.Lock())
        with lock:
            client = self._clients.get(endpoint)
            if client is not None and _alive(client):
                return client
            if client is not None:
                client.close()
            client = self._clients[endpoint] = connect()
            return client

    def close_all(self) -> None:
        with self._guard:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


_connections = _Connections()


def close_connections() -> None:
    """Close every pooled SSH connection (at cluster stop; remote actors are ended first)."""
    _connections.close_all()


def _alive(client: paramiko.SSHClient) -> bool:
    transport = client.get_transport()
    return transport is not None and transport.is_active()


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Unknown keys: refuse with the command that trusts them, or append when told to."""

    def __init__(self, connector: SSHConnector):
        self._connector = connector

    def missing_host_key(self, client, hostname, key) -> None:
        s = self._connector
        if not s.accept_new_host_keys:
            raise UnknownHostKey(
                f"{s.where}: unknown SSH host key ({key.get_name()} {key.fingerprint}); trust "
                f"it with: {keyscan_hint(s.endpoint, s.known_hosts)} (or set "
                f'"accept_new_host_keys": true)'
            )
        # Appended, not paramiko's save_host_keys: that rewrites the file without comments.
        os.makedirs(os.path.dirname(s.known_hosts) or ".", mode=0o700, exist_ok=True)
        with open(s.known_hosts, "a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)
        log.warning(
            "ssh_host_key_added",
            node=s.node,
            address=s.endpoint.address,
            key=f"{key.get_name()} {key.fingerprint}",
            known_hosts=s.known_hosts,
        )


class SSHConnector:
    """How to reach one host: its endpoint, host key rules, timeouts and retries."""

    def __init__(
        self,
        node: str,
        endpoint: Endpoint,
        *,
        known_hosts: str,
        accept_new_host_keys: bool = False,
        connect_timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
    ):
        self.node = node
        self.endpoint = endpoint
        self.known_hosts = os.path.expanduser(known_hosts)
        self.accept_new_host_keys = accept_new_host_keys
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.backoff = backoff

    @property
    def where(self) -> str:
        """``node NAME (host:port)``: how every message about this host starts."""
        return f"node {self.node} ({self.endpoint.address})"

    @property
    def last_error(self) -> str | None:
        """The last failure reaching this host, None once a connection succeeded."""
        return _connections.errors.get(self.endpoint)

    def note_error(self, message: str) -> None:
        _connections.errors[self.endpoint] = message

    async def in_thread(self, fn, *args):
        """Run blocking paramiko work on the SSH thread pool."""
        return await asyncio.get_running_loop().run_in_executor(ssh_threads, fn, *args)

    async def client(self) -> paramiko.SSHClient:
        """The host's shared connection, retried with exponential backoff.

        Raises SSHUnreachable when the last attempt found no host to talk to (the
        supervisor then waits for it), SSHError for any other refusal.
        """
        delay, reason, unreachable = self.backoff, "", False
        for attempt in range(1, self.retries + 2):
            try:
                client = await self.in_thread(_connections.get, self.endpoint, self.connect)
            except SSHError as exc:  # a host key problem: retrying cannot help
                self.note_error(str(exc))
                raise
            except Exception as exc:
                reason = describe_failure(exc, self.endpoint, self.connect_timeout)
                unreachable = is_unreachable(exc)
                self.note_error(f"{self.where}: {reason}")
                log.warning(
                    "ssh_connect_failed",
                    node=self.node,
                    address=self.endpoint.address,
                    attempt=attempt,
                    reason=reason,
                )
                if attempt <= self.retries:
                    await asyncio.sleep(delay)
                    delay *= 2
                continue
            _connections.errors.pop(self.endpoint, None)
            return client
        message = f"{self.where}: {reason}; gave up after {self.retries + 1} attempts"
        raise SSHUnreachable(message, reason) if unreachable else SSHError(message)

    def connect(self) -> paramiko.SSHClient:
        """One connection attempt (in a pool thread), host key checked against known_hosts."""
        ep = self.endpoint
        client = paramiko.SSHClient()
        try:
            if os.path.exists(self.known_hosts):
                self._load_known_hosts(client)
            client.set_missing_host_key_policy(_HostKeyPolicy(self))
            client.connect(
                ep.hostname,
                ep.port,
                username=ep.user,
                key_filename=list(ep.identity_files) or None,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
            )
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise ChangedHostKey(
                f"{self.where}: SSH host key CHANGED ({exc.key.get_name()} "
                f"{exc.key.fingerprint}, {display_path(self.known_hosts)} has "
                f"{exc.expected_key.fingerprint}); refused even with accept_new_host_keys, it "
                f"may be an attack; if the host was reinstalled, remove the old key with: "
                f"ssh-keygen -R '{ep.known_hosts_name}' -f {display_path(self.known_hosts)}"
            ) from None
        except BaseException:
            client.close()
            raise
        client.get_transport().set_keepalive(KEEPALIVE_INTERVAL)
        log.info("ssh_connected", node=self.node, address=ep.address, user=ep.user)
        return client

    def _load_known_hosts(self, client: paramiko.SSHClient) -> None:
        try:
            client.load_host_keys(self.known_hosts)
        except (OSError, paramiko.SSHException) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise SSHError(
                f"{self.where}: cannot read known_hosts {display_path(self.known_hosts)} ({why})"
            ) from None

    def exec_with_stdin(
        self, command: str, stdin_line: str, *, close_stdin: bool = True
    ) -> paramiko.Channel:
        """Start ``command`` on the live connection and give it one line of stdin (blocking);
        ``close_stdin`` False leaves stdin open for more (the doctor's clock ping)."""
        client = _connections.get(self.endpoint, self.connect)
        channel = client.get_transport().open_session(timeout=self.connect_timeout)
        try:
            channel.exec_command(command)
            channel.sendall(stdin_line.encode() + b"\n")
            if close_stdin:
                channel.shutdown_write()
        except BaseException:
            channel.close()
            raise
        return channel

    def signal_remote(self, pid: int, sig: int) -> tuple[int, str]:
        """``kill -s SIG PID`` over its own channel (blocking): (status, stderr)."""
        client = _connections.get(self.endpoint, self.connect)
        name = signal.Signals(sig).name.removeprefix("SIG")  # numbers differ macOS/Linux
        channel = client.get_transport().open_session(timeout=self.connect_timeout)
        channel.settimeout(self.connect_timeout)
        try:
            channel.exec_command(f"kill -s {name} {int(pid)}")
            if not channel.status_event.wait(self.connect_timeout):
                raise SSHError(
                    f"{self.where}: kill -s {name} {pid} got no answer within "
                    f"{self.connect_timeout:g} s"
                )
            status = channel.recv_exit_status()
            err = channel.recv_stderr(4096).decode(errors="replace").strip() if status else ""
            return status, err
        finally:
            channel.close()
