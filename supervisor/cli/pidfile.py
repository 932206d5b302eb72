"""Where a running supervisor leaves its PID, so ``supervisor stop`` can find and end it.

One file per API port (``<cache dir>/supervisor-<port>.pid``): several supervisors on one
machine each have their own. ``stop`` sends SIGTERM, which drains in-flight requests and
ends every actor, exactly as Ctrl-C does.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from actors.protocol.model_spec import default_cache_dir


class StopError(Exception):
    """Why no supervisor could be stopped, in one line."""


def default_pidfile(port: int) -> Path:
    """The pidfile of the supervisor whose API listens on ``port``."""
    return default_cache_dir() / f"supervisor-{port}.pid"


def port_of(url: str) -> int:
    """The port of an API URL (``http://127.0.0.1:8080`` → 8080)."""
    parts = urlsplit(url if "//" in url else f"http://{url}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        if parts.hostname is None:
            raise StopError(f"--url {url!r} is not a URL like http://127.0.0.1:8080")
        return 443 if parts.scheme == "https" else 80
    return port


def write_pidfile(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{os.getpid()}\n")


def remove_pidfile(path: Path) -> None:
    """Remove the pidfile if it is still ours (a newer supervisor may have replaced it)."""
    try:
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()
    except OSError:
        pass


def stop_supervisor(path: Path, timeout: float) -> int:
    """SIGTERM the supervisor named in ``path`` and wait for it to exit; its PID."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise StopError(
            f"no supervisor pidfile at {path}; is `supervisor start` running on this "
            "machine with that API port?"
        ) from None
    except OSError as exc:
        raise StopError(f"cannot read {path} ({exc.strerror})") from None
    if not text.isdigit():
        raise StopError(f"{path} holds {text[:40]!r}, not a PID; remove it")
    pid = int(text)
    try:
        process = psutil.Process(pid)
        argv = process.cmdline()
    except psutil.NoSuchProcess:
        path.unlink(missing_ok=True)
        raise StopError(
            f"the supervisor of {path} (pid {pid}) is gone; removed the stale file"
        ) from None
    except psutil.AccessDenied:
        raise StopError(f"not allowed to look at pid {pid} (from {path})") from None
    if not _is_supervisor(argv):
        raise StopError(f"pid {pid} (from {path}) is not a supervisor ({' '.join(argv)[:60]!r})")
    process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return pid
        except psutil.NoSuchProcess:
            return pid
        time.sleep(0.1)
    raise StopError(f"supervisor pid {pid} is still running {timeout:g} s after SIGTERM")


def _is_supervisor(argv: list[str]) -> bool:
    """``supervisor start ...`` or ``python -m supervisor start ...``."""
    names = [os.path.basename(a) for a in argv]
    return "start" in names and any(n == "supervisor" for n in names)
