"""Where the CPU goes while ``ops/bench prefix`` runs: per process, per thread, per function.

Per-thread CPU comes from the kernel (psutil), exact and free; the names of Python's
threads come from one ``py-spy dump`` (Linux TIDs), when py-spy is installed. Threads
py-spy does not list are native: OpenBLAS's and MLX's worker pools. ``Spy`` samples
functions with ``py-spy record`` for ``--profile`` runs only: sampling costs the
profiled process time, so its figures are not for ratios.
"""

from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil

NATIVE = "native threads (OpenBLAS, MLX)"
SPY_RATE = 100  # samples per second
STOP_TIMEOUT = 30.0


def py_spy() -> str | None:
    """The py-spy beside this interpreter (the venv's), else on PATH."""
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


def thread_names(pid: int) -> dict[int, str]:
    """TID -> name of every Python thread of ``pid``; empty without py-spy or permission."""
    spy = py_spy()
    if spy is None:
        return {}
    try:
        out = subprocess.run(
            [spy, "dump", "--pid", str(pid), "--nonblocking"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {int(t): n for t, n in re.findall(r'^Thread (\d+) \([^)]*\): "(.*)"', out, re.M)}


class ThreadCpu:
    """CPU seconds per (process role, thread name) of long-lived processes, as deltas."""

    def __init__(self, pids: dict[str, int]):
        self._pids = pids
        self._names = {role: thread_names(pid) for role, pid in pids.items()}
        self._last = self._read()
        self.total: collections.Counter = collections.Counter()

    def follow(self, role: str, pid: int) -> None:
        """``role`` now runs as ``pid`` (a restarted actor): name its threads afresh."""
        if self._pids[role] != pid:
            self._pids[role] = pid
            self._names[role] = thread_names(pid)

    def _read(self) -> dict[tuple[str, str], float]:
        seconds: collections.Counter = collections.Counter()
        for role, pid in self._pids.items():
            try:
                threads = psutil.Process(pid).threads()
            except psutil.Error:
                continue
            names = self._names[role]
            for t in threads:
                seconds[(role, names.get(t.id, NATIVE))] += t.user_time + t.system_time
        return seconds

    def add_since_last(self) -> None:
        """Count the CPU spent since the previous call (or the start) into ``total``."""
        now = self._read()
        for key, value in now.items():
            self.total[key] += max(0.0, value - self._last.get(key, 0.0))
        self._last = now

    def skip(self) -> None:
        """Forget the CPU spent since the previous call: it belongs to no measured pattern."""
        self._last = self._read()


class Spy:
    """``py-spy record`` of some processes, started and ended by PID."""

    def __init__(self, pids: dict[str, int], out_dir: Path, label: str):
        spy = py_spy()
        if spy is None:
            raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
        out_dir.mkdir(parents=True, exist_ok=True)
        self.files = {role: out_dir / f"{label}-{role.replace(' ', '-')}.txt" for role in pids}
        self._procs = [
            subprocess.Popen(
                [spy, "record", "--pid", str(pid), "--rate", str(SPY_RATE), "--threads"]
                + ["--format", "raw", "--output", str(self.files[role]), "--nonblocking"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for role, pid in pids.items()
        ]

    def stop(self) -> None:
        for proc in self._procs:  # SIGINT: py-spy writes its file, then exits
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self._procs:
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def summarize_spy(path: Path, top: int = 8) -> list[str]:
    """Samples per thread, and the functions most samples were in (self time), as lines."""
    by_thread: collections.Counter = collections.Counter()
    leaves: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return [f"  (no profile: {exc})"]
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = re.sub(r"^thread \(\d+\): ?", "", frames[0]) or "?"
        by_thread[thread] += int(count)
        leaves[thread][frames[-1] if len(frames) > 1 else "(no Python frame)"] += int(count)
    total = sum(by_thread.values()) or 1
    lines = []
    for thread, samples in by_thread.most_common():
        lines.append(f"  thread {thread}: {100 * samples / total:.0f} % of samples")
        for frame, n in leaves[thread].most_common(top):
            lines.append(f"    {100 * n / total:5.1f} %  {frame}")
    return lines
