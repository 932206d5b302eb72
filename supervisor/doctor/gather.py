"""Gathering what ``supervisor doctor`` judges: each host probed once, all at the same time.

A host runs ``python -m actors --host-facts`` (``actors.doctor.probe``): locally as a child
process, remotely through the spawner's SSH exec path (the shared connection, known_hosts
checked, a fixed command line; the request travels on stdin). Nothing is started that
outlives the probe: a probe that overstays its deadline is killed (local: by PID) or its
channel closed (remote: the probe then reads EOF and ends).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import msgspec

from actors.protocol.host_facts import CLOCK_PING, ClockReply, FactsRequest, HostFacts
from supervisor.config.load import is_local
from supervisor.config.spec import ClusterSpec, HostSpec
from supervisor.doctor.needs import HostNeeds, host_needs

PROBE_TIMEOUT = 30.0  # exec to facts: Python start, ioreg and ibv_devinfo (5 s each at most)
WORKDIR_EXIT = 97  # the probe's sh says "cd workdir failed" with this status
MAX_PREAMBLE_LINES = 200  # a login script may print before the probe does
DOCTOR_RETRIES = 1  # a check wants a quick answer: one retry, whatever ssh.retries says

SSHFailureKind = Literal["unknown_key", "changed_key", "unreachable", "refused"]
ProbeFailureKind = Literal["python_missing", "workdir_missing", "not_installed", "failed"]


@dataclass(frozen=True)
class SSHFailure:
    kind: SSHFailureKind
    message: str
    fix_hint: str = ""  # the command that fixes it, when the failure knows it


@dataclass(frozen=True)
class ProbeFailure:
    kind: ProbeFailureKind
    message: str


@dataclass(frozen=True)
class Gathered:
    """One host's outcome: an SSH failure, a probe failure, or its facts and clock skew."""

    needs: HostNeeds
    where: str  # "local", or user@host:port
    python: str
    ssh_target: str = ""  # ``ssh -p P user@host`` for fix lines ("" when local)
    ssh: SSHFailure | None = None
    probe: ProbeFailure | None = None
    facts: HostFacts | None = None
    skew: float | None = None  # seconds, the host's clock minus this one's
    accept_new_host_keys: bool = False


class ProbeError(Exception):
    def __init__(self, failure: ProbeFailure):
        super().__init__(failure.message)
        self.failure = failure


class _Pipe(Protocol):
    """A running probe seen as lines: what both the local and the SSH probe offer."""

    def send(self, data: bytes) -> None: ...
    def close_input(self) -> None: ...
    def readline(self) -> bytes: ...
    def outcome(self) -> tuple[int | None, str]: ...  # exit status, stderr tail
    def abort(self) -> None: ...


async def gather_all(spec: ClusterSpec) -> tuple[Gathered, list[Gathered]]:
    """This machine (the reference versions and model sizes) and every host, concurrently."""
    models = tuple(dict.fromkeys(g.model for g in spec.groups))
    here = HostNeeds(HostSpec(ssh="localhost", name="this machine"), (), (), (), {})
    reference = probe_local(here, FactsRequest(models=models), sys.executable)
    hosts = [gather_host(spec, needs) for needs in host_needs(spec)]
    found = await asyncio.gather(reference, *hosts)
    return found[0], list(found[1:])


async def gather_host(spec: ClusterSpec, needs: HostNeeds) -> Gathered:
    host = needs.host
    if is_local(host):
        python = os.path.expanduser(host.python) if host.python else sys.executable
        return await probe_local(needs, needs.request(), python)
    return await probe_remote(spec, needs)


