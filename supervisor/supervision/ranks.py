"""What each rank of a generation group is started with: mlx.launch's variables, ports, cores.

The supervisor spawns every rank itself (so it knows every PID) with the environment
``mlx.launch`` would have exported (``actors.protocol.rank_env`` says how the rank reads it).
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable, Sequence

from actors.protocol.rank_env import CPU_ENV, jaccl_environment, ring_environment
from supervisor.config.checks import LOOPBACK
from supervisor.config.load import is_local
from supervisor.config.mlx_launch import jaccl_env, ring_hostfile
from supervisor.config.spec import GroupSpec, HostSpec

THIS_MACHINE = "localhost"


def rank_environments(group: GroupSpec, starting_port: int | None) -> list[dict[str, str]]:
    """Each rank's mlx.launch variables, in rank order; nothing for a one-rank group."""
    n = group.world_size
    if n < 2:
        return [{} for _ in group.hosts]
    if starting_port is None:
        raise ValueError(f'group "{group.name}" has no ports; pick them with free_starting_port')
    if group.backend == "ring":
        hostfile = ring_hostfile(group.hosts, starting_port)
        return [ring_environment(rank, hostfile) for rank in range(n)]
    jaccl = jaccl_env(group.hosts, group.backend, starting_port)
    return [
        jaccl_environment(rank, n, jaccl.coordinator, jaccl.ibv_devices, jaccl.ring)
        for rank in range(n)
    ]


def free_starting_port(count: int, host: str = "127.0.0.1", attempts: int = 200) -> int:
    """A port p such that p .. p+count-1 are all free on ``host`` right now.

    Taken below the ephemeral range: a port the kernel hands out for outgoing connections
    (a rank's own control connection, say) could be taken again before the rank binds it.
    """
    low, high = _unclaimed_range()
    rng = random.Random()
    for _ in range(attempts):
        first = rng.randrange(low, high - count)
        held: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                _bind(host, port, held)
            return first
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise OSError(f"no {count} consecutive free ports on {host} after {attempts} attempts")


def _unclaimed_range() -> tuple[int, int]:
    """Ports below the kernel's ephemeral range (Linux: ip_local_port_range; macOS: 49152)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 49152
    return 20000, max(ephemeral, 20100)


def _bind(host: str, port: int, held: list[socket.socket]) -> int:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    held.append(sock)
    sock.bind((host, port))
    return sock.getsockname()[1]


def cpu_slots(
    groups: Sequence[GroupSpec], machine_of: Callable[[HostSpec], str]
) -> dict[tuple[str, int], int]:
    """A core index for each rank of a multi-rank group that shares its machine with another.

    Ring ranks busy-poll while they wait in a collective: two unpinned ranks on one small
    machine starve each other (MLX-NOTES: 17 ms vs 0.14 ms per 1 KiB all_sum on 2 cores).
    """
    ranks: dict[str, list[tuple[str, int]]] = {}
    for group in groups:
        if group.world_size < 2:
            continue
        for rank, host in enumerate(group.hosts):
            ranks.setdefault(machine_of(host), []).append((group.name, rank))
    return {
        member: slot
        for members in ranks.values()
        if len(members) > 1
        for slot, member in enumerate(members)
    }


def cpu_environment(slot: int | None) -> dict[str, str]:
    """The variables that pin a rank (``actors.protocol.rank_env.pin_to_cpu`` reads ``MLXS_CPU``).

    OpenBLAS sizes its thread pool when it loads, before the rank pins itself: two BLAS
    threads spinning on one core decoded at 0.6x (measured, 2 ranks on 2 cores).
    """
    return {} if slot is None else {CPU_ENV: str(slot), "OPENBLAS_NUM_THREADS": "1"}


def machine_name(host: HostSpec, ssh_config: str | None = None) -> str:
    """Which machine a host runs on: its SSH hostname after ssh_config, loopback as this one."""
    if is_local(host):
        return THIS_MACHINE
    from supervisor.ssh.target import load_ssh_config, parse_ssh_target, resolve_endpoint

    try:
        endpoint = resolve_endpoint(parse_ssh_target(host.ssh), load_ssh_config(ssh_config))
    except Exception:  # unreadable ssh_config: spawning will say so; here, guess by name
        return host.ssh
    name = endpoint.hostname.lower()
    return THIS_MACHINE if name in LOOPBACK else name
