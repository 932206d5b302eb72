"""The supervisor's credentials: the admin key, the join token and the optional inference key.

The admin key and the join token are written next to the pidfile, mode 0600 from the
moment they exist, so that the local CLI finds them with no flag and no other user can
read them. They are removed on exit, as the pidfile is.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from supervisor.config.checks import Problem, check_key, is_loopback
from supervisor.config.spec import ClusterSpec

API_KEY_ENV = "MLXS_API_KEY"
ADMIN_KEY_ENV = "MLXS_ADMIN_KEY"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


class CredentialError(Exception):
    """A key that cannot be used, in one line naming where it came from."""


@dataclass(frozen=True)
class Credentials:
    """Who may call what: inference (``api_key``, optional), admin, and joining hosts."""

    admin_key: str
    join_token: str
    api_key: str | None = None
    admin_key_generated: bool = False


def credentials_for(spec: ClusterSpec, environ: Mapping[str, str]) -> Credentials:
    """The hostfile's keys, else the environment's; no admin key anywhere: a random one."""
    # Both are read even when the hostfile sets the key: an empty variable is refused,
    # never silently taken to mean "no key".
    api_env, admin_env = env_key(environ, API_KEY_ENV), env_key(environ, ADMIN_KEY_ENV)
    api_key = spec.api_key or api_env
    admin_key = spec.admin_key or admin_env
    return Credentials(
        admin_key=admin_key or secrets.token_urlsafe(32),
        join_token=secrets.token_urlsafe(32),
        api_key=api_key,
        admin_key_generated=admin_key is None,
    )


def env_key(environ: Mapping[str, str], name: str) -> str | None:
    """A key from the environment; set but empty (or with spaces) is refused."""
    if name not in environ:
        return None
    value = environ[name]
    if not value.strip():
        raise CredentialError(f"{name} is set but empty; unset it or set a long random string")
    try:
        return check_key(value, name)
    except Problem as exc:
        raise CredentialError(str(exc)) from None


# -- files next to the pidfile ------------------------------------------------------------------


def admin_key_file(pidfile: Path) -> Path:
    """``supervisor-8080.pid`` -> ``supervisor-8080.admin-key``."""
    return pidfile.with_name(pidfile.stem + ".admin-key")


def join_token_file(pidfile: Path) -> Path:
    return pidfile.with_name(pidfile.stem + ".join-token")


def write_secret(path: Path, value: str) -> None:
    """Write ``value`` readable by this user only, never wider, even for an instant."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    # O_EXCL: a file (or symlink) someone else planted is never written through.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, f"{value}\n".encode())
    finally:
        os.close(fd)
    os.replace(temporary, path)


def read_secret(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def remove_secret(path: Path, value: str) -> None:
    """Remove the file if it still holds our value (a newer supervisor may have replaced it)."""
    if read_secret(path) == value:
        path.unlink(missing_ok=True)


# -- what a CLI on some machine sends ----------------------------------------------------------


def find_admin_key(
    url: str, explicit: str | None, environ: Mapping[str, str], pidfile: Path | None = None
) -> str | None:
    """``--admin-key``, else ``$MLXS_ADMIN_KEY``, else the key file of a supervisor on this
    machine. The file is read only for a loopback URL: a local key is never sent elsewhere."""
    if explicit is not None:
        try:
            return check_key(explicit, "--admin-key")
        except Problem as exc:
            raise CredentialError(str(exc)) from None
    from_env = env_key(environ, ADMIN_KEY_ENV)
    if from_env is not None:
        return from_env
    if not is_loopback_url(url):
        return None
    from supervisor.cli.pidfile import default_pidfile, port_of

    return read_secret(admin_key_file(pidfile or default_pidfile(port_of(url))))


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url if "//" in url else f"http://{url}").hostname
    return host is not None and is_loopback(host)


# -- what the running supervisor says about itself ----------------------------------------------


def exposure_warnings(api_host: str, api_key: str | None) -> list[str]:
    """The loud warning of an API reachable from other machines that any caller may use."""
    if api_key is None and not is_loopback(api_host):
        return [
            f"the API listens on {api_host}, reachable from other machines, with no api_key: "
            'anyone who can reach it may run inference; set "api_key" in the hostfile '
            "(or MLXS_API_KEY), or listen on 127.0.0.1 behind a TLS reverse proxy"
        ]
    return []


def join_address(api_host: str, port: int) -> tuple[str, bool]:
    """The API's ``host:port`` as another machine would dial it, and whether it is loopback."""
    host = api_host
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()  # every interface: this machine's name
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}", is_loopback(api_host)
