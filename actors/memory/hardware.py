"""What this node is and runs: chip, cores, OS and versions, said once in the memory actor's Ready.

Every value is a string (``Ready.info``); a key the OS does not answer is left out, never
guessed. Versions come from the installed packages' metadata, so MLX is not imported
(the memory actor stays small). Run once at start: the one subprocess here (``ioreg``
for the GPU core count on a Mac) has a timeout.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

from actors.memory.pressure import Sysctl

PACKAGES = {"mlx": "mlx", "mlx_lm": "mlx-lm", "mlx_supervisor": "mlx-supervisor"}
IOREG = ("/usr/sbin/ioreg", "-rc", "AGXAccelerator", "-d", "1")  # the Apple GPU's registry entry
IOREG_TIMEOUT = 5.0


def hardware_info(sysctl: Sysctl | None = None) -> dict[str, str]:
    """The keys "chip", "cpu", "cpu_cores", "gpu_cores", "os", "python", "mlx", "mlx_lm",
    "mlx_supervisor", each present only when known."""
    mac = sys.platform == "darwin"
    sysctl = sysctl or Sysctl()
    info = {
        "chip": sysctl.string("machdep.cpu.brand_string") if mac else linux_cpu_model(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_cores": str(os.cpu_count() or ""),
        "gpu_cores": mac_gpu_cores() if mac else None,
        "os": os_name(),
        "python": platform.python_version(),
        **{key: package_version(dist) for key, dist in PACKAGES.items()},
    }
    return {key: value for key, value in info.items() if value}


def linux_cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The first "model name" (x86) or "Model"/"Hardware" (ARM boards) of ``/proc/cpuinfo``."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    return cpu_model_from(text)


def cpu_model_from(text: str) -> str | None:
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            found.setdefault(key.strip(), value.strip())
    return found.get("model name") or found.get("Model") or found.get("Hardware")


def mac_gpu_cores() -> str | None:
    """The GPU core count ``ioreg`` gives for the Apple GPU; None if it says none in time."""
    try:
        out = subprocess.run(IOREG, capture_output=True, text=True, timeout=IOREG_TIMEOUT)
    except (OSError, subprocess.SubprocessError):
        return None
    return gpu_cores_from_ioreg(out.stdout)


def gpu_cores_from_ioreg(text: str) -> str | None:
    match = re.search(r'"gpu-core-count"\s*=\s*(\d+)', text)
    return match.group(1) if match else None


def os_name() -> str:
    """``macOS 14.5 (arm64)``, ``Debian GNU/Linux 12 (bookworm), Linux 6.1.0 (x86_64)``."""
    machine = platform.machine()
    if sys.platform == "darwin":
        return f"macOS {platform.mac_ver()[0]} ({machine})"
    if sys.platform.startswith("linux"):
        try:
            pretty = platform.freedesktop_os_release().get("PRETTY_NAME", "")
        except OSError:
            pretty = ""
        kernel = f"Linux {platform.release()} ({machine})"
        return f"{pretty}, {kernel}" if pretty else kernel
    return platform.platform()


def package_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
