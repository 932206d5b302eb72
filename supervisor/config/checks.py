"""Hostfile checks beyond field types (msgspec's own errors: supervisor/config/errors.py)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

import msgspec

from supervisor.config.spec import ControlSpec, HostSpec

LOCAL_SSH = frozenset({"", "localhost", "127.0.0.1", "::1"})
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
BACKENDS = ("ring", "jaccl", "jaccl-ring")
GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
ENV_KEY = re.compile(r"[A-Za-z0-9_]+")


class Problem(Exception):
    """A hostfile problem described without the file name (the caller adds it)."""


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost; not 0.0.0.0 or ::, which listen on every address."""
    name = host.strip().lower().strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.split("%")[0]).is_loopback
    except ValueError:
        return False


def is_local_ssh(ssh: str) -> bool:
    """True when ``ssh`` names this machine, so the host is spawned without SSH."""
    return ssh.strip().lower() in LOCAL_SSH


# -- semantic checks --------------------------------------------------------------------------


def check_backend(backend: str, where: str) -> str:
    """The backend to use (mlx.launch's default is ring); refuse ones we cannot spawn."""
    if backend == "":
        return "ring"
    if backend in ("mpi", "nccl"):
        raise Problem(
            f'{where} "{backend}" is not supported: the supervisor starts every rank itself; '
            'use "ring", "jaccl" or "jaccl-ring"'
        )
    if backend not in BACKENDS:
        raise Problem(f'{where} "{backend}" is unknown; expected "ring", "jaccl" or "jaccl-ring"')
    return backend


def env_assignments(entries: Sequence[str], where: str) -> dict[str, str]:
    """``KEY=VALUE`` strings as mlx.launch reads them (``KEY`` alone sets it empty)."""
    env: dict[str, str] = {}
    for i, entry in enumerate(entries):
        key, _, value = entry.partition("=")
        if not ENV_KEY.fullmatch(key):
            raise Problem(
                f'{where}[{i}] "{entry}" is not KEY=VALUE with a key of letters, digits and _'
            )
        env[key] = value
    return env


def check_env_keys(env: dict[str, str], where: str, *, from_request: bool = False) -> None:
    """Refuse environment names a shell could not export, and over HTTP the start-up ones."""
    for key in env:
        if not ENV_KEY.fullmatch(key):
            raise Problem(f'{where} key "{key}" is not a valid variable name (letters, digits, _)')
        if from_request and STARTUP_ENV.fullmatch(key):
            raise Problem(
                f'{where} key "{key}" changes how a shell, the loader or Python starts; '
                "only the hostfile may set it"
            )


# Names that run code when a program starts, refused in a host that joins over HTTP (the
# hostfile, written by the operator, may set them). The list: BASH_ENV, ENV, LD_*,
# DYLD_*, PYTHON*, PATH. Also: SHELLOPTS/BASHOPTS/PS4 (xtrace runs PS4's $(...)) and
# BASH_FUNC_* (exported functions) for a bash that gets started; HOME (Python runs the .pth
# files of ~/.local's site-packages); GCONV_PATH and OPENSSL_* (glibc and OpenSSL load the
# shared objects they name); MLXS_* (the supervisor's own channel to the actor).
STARTUP_ENV = re.compile(
    r"BASH_ENV|ENV|PATH|HOME|SHELLOPTS|BASHOPTS|PS4|GCONV_PATH"
    r"|(LD_|DYLD_|PYTHON|BASH_FUNC_|OPENSSL_|MLXS_)[A-Za-z0-9_]*"
)


def check_host(host: HostSpec, where: str, *, from_request: bool = False) -> None:
    """The one check of a host, written in the hostfile or joining over HTTP.

    ``where`` prefixes messages (``host 2``; empty for a join). An empty ``name`` is one the
    hostfile fills from ``ssh`` later; a join names its node before this check.
    """
    at = f"{where} " if where else ""
    if host.name and not GROUP_NAME.fullmatch(host.name):
        raise Problem(
            f'{at}"name" "{host.name}" must start with a letter or digit and use only '
            "letters, digits, '.', '_' and '-'"
        )
    check_ssh_target(host.ssh, where)
    check_absolute(host.python, f'{at}"python"')
    check_absolute(host.workdir, f'{at}"workdir"')
    check_env_keys(host.env, f'{at}"env"', from_request=from_request)


def check_absolute(path: str | None, where: str) -> None:
    """``python`` and ``workdir``: absolute on that host (``~`` is its home), one line."""
    if path is None:
        return
    if not path.isprintable():
        raise Problem(f"{where} must not contain control characters (NUL, newline, ...)")
    if not (path.startswith("/") or path == "~" or path.startswith("~/")):
        raise Problem(
            f'{where} "{path}" must be an absolute path on that host '
            '(e.g. "/opt/venv/bin/python", or "~/mlx-supervisor" under its home)'
        )


