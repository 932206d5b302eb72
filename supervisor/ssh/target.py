"""Where an SSH host is: the hostfile's ``ssh`` text, parsed and resolved through ssh_config.

Pure functions over plain data; the connection itself lives in ``supervisor.ssh.spawner``.
"""

from __future__ import annotations

import errno
import getpass
import os
import re
import shlex
import socket
from dataclasses import dataclass

import paramiko

from supervisor.supervision.spawner import HostUnreachable

SSH_PORT = 22
DEFAULT_SSH_CONFIG = "~/.ssh/config"
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
FORMS = '"host", "user@host", "host:port", "user@[v6addr]:port" or a Host alias of ~/.ssh/config'


class SSHError(Exception):
    """An SSH problem, as one line naming the node, its address and what to do."""


class UnknownHostKey(SSHError):
    """The server's host key is not in known_hosts, and nothing said to trust new keys."""


class ChangedHostKey(SSHError):
    """known_hosts holds another key for this server: refused, whatever the settings."""


class SSHTargetError(SSHError, ValueError):
    """An ``ssh`` value of the hostfile that cannot name a host."""


class SSHUnreachable(SSHError, HostUnreachable):
    """Every attempt to connect failed for want of the host itself (see ``is_unreachable``)."""

    def __init__(self, message: str, reason: str = ""):
        HostUnreachable.__init__(self, message, reason)


# The network did not get us to an sshd; what the host would have said is unknown.
_UNREACHABLE_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
        errno.ECONNRESET,
        errno.ECONNABORTED,
    }
)


def is_unreachable(exc: BaseException) -> bool:
    """True when a connection failure means the host is not there (off, rebooting, sshd
    stopped, no route, name not resolving): waiting may help. A host key refusal or a
    failed authentication is an answer from the host: waiting cannot help."""
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return all(is_unreachable(e) for e in exc.errors.values()) if exc.errors else True
    if isinstance(exc, (socket.gaierror, TimeoutError, ConnectionError, EOFError)):
        return True
    if isinstance(exc, OSError):
        return exc.errno in _UNREACHABLE_ERRNOS
    if isinstance(exc, paramiko.AuthenticationException):
        return False
    # TCP accepted but no SSH banner: sshd is still starting, or the host is half up.
    return isinstance(exc, paramiko.SSHException) and "protocol banner" in str(exc)


@dataclass(frozen=True)
class SSHTarget:
    """The ``ssh`` value as written: a host (or ssh_config alias), maybe a user and a port."""

    host: str
    user: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class Endpoint:
    """Where to connect, after ssh_config: hostname, port, user and keys to offer."""

    hostname: str
    port: int = SSH_PORT
    user: str = ""
    identity_files: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        """``host:port``, with an IPv6 address in brackets."""
        return f"{_bracket(self.hostname)}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """How known_hosts names this server (``[host]:port`` off port 22, as OpenSSH does)."""
        return self.hostname if self.port == SSH_PORT else f"[{self.hostname}]:{self.port}"


# A host name, alias or IPv4 address; or an IPv6 address with an optional zone (%en0).
# Nothing a shell or ssh_config's ``Match exec`` (which paramiko runs, %h substituted) could
# read as more than a name.
_HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.%-]*")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(%[A-Za-z0-9_.-]+)?")


def parse_ssh_target(text: str) -> SSHTarget:
    """Parse ``host``, ``user@host``, ``host:port``, ``user@host:port``, ``[v6]:port``."""
    s = text.strip()
    if s.startswith("ssh://"):
        s = s.removeprefix("ssh://").rstrip("/")
    if not s:
        raise SSHTargetError(f"ssh target {text!r} is empty; expected {FORMS}")
    user = None
    if "@" in s:
        user, _, s = s.rpartition("@")
        if not user:
            raise SSHTargetError(f'ssh target {text!r} has nothing before "@"; expected {FORMS}')
    port_text = None
    if s.startswith("["):
        close = s.find("]")
        if close < 0:
            raise SSHTargetError(f'ssh target {text!r} has "[" without "]"; expected {FORMS}')
        host, rest = s[1:close], s[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise SSHTargetError(f'ssh target {text!r}: expected ":port" after "]"')
            port_text = rest[1:]
    elif s.count(":") == 1:
        host, port_text = s.split(":")
    else:
        host = s  # a name, or a bare IPv6 address (several colons, no port)
    if not host:
        raise SSHTargetError(f"ssh target {text!r} names no host; expected {FORMS}")
    if host.startswith("-") or (user or "").startswith("-"):
        raise SSHTargetError(f"ssh target {text!r} must not start with '-' (an ssh option)")
    if not (_HOST_NAME.fullmatch(host) or _IPV6.fullmatch(host)):
        raise SSHTargetError(f"ssh target {text!r}: {host!r} is not a host name; expected {FORMS}")
    if user is not None and any(c.isspace() or not c.isprintable() for c in user):
        raise SSHTargetError(f"ssh target {text!r}: the user name has spaces or control characters")
    return SSHTarget(
        host=host, user=user, port=None if port_text is None else _port(port_text, text)
    )


def _port(port_text: str, text: str) -> int:
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise SSHTargetError(f"ssh target {text!r}: port {port_text!r} is not a number 1..65535")
    return int(port_text)


def load_ssh_config(path: str | None = None) -> paramiko.SSHConfig:
    """The user's ssh_config (``~/.ssh/config`` by default); empty when there is none."""
    full = os.path.expanduser(path or DEFAULT_SSH_CONFIG)
    if not os.path.exists(full):
        if path is not None:
            raise SSHError(f"ssh config {path}: no such file")
        return paramiko.SSHConfig()
    try:
        return paramiko.SSHConfig.from_path(full)
    except Exception as exc:  # paramiko raises several types for a malformed file
        raise SSHError(f"ssh config {full}: cannot be read ({exc})") from None