async def probe_local(needs: HostNeeds, request: FactsRequest, python: str) -> Gathered:
    base = Gathered(needs, "local", python)
    try:
        proc = subprocess.Popen(
            [python, "-u", "-m", "actors", "--host-facts"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except FileNotFoundError:
        return _failed(base, ProbeFailure("python_missing", f"{python}: no such file"))
    except PermissionError:
        return _failed(base, ProbeFailure("python_missing", f"{python}: not executable"))
    return await _converse(base, _LocalPipe(proc), request)


async def probe_remote(spec: ClusterSpec, needs: HostNeeds) -> Gathered:
    from supervisor.ssh.connection import SSHConnector
    from supervisor.ssh.target import (
        DEFAULT_KNOWN_HOSTS,
        SSHError,
        SSHUnreachable,
        load_ssh_config,
        parse_ssh_target,
        resolve_endpoint,
    )

    host = needs.host
    python = host.python or "python3"
    base = Gathered(needs, host.ssh, python, accept_new_host_keys=spec.ssh.accept_new_host_keys)
    try:
        endpoint = resolve_endpoint(parse_ssh_target(host.ssh), load_ssh_config(spec.ssh.config))
    except SSHError as exc:
        return _ssh_failed(base, SSHFailure("refused", str(exc)))
    port = "" if endpoint.port == 22 else f"-p {endpoint.port} "
    base = replace(
        base,
        where=f"{endpoint.user}@{endpoint.address}",
        ssh_target=f"ssh {port}{endpoint.user}@{endpoint.hostname}",
    )
    connector = SSHConnector(
        host.name,
        endpoint,
        known_hosts=spec.ssh.known_hosts or DEFAULT_KNOWN_HOSTS,
        accept_new_host_keys=False,  # the doctor writes nothing, known_hosts included
        connect_timeout=spec.ssh.connect_timeout,
        retries=min(spec.ssh.retries, DOCTOR_RETRIES),
        backoff=0.2,
    )
    try:
        await connector.client()
    except SSHUnreachable as exc:
        return _ssh_failed(base, SSHFailure("unreachable", str(exc)))
    except SSHError as exc:
        return _ssh_failed(base, _ssh_failure(exc, connector))
    command = probe_command(host.python, host.workdir)
    line = msgspec.json.encode(needs.request()).decode()
    try:
        channel = await connector.in_thread(
            lambda: connector.exec_with_stdin(command, line, close_stdin=False)
        )
    except Exception as exc:
        return _ssh_failed(base, SSHFailure("refused", f"{connector.where}: cannot exec: {exc}"))
    return await _converse(base, _SSHPipe(channel), None)


def _ssh_failure(exc: Exception, connector) -> SSHFailure:
    from supervisor.ssh.target import ChangedHostKey, UnknownHostKey, display_path, keyscan_hint

    if isinstance(exc, UnknownHostKey):
        return SSHFailure(
            "unknown_key", str(exc), keyscan_hint(connector.endpoint, connector.known_hosts)
        )
    if isinstance(exc, ChangedHostKey):
        name = connector.endpoint.known_hosts_name
        remove = f"ssh-keygen -R '{name}' -f {display_path(connector.known_hosts)}"
        return SSHFailure("changed_key", str(exc), remove)
    return SSHFailure("refused", str(exc))


def probe_command(python: str | None, workdir: str | None) -> str:
    """The fixed command line of the remote probe: paths from the (checked) hostfile, quoted
    for sh as the spawner quotes them; the request itself travels on stdin."""
    from supervisor.ssh.target import shell_path

    run = f"{shell_path(python or 'python3')} -u -m actors --host-facts"
    script = f"cd {shell_path(workdir)} || exit {WORKDIR_EXIT}; {run}" if workdir else run
    return f"/bin/sh -c {shlex.quote(script + '; exit $?')}"


async def _converse(base: Gathered, pipe: _Pipe, request: FactsRequest | None) -> Gathered:
    """Send the request (unless already sent), read the facts, then time one clock ping."""
    line = None if request is None else msgspec.json.encode(request) + b"\n"
    task = asyncio.get_running_loop().run_in_executor(None, _exchange, pipe, line, base.python)
    try:
        facts, skew = await asyncio.wait_for(asyncio.shield(task), PROBE_TIMEOUT)
    except TimeoutError:
        pipe.abort()  # the blocked read sees EOF: the thread ends
        await asyncio.gather(task, return_exceptions=True)
        why = f"the probe gave no answer within {PROBE_TIMEOUT:.0f} s"
        return _failed(base, ProbeFailure("failed", why))
    except ProbeError as exc:
        return _failed(base, exc.failure)
    finally:
        pipe.abort()
    return replace(base, facts=facts, skew=skew)


def _exchange(pipe: _Pipe, request: bytes | None, python: str) -> tuple[HostFacts, float]:
    """Blocking: the probe's side of the conversation (facts, then the clock)."""
    if request is not None:
        pipe.send(request)
    facts = None
    for _ in range(MAX_PREAMBLE_LINES):
        raw = pipe.readline()
        if not raw:
            raise ProbeError(classify_exit(*pipe.outcome(), python))
        try:
            facts = msgspec.json.decode(raw, type=HostFacts)
            break
        except msgspec.DecodeError:
            continue
    if facts is None:
        raise ProbeError(ProbeFailure("failed", "the probe printed no facts"))
    sent = time.time()
    pipe.send(CLOCK_PING.encode() + b"\n")
    pipe.close_input()
    raw = pipe.readline()
    answered = time.time()
    try:
        reply = msgspec.json.decode(raw, type=ClockReply)
    except msgspec.DecodeError:
        raise ProbeError(ProbeFailure("failed", "the probe did not answer the clock")) from None
    return facts, reply.time - (sent + answered) / 2  # the round trip halved


def classify_exit(status: int | None, stderr: str, python: str) -> ProbeFailure:
    """Why the probe ended before printing facts, from sh's status and the last stderr."""
    said = f" ({stderr})" if stderr else ""
    if status == 127:
        return ProbeFailure("python_missing", f"{python}: not found{said}")
    if status == 126:
        return ProbeFailure("python_missing", f"{python}: not executable{said}")
    if status == WORKDIR_EXIT:
        return ProbeFailure("workdir_missing", f"cannot cd to the workdir{said}")
    if "No module named" in stderr:  # actors itself, or one of its dependencies
        return ProbeFailure("not_installed", f"{python} cannot import mlx-supervisor{said}")
    return ProbeFailure("failed", f"the probe exited with status {status}{said}")


def _failed(base: Gathered, failure: ProbeFailure) -> Gathered:
    return replace(base, probe=failure)


def _ssh_failed(base: Gathered, failure: SSHFailure) -> Gathered:
    return replace(base, ssh=failure)


def _tail(text: bytes) -> str:
    lines = [line.strip() for line in text.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


class _LocalPipe:
    def __init__(self, proc: subprocess.Popen):
        self._proc = proc

    def send(self, data: bytes) -> None:
        try:
            self._proc.stdin.write(data)
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass  # it ended: readline says so

    def close_input(self) -> None:
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass

    def readline(self) -> bytes:
        return self._proc.stdout.readline()

    def outcome(self) -> tuple[int | None, str]:
        try:
            status = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            status = None
        return status, _tail(self._proc.stderr.read() if status is not None else b"")

    def abort(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()  # by PID, ours
        self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            try:
                stream.close()
            except OSError:
                pass


class _SSHPipe:
    def __init__(self, channel):
        self._channel = channel
        self._out = channel.makefile("rb")

    def send(self, data: bytes) -> None:
        try:
            self._channel.sendall(data)
        except OSError:
            pass

    def close_input(self) -> None:
        try:
            self._channel.shutdown_write()
        except OSError:
            pass

    def readline(self) -> bytes:
        return self._out.readline()

    def outcome(self) -> tuple[int | None, str]:
        if not self._channel.status_event.wait(5):
            return None, ""
        status = self._channel.recv_exit_status()
        err = b""
        while self._channel.recv_stderr_ready():
            err += self._channel.recv_stderr(65536)
        return status, _tail(err)

    def abort(self) -> None:
        self._channel.close()
