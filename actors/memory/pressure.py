"""The OS's own word on memory pressure: "normal", "warn", "critical", or "" if it says none.

Used memory alone misleads: macOS fills RAM with caches and compresses before it swaps,
and Linux counts reclaimable page cache as used. Both kernels measure the pressure itself.

- macOS: ``kern.memorystatus_vm_pressure_level`` (1 normal, 2 warn, 4 critical), the
  level behind Activity Monitor's memory-pressure colour, read with ``sysctlbyname``
  through ctypes (a few microseconds: no process per heartbeat).
- Linux: ``/proc/pressure/memory`` (PSI), the share of the last 10 s in which some task
  stalled waiting for memory ("some avg10"). A healthy machine shows 0; reclaim you can
  feel begins near 10 %, so that is ``warn``; systemd-oomd's default kills a cgroup at
  60 % sustained for 30 s, so ``critical`` at 40 % warns before anything is killed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from pathlib import Path

PSI_PATH = Path("/proc/pressure/memory")
PSI_WARN = 10.0  # "some avg10" percent
PSI_CRITICAL = 40.0
MACOS_LEVELS = {1: "normal", 2: "warn", 4: "critical"}


def level_from_psi(text: str) -> str:
    """The level a ``/proc/pressure/memory`` text says; "" if it has no "some" line."""
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind != "some":
            continue
        fields = dict(f.split("=", 1) for f in rest.split() if "=" in f)
        try:
            avg10 = float(fields["avg10"])
        except (KeyError, ValueError):
            return ""
        if avg10 >= PSI_CRITICAL:
            return "critical"
        return "warn" if avg10 >= PSI_WARN else "normal"
    return ""


def level_from_macos(value: int | None) -> str:
    """The level ``kern.memorystatus_vm_pressure_level`` says; "" for anything else."""
    return MACOS_LEVELS.get(value, "") if value is not None else ""


class Sysctl:
    """``sysctlbyname`` through ctypes, libc loaded once; None where it is not there."""

    def __init__(self) -> None:
        self._libc = None
        if sys.platform == "darwin":
            try:
                self._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            except OSError:
                pass

    def _read(self, name: str, size: int) -> bytes | None:
        if self._libc is None:
            return None
        buf = ctypes.create_string_buffer(size)
        length = ctypes.c_size_t(size)
        if self._libc.sysctlbyname(name.encode(), buf, ctypes.byref(length), None, 0) != 0:
            return None
        return buf.raw[: length.value]

    def integer(self, name: str) -> int | None:
        raw = self._read(name, 8)
        return int.from_bytes(raw, sys.byteorder) if raw else None

    def string(self, name: str) -> str | None:
        raw = self._read(name, 256)
        if not raw:
            return None
        return raw.split(b"\0", 1)[0].decode(errors="replace").strip() or None


class PressureReader:
    """Reads this machine's level; cheap enough for every heartbeat."""

    def __init__(self, sysctl: Sysctl | None = None, psi_path: Path = PSI_PATH) -> None:
        self._sysctl = sysctl or Sysctl()
        self._psi_path = psi_path

    def level(self) -> str:
        if sys.platform == "darwin":
            return level_from_macos(self._sysctl.integer("kern.memorystatus_vm_pressure_level"))
        try:
            return level_from_psi(self._psi_path.read_text())
        except OSError:  # no PSI: an old kernel, or a container without /proc/pressure
            return ""