def resolve_endpoint(
    target: SSHTarget, config: paramiko.SSHConfig, default_user: str | None = None
) -> Endpoint:
    """Apply ssh_config (HostName, User, Port, IdentityFile); what the target says wins."""
    found = config.lookup(target.host)
    port = target.port
    if port is None:
        port = _port(str(found.get("port", SSH_PORT)), target.host)
    user = target.user or found.get("user") or default_user or getpass.getuser()
    keys = tuple(os.path.expanduser(k) for k in found.get("identityfile", ()))
    return Endpoint(
        hostname=found.get("hostname", target.host), port=port, user=user, identity_files=keys
    )


def remote_command(kind: str, python: str | None, workdir: str | None) -> str:
    """The command line that boots an actor; it carries no secret (they travel on stdin).

    It runs under ``/bin/sh`` whatever the login shell is, and sh stays the parent: a
    signal death is then reported as status 128+N, where an ``exec`` would make sshd send
    an exit-signal that paramiko drops, indistinguishable from a lost connection.
    """
    boot = f"{shell_path(python or 'python3')} -u -m actors.runtime.boot {shlex.quote(kind)}"
    script = f"cd {shell_path(workdir)} && {boot}" if workdir else boot
    return f"/bin/sh -c {shlex.quote(script + '; exit $?')}"


def shell_path(path: str) -> str:
    """Quote a path for sh, keeping a leading ``~`` meaning the remote home."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def exit_code(status: int) -> int:
    """A remote exit status as ``Popen.returncode`` says it: a signal N is ``-N``."""
    if 128 < status <= 128 + 64:
        return 128 - status
    return status


def keyscan_hint(endpoint: Endpoint, known_hosts: str) -> str:
    """The command that trusts this server's host key (what a user runs to fix it)."""
    port = "" if endpoint.port == SSH_PORT else f"-p {endpoint.port} "
    return f"ssh-keyscan {port}{endpoint.hostname} >> {display_path(known_hosts)}"


def display_path(path: str) -> str:
    home = os.path.expanduser("~")
    return "~" + path[len(home) :] if home != "/" and path.startswith(home + "/") else path


def describe_failure(
    exc: BaseException, endpoint: Endpoint | None = None, timeout: float = 0
) -> str:
    """A connection failure in a few words a user can act on."""
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError) and exc.errors:
        return describe_failure(next(iter(exc.errors.values())), endpoint, timeout)
    port = endpoint.port if endpoint else "22"
    user = endpoint.user if endpoint else "the user"
    if isinstance(exc, paramiko.AuthenticationException):
        return (
            f"authentication failed for {user} ({exc}); add your public key to "
            f"~{user}/.ssh/authorized_keys there, or set IdentityFile in ~/.ssh/config"
        )
    if isinstance(exc, paramiko.SSHException) and "No authentication methods" in str(exc):
        return (
            f"no SSH key to offer for {user} (no IdentityFile in ~/.ssh/config, no "
            "~/.ssh/id_*, no ssh-agent); create one with ssh-keygen and copy it there "
            "with ssh-copy-id"
        )
    if isinstance(exc, socket.gaierror):
        host = endpoint.hostname if endpoint else "the host"
        return f"cannot resolve host name {host} ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused; is sshd running and listening on port {port}?"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s" if timeout else "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