def check_ssh_target(ssh: str, where: str) -> None:
    """A remote host's ``ssh`` must name a host now, not when its first actor is spawned."""
    if is_local_ssh(ssh):
        return
    from supervisor.ssh.target import SSHTargetError, parse_ssh_target  # paramiko: remote only

    try:
        parse_ssh_target(ssh)
    except SSHTargetError as exc:
        raise Problem(f'{where} "ssh": {exc}'.lstrip()) from None


def check_port_clashes(groups: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Two groups sharing a machine must not listen on the same ``ip:port``."""
    owner: dict[str, str] = {}
    for name, addresses in groups:
        for address in addresses:
            other = owner.setdefault(address, name)
            if other != name:
                raise Problem(
                    f'groups "{other}" and "{name}" both listen on {address}; give one of '
                    'them its own "starting_port" past the other\'s ports'
                )


def check_key(key: str | None, where: str) -> str | None:
    """A credential, when given, must be a non-empty token with no spaces."""
    if key is None:
        return None
    if not key.strip():
        raise Problem(f"{where} is empty; leave the key out (no key) or set a long random string")
    if any(c.isspace() for c in key) or not key.isprintable():
        raise Problem(f"{where} must not contain spaces or control characters")
    return key


_HOSTNAME = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9*]([A-Za-z0-9.*-]*[A-Za-z0-9])?)")
_ORIGIN = re.compile(r"(\*|https?://[A-Za-z0-9.\-\[\]:]+)")


def check_allowed_hosts(hosts: Sequence[str]) -> tuple[str, ...]:
    """Names a loopback API also answers to (``Host`` header, any port): plain host names."""
    for i, host in enumerate(hosts):
        if not _HOSTNAME.fullmatch(host):
            raise Problem(
                f'"allowed_hosts"[{i}] "{host}" is not a host name (e.g. "mac1.local", '
                '"10.0.0.5", "[fe80::1]"); leave the port out'
            )
    return tuple(h.lower() for h in hosts)


def check_cors_origins(origins: Sequence[str]) -> tuple[str, ...]:
    """Origins a browser app may call the API from: ``scheme://host[:port]`` or ``*``."""
    for i, origin in enumerate(origins):
        if not _ORIGIN.fullmatch(origin):
            raise Problem(
                f'"cors_origins"[{i}] "{origin}" is not an origin like '
                '"http://localhost:3000" (scheme, host, optional port; no path) or "*"'
            )
    return tuple(origins)


def check_model(model: str, where: str) -> None:
    """A model spec must be a non-empty string."""
    if not model.strip():
        raise Problem(f'{where} is empty; name a model ("demo:tiny", a HF repo id or a path)')


def check_group_name(name: str, where: str) -> None:
    """Group names appear in actor ids, logs and metric labels: keep them plain."""
    if not GROUP_NAME.fullmatch(name):
        raise Problem(
            f'{where} name "{name}" must start with a letter or digit and use only '
            "letters, digits, '.', '_' and '-'"
        )


def name_hosts(hosts: Sequence[HostSpec]) -> tuple[HostSpec, ...]:
    """Fill each host's name (default: its ssh) and refuse two hosts given one explicit name."""
    seen: dict[str, int] = {}
    named = []
    for i, host in enumerate(hosts):
        check_host(host, f"host {i}")
        if host.name:
            if host.name in seen:
                raise Problem(
                    f'hosts {seen[host.name]} and {i} are both named "{host.name}"; '
                    "host names must be unique"
                )
            seen[host.name] = i
        named.append(with_name(host))
    return tuple(named)


def with_name(host: HostSpec) -> HostSpec:
    """The host with ``name`` filled from ``ssh`` when it was not given."""
    if host.name:
        return host
    return msgspec.structs.replace(host, name=host.ssh.strip() or "localhost")


def resolve_hosts(
    items: Sequence[HostSpec | int | str], top: Sequence[HostSpec], where: str
) -> tuple[tuple[HostSpec, ...], tuple[int | None, ...]]:
    """A group's hosts with references resolved, and each one's top-level index (None inline)."""
    hosts, indices = [], []
    for j, item in enumerate(items):
        if isinstance(item, int):
            if not 0 <= item < len(top):
                have = f"has {len(top)} entries" if top else "is empty"
                raise Problem(f'{where} host {j} refers to host {item}, but "hosts" {have}')
            hosts.append(top[item])
            indices.append(item)
        elif isinstance(item, str):
            found = [k for k, host in enumerate(top) if host.name == item]
            if not found:
                known = ", ".join(f'"{h.name}"' for h in top) or "none"
                raise Problem(
                    f'{where} host {j} refers to "{item}", which is not a host name '
                    f"(known: {known})"
                )
            if len(found) > 1:
                raise Problem(
                    f'{where} host {j} "{item}" matches hosts {found}; give them '
                    'distinct "name"s or refer to them by index'
                )
            hosts.append(top[found[0]])
            indices.append(found[0])
        else:
            check_host(item, f"{where} host {j}")
            hosts.append(with_name(item))
            indices.append(None)
    if not hosts:
        raise Problem(f'{where} has no hosts; list at least one under "hosts"')
    return tuple(hosts), tuple(indices)


def project_rdma(
    hosts: tuple[HostSpec, ...], indices: tuple[int | None, ...], top_count: int
) -> tuple[HostSpec, ...]:
    """Re-index rdma matrices written for all top-level hosts to the group's own order."""
    if any(k is None for k in indices) or any(len(h.rdma) != top_count for h in hosts):
        return hosts
    if list(indices) == list(range(top_count)):
        return hosts
    return tuple(msgspec.structs.replace(h, rdma=tuple(h.rdma[k] for k in indices)) for h in hosts)


def host_label(where: str, i: int, host: HostSpec) -> str:
    """``host 2 ("mac3")`` or ``group "big" host 2 ("mac3")`` for messages."""
    prefix = f"{where} " if where else ""
    return f'{prefix}host {i} ("{host.name}")'


def check_links(hosts: Sequence[HostSpec], backend: str, where: str) -> None:
    """Check what the ring or jaccl backend needs to connect these ranks (mlx.launch's rules)."""
    if len(hosts) < 2:
        return
    if backend == "ring":
        _check_ring(hosts, where)
    else:
        _check_jaccl(hosts, backend, where)


def _check_ring(hosts: Sequence[HostSpec], where: str) -> None:
    if all(is_local_ssh(h.ssh) for h in hosts):
        return
    for i, host in enumerate(hosts):
        if not host.ips:
            raise Problem(
                f'{host_label(where, i, host)} has no "ips"; '
                "the ring backend needs one per host when hosts are remote"
            )


def _check_jaccl(hosts: Sequence[HostSpec], backend: str, where: str) -> None:
    n = len(hosts)
    if not hosts[0].ips and not is_local_ssh(hosts[0].ssh):
        raise Problem(
            f'{host_label(where, 0, hosts[0])} has no "ips"; the {backend} backend needs '
            "rank 0's address (every rank dials it as MLX_JACCL_COORDINATOR)"
        )
    for i, host in enumerate(hosts):
        if len(host.rdma) != n:
            raise Problem(
                f'{host_label(where, i, host)} has {len(host.rdma)} "rdma" entries; the '
                f"{backend} backend needs one per host ({n}), null for itself"
            )
        if host.rdma[i] is not None:
            raise Problem(
                f'{host_label(where, i, host)} "rdma"[{i}] must be null: '
                "a host has no RDMA device to itself"
            )
    ring = backend == "jaccl-ring"
    missing = [
        (i, j)
        for i, host in enumerate(hosts)
        for j in (((i - 1) % n, (i + 1) % n) if ring else range(n))
        if i != j and host.rdma[j] is None
    ]
    if missing:
        pairs = ", ".join(
            f"{host_label('', i, hosts[i])} to {host_label('', j, hosts[j])}"
            for i, j in missing[:3]
        )
        if len(missing) > 3:
            pairs += f" and {len(missing) - 3} more"
        need = "each ring neighbour" if ring else "every other host"
        prefix = f"{where}: " if where else ""
        raise Problem(
            f"{prefix}no RDMA device is listed from {pairs}; the {backend} backend needs one "
            f"to {need}"
        )


def distinct_nodes(groups_hosts: Sequence[Sequence[HostSpec]]) -> tuple[HostSpec, ...]:
    """Every machine used by some group, once, by name; one name must mean one ssh target."""
    nodes: dict[str, HostSpec] = {}
    for hosts in groups_hosts:
        for host in hosts:
            known = nodes.setdefault(host.name, host)
            if known.ssh != host.ssh:
                raise Problem(
                    f'host name "{host.name}" is used for two machines ("{known.ssh}" and '
                    f'"{host.ssh}"); give each machine its own "name"'
                )
    return tuple(nodes.values())


def loopback_control(control_host: str, remote: str) -> str:
    """Why host ``remote`` cannot dial back to ``control_host``; one line, the fix included.

    Said by the hostfile check and by ``add-host`` alike.
    """
    return (
        f'control.host "{control_host}" is a loopback address but host "{remote}" is '
        "remote; set control.host to this machine's address on the cluster network"
    )


def check_control(control: ControlSpec, nodes: Sequence[HostSpec]) -> None:
    """Remote actors cannot dial back to a loopback control address."""
    if control.host is None or control.host.strip().lower() not in LOOPBACK:
        return
    remote = next((h for h in nodes if not is_local_ssh(h.ssh)), None)
    if remote is not None:
        raise Problem(f"{loopback_control(control.host, remote.name)} or leave it out")
