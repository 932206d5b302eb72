"""A rank's environment, as mlx.launch would set it, and what the rank does with it first.

The supervisor spawns every rank itself (keeping each PID) with the variables mlx.launch
exports. Files mlx.launch would write on each node (``MLX_HOSTFILE``, ``MLX_IBV_DEVICES``)
travel as their content in ``MLXS_FILE_<NAME>``; the rank writes them to temporary files
and points ``<NAME>`` at them before ``mx.distributed.init``. No MLX import here: the
supervisor builds these environments too.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import MutableMapping, Sequence

RANK_ENV = "MLX_RANK"
WORLD_SIZE_ENV = "MLX_WORLD_SIZE"
BACKEND_ENV = "MLXS_DISTRIBUTED_BACKEND"  # what to pass to mx.distributed.init(backend=...)
CPU_ENV = "MLXS_CPU"  # the core this rank is pinned to, when ranks share a machine
FILE_PREFIX = "MLXS_FILE_"


def ring_environment(rank: int, hostfile: Sequence[Sequence[str]]) -> dict[str, str]:
    """A ring rank's variables: its rank and the ``ip:port`` lists of every rank."""
    return {
        RANK_ENV: str(rank),
        WORLD_SIZE_ENV: str(len(hostfile)),
        BACKEND_ENV: "ring",
        FILE_PREFIX + "MLX_HOSTFILE": json.dumps([list(r) for r in hostfile]),
    }


def jaccl_environment(
    rank: int, size: int, coordinator: str, ibv_devices: str, ring: bool = False
) -> dict[str, str]:
    """A jaccl rank's variables: coordinator ``ip:port`` and the rdma device matrix."""
    env = {
        RANK_ENV: str(rank),
        WORLD_SIZE_ENV: str(size),
        BACKEND_ENV: "jaccl",
        "MLX_JACCL_COORDINATOR": coordinator,
        FILE_PREFIX + "MLX_IBV_DEVICES": ibv_devices,
    }
    if ring:
        env["MLX_JACCL_RING"] = "1"
    return env


def write_rank_files(environ: MutableMapping[str, str], directory: str | None = None) -> list[str]:
    """Write every ``MLXS_FILE_<NAME>`` to a file and set ``<NAME>`` to its path; return paths."""
    paths = []
    for key in sorted(k for k in environ if k.startswith(FILE_PREFIX)):
        name = key.removeprefix(FILE_PREFIX)
        fd, path = tempfile.mkstemp(prefix=f"mlxs-{name.lower()}-", suffix=".json", dir=directory)
        with os.fdopen(fd, "w") as f:
            f.write(environ[key])
        environ[name] = path
        paths.append(path)
    return paths


def pin_to_cpu(environ: MutableMapping[str, str]) -> int | None:
    """Pin every thread of this process to the core ``MLXS_CPU`` names; the core, or None.

    Ranks of one group on one machine busy-poll in collectives: unpinned on a small
    machine they starve each other (MLX-NOTES). macOS has no affinity call: a no-op there.
    """
    text = environ.get(CPU_ENV, "")
    if not text or not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    core = cores[int(text) % len(cores)]
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), {core})
        except OSError:
            pass  # a thread that just ended
    return core


def join_transient_group(mx, expected_size: int, what: str):
    """``mx.distributed.init`` (``mx`` passed in: this module imports no MLX) with the
    supervisor-given environment, for a transient group (a probe, a model share); the rank
    files are read by then and removed, so a run leaves nothing in the temporary directory."""
    paths = write_rank_files(os.environ)
    try:
        group = mx.distributed.init(strict=True, backend=os.environ.get(BACKEND_ENV, "any"))
    finally:
        for path in paths:
            os.unlink(path)
    if group.size() != expected_size:
        raise RuntimeError(f"the {what} group has {group.size()} ranks, expected {expected_size}")
    return group
