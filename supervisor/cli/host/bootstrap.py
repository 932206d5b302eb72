"""`supervisor bootstrap SSH_TARGET`: put this mlx-supervisor version on a new host.

The seed's ``make bootstrap``. Over SSH (the credential: no HTTP, no admin key): check the
host's Python is 3.11 or newer, build this source tree's wheel here, send it over SFTP,
create a venv there and ``pip install`` the wheel into it (dependencies from the host's
package index), check ``python -m actors --version`` there says our version, and print the
hostfile host entry, ``python`` included. A venv already at our version is left alone.

Progress goes to stderr, the entry (or with ``--json`` the whole result) to stdout. Exit 0
done, 1 when the host or the build fails, 2 for bad arguments. Remote output is only
printed, never given to a local shell; remote command lines are quoted with shlex.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import paramiko

from supervisor.cli.arguments import seconds
from supervisor.cli.host.wheel import WheelError, build_wheel, local_version, pins

COMMAND = "bootstrap"
EXIT_FAILED = 1
EXIT_USAGE = 2
DEFAULT_PYTHON = "python3"
DEFAULT_PATH = "~/.mlx-supervisor/venv"
MIN_PYTHON = (3, 11)
CONNECT_TIMEOUT = 10.0
SHORT_TIMEOUT = 60.0  # s for a probe command (python -c, actors --version, mktemp)
VENV_TIMEOUT = 300.0
DEFAULT_INSTALL_TIMEOUT = 1800.0  # s for `pip install` there: mlx and transformers are big
KEPT_LINES = 40  # remote output kept for an error message; the rest is only streamed


class BootstrapError(Exception):
    """A step failed on the host or here: one line naming the host and what to do."""


def add_parser(sub) -> None:
    p = sub.add_parser(
        COMMAND, help="install this mlx-supervisor version in a venv on a new host over SSH"
    )
    p.add_argument("ssh", help="the host: alias, user@host, host:port (as a hostfile's ssh)")
    p.add_argument(
        "--python",
        default=DEFAULT_PYTHON,
        help=f"Python >= 3.11 on that host that creates the venv (default {DEFAULT_PYTHON})",
    )
    p.add_argument("--path", default=DEFAULT_PATH, help=f"the venv there (default {DEFAULT_PATH})")
    p.add_argument(
        "--system-site-packages",
        action="store_true",
        help="let the venv see that Python's own packages (e.g. a preinstalled mlx)",
    )
    p.add_argument("--identity", help="private key file to offer (default: ssh_config, agent)")
    p.add_argument("--ssh-config", help="ssh_config for HostName/Port/User/IdentityFile")
    p.add_argument("--known-hosts", help="trusted host keys (default ~/.ssh/known_hosts)")
    p.add_argument(
        "--accept-new-host-key",
        action="store_true",
        help="trust and remember an unknown host key (a changed key is always refused)",
    )
    p.add_argument(
        "--timeout",
        type=seconds("timeout"),
        default=DEFAULT_INSTALL_TIMEOUT,
        help=f"seconds for pip install there (default {DEFAULT_INSTALL_TIMEOUT:g})",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    import structlog

    from supervisor.ssh.target import SSHError

    # The SSH layer's log lines would repeat what the failure message says.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    try:
        connector = _connector(args)
    except (SSHError, ValueError) as exc:
        print(f"supervisor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = Bootstrap(args, connector, _progress).run()
    except (BootstrapError, WheelError) as exc:
        print(f"supervisor: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(json.dumps(result["host"]))
    return 0


def _progress(line: str) -> None:
    print(f"bootstrap: {line}", file=sys.stderr, flush=True)


def _connector(args: argparse.Namespace):
    """The SSHConnector for the target, or SSHError/ValueError (exit 2) for bad arguments."""
    from supervisor.ssh.connection import SSHConnector
    from supervisor.ssh.target import (
        DEFAULT_KNOWN_HOSTS,
        load_ssh_config,
        parse_ssh_target,
        resolve_endpoint,
    )

    target = parse_ssh_target(args.ssh)
    endpoint = resolve_endpoint(target, load_ssh_config(args.ssh_config))
    if args.identity:
        if not os.path.isfile(os.path.expanduser(args.identity)):
            raise ValueError(f"--identity {args.identity}: no such file")
        identity = (os.path.expanduser(args.identity),)
        endpoint = dataclasses.replace(endpoint, identity_files=identity)
    for name in ("python", "path"):
        value = getattr(args, name)
        if not value.strip() or any(not c.isprintable() for c in value):
            raise ValueError(f"--{name} {value!r} is empty or has control characters")
    return SSHConnector(
        target.host,
        endpoint,
        known_hosts=args.known_hosts or DEFAULT_KNOWN_HOSTS,
        accept_new_host_keys=args.accept_new_host_key,
        connect_timeout=CONNECT_TIMEOUT,
    )


class Bootstrap:
    """The steps, in order, on one SSH connection (blocking: a CLI has nothing else to do)."""

    def __init__(self, args: argparse.Namespace, connector, progress: Callable[[str], None]):
        self.args = args
        self.connector = connector
        self.progress = progress
        self.where = f"{args.ssh} ({connector.endpoint.address})"
        self.version = local_version()
        self.client: paramiko.SSHClient | None = None

    def run(self) -> dict:
        self.progress(f"connecting to {self.where}")
        self.client = self._connect()
        try:
            return self._steps()
        finally:
            self.client.close()

    def _steps(self) -> dict:
        from supervisor.ssh.target import shell_path

        python, venv = shell_path(self.args.python), shell_path(self.args.path)
        base = self._check_python(python)
        present = self._installed(venv)
        if present and present[0] == self.version:
            self.progress(f"{self.args.path} is already at mlx-supervisor {self.version}: no-op")
            return self._result(present[1], base, installed=False)
        if present:
            self.progress(f"{self.args.path} has mlx-supervisor {present[0] or '?'}: upgrading")
        with tempfile.TemporaryDirectory(prefix="mlxs-wheel-") as here:
            wheel = build_wheel(Path(here), self.progress)
            remote_dir = self._sh("mktemp -d", SHORT_TIMEOUT, "mktemp -d").strip()
            try:
                remote_wheel = f"{remote_dir}/{wheel.name}"
                self.progress(f"sending {wheel.name} ({wheel.stat().st_size} bytes) over SFTP")
                self._put(wheel, remote_wheel)
                flag = " --system-site-packages" if self.args.system_site_packages else ""
                self.progress(f"creating the venv {self.args.path}{flag}")
                self._sh(f"{python} -m venv{flag} {venv}", VENV_TIMEOUT, "python -m venv")
                pinned = pins()
                self.progress(
                    f"pip install {' '.join([wheel.name, *pinned])} (dependencies from the "
                    "package index)"
                )
                pip = f"{venv}/bin/python -m pip install --disable-pip-version-check"
                self._sh(
                    " ".join([pip, *map(shlex.quote, [remote_wheel, *pinned])]),
                    self.args.timeout,
                    "pip install",
                    on_line=lambda line: self.progress(f"pip: {line}"),
                )
            finally:
                self._sh(f"rm -rf {shlex.quote(remote_dir)}", SHORT_TIMEOUT, "rm", check=False)
        present = self._installed(venv)
        if not present or present[0] != self.version:
            said = present[0] if present else "nothing (the actors package does not run)"
            raise BootstrapError(
                f"{self.where}: after pip install, {self.args.path}/bin/python -m actors "
                f"--version reports {said!r}, expected mlx-supervisor {self.version}"
            )
        self.progress(f"{self.args.path} now runs mlx-supervisor {self.version}")
        return self._result(present[1], base, installed=True)

    def _result(self, executable: str, base: str, *, installed: bool) -> dict:
        return {
            "host": {"ssh": self.args.ssh, "python": executable},
            "version": self.version,
            "installed": installed,
            "base_python": base,
        }

    def _connect(self) -> paramiko.SSHClient:
        from supervisor.ssh.target import SSHError, describe_failure

        try:
            return self.connector.connect()
        except SSHError as exc:  # host key refusals say what to run
            raise BootstrapError(str(exc)) from None
        except Exception as exc:
            reason = describe_failure(exc, self.connector.endpoint, CONNECT_TIMEOUT)
            raise BootstrapError(f"{self.where}: {reason}") from None

    def _check_python(self, python: str) -> str:
        """The interpreter's version as text; BootstrapError when missing or too old."""
        code = "import sys; print(*sys.version_info[:3], sys.executable)"
        status, out = self._exec(f"{python} -c {shlex.quote(code)}", SHORT_TIMEOUT)
        words = out[-1].split(maxsplit=3) if out else []
        if status != 0 or len(words) < 4 or not all(w.isdigit() for w in words[:3]):
            raise BootstrapError(
                f"{self.where}: {self.args.python} does not run there ({_last(out, status)}); "
                f"install Python >= 3.11 there or pass --python /path/to/python3"
            )
        version = tuple(int(w) for w in words[:3])
        text = ".".join(words[:3])
        if version[:2] < MIN_PYTHON:
            raise BootstrapError(
                f"{self.where}: {self.args.python} is Python {text}; mlx-supervisor needs "
                f"3.11 or newer: install one there and pass --python /path/to/python3.11"
            )
        self.progress(f"{self.args.python} is Python {text} ({words[3]})")
        return words[3]

    def _installed(self, venv: str) -> tuple[str, str] | None:
        """(mlx-supervisor version, absolute venv python) when the venv runs actors, else None;
        the version is "" when ``--version`` answers without it."""
        python = f"{venv}/bin/python"
        script = (
            f"test -x {python} || exit 100; "
            f"{python} -c 'import sys; print(sys.executable)' && {python} -m actors --version"
        )
        status, out = self._exec(script, SHORT_TIMEOUT)
        if status == 100:
            return None
        if status != 0 or len(out) < 2:
            self.progress(f"{self.args.path} exists but does not run actors ({_last(out, status)})")
            return None
        try:
            found = json.loads(out[-1]).get("mlx_supervisor", "")
        except (ValueError, AttributeError):
            found = ""
        return str(found), out[-2].strip()

    def _put(self, local: Path, remote: str) -> None:
        try:
            sftp = self.client.open_sftp()
            try:
                sftp.get_channel().settimeout(SHORT_TIMEOUT)
                sftp.put(str(local), remote)
            finally:
                sftp.close()
        except (OSError, paramiko.SSHException) as exc:
            raise BootstrapError(f"{self.where}: SFTP of {local.name} to {remote}: {exc}") from None

    def _sh(
        self,
        script: str,
        timeout: float,
        what: str,
        *,
        on_line: Callable[[str], None] | None = None,
        check: bool = True,
    ) -> str:
        status, out = self._exec(script, timeout, on_line)
        if status != 0 and check:
            raise BootstrapError(f"{self.where}: {what} failed ({_last(out, status)})")
        return "\n".join(out)

    def _exec(
        self, script: str, timeout: float, on_line: Callable[[str], None] | None = None
    ) -> tuple[int, list[str]]:
        """Run ``script`` under /bin/sh there (whatever the login shell): (status, the last
        KEPT_LINES lines of stdout and stderr merged). Every read has a deadline."""
        try:
            channel = self.client.get_transport().open_session(timeout=CONNECT_TIMEOUT)
        except (OSError, paramiko.SSHException, AttributeError) as exc:
            raise BootstrapError(f"{self.where}: the SSH connection is gone ({exc})") from None
        deadline = time.monotonic() + timeout
        kept: deque[str] = deque(maxlen=KEPT_LINES)
        try:
            channel.set_combine_stderr(True)
            channel.settimeout(min(timeout, 5.0))  # wake to check the deadline
            channel.exec_command(f"/bin/sh -c {shlex.quote(script)}")
            pending = b""
            while True:
                try:
                    chunk = channel.recv(65536)
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise BootstrapError(
                            f"{self.where}: no end within {timeout:g} s of: {_clean(script)}"
                        ) from None
                    continue
                if not chunk:
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    _keep(kept, line, on_line)
                if len(pending) > 65536:  # no newline for long: flush what there is
                    _keep(kept, pending, on_line)
                    pending = b""
            if pending:
                _keep(kept, pending, on_line)
            left = max(0.0, deadline - time.monotonic())
            if not channel.status_event.wait(min(left, SHORT_TIMEOUT)):
                raise BootstrapError(f"{self.where}: no exit status from: {_clean(script)}")
            return channel.recv_exit_status(), list(kept)
        except (OSError, paramiko.SSHException) as exc:
            raise BootstrapError(f"{self.where}: lost the SSH connection ({exc})") from None
        finally:
            channel.close()


def _keep(kept: deque[str], raw: bytes, on_line: Callable[[str], None] | None) -> None:
    line = _clean(raw.decode(errors="replace"))
    if line:
        kept.append(line)
        if on_line:
            on_line(line)


def _clean(text: str) -> str:
    """Remote text made safe for a terminal: no escape sequences, no carriage returns."""
    return "".join(c if c.isprintable() else " " for c in text).strip()


def _last(out: list[str], status: int) -> str:
    said = out[-1] if out else "no output"
    return f"exit {status}: {said}" if status >= 0 else said
