"""What mlx.launch computes for a group: ring ``ip:port`` lists, jaccl's coordinator and matrix.

Mirrors ``launch_ring`` / ``launch_jaccl`` of ``mlx/_distributed_utils/launch.py`` (a
private module tied to argparse and its own launcher, so its few lines are repeated here
and tested against it), plus the ports each group listens on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import msgspec

from supervisor.config.checks import LOOPBACK, is_local_ssh
from supervisor.config.spec import RING_STARTING_PORT, Backend, GroupSpec, HostSpec


class JacclEnv(msgspec.Struct, frozen=True):
    """What mlx.launch gives every jaccl rank: coordinator address and rdma device matrix."""

    coordinator: str
    ibv_devices: str
    ring: bool = False

    def variables(self, ibv_devices_path: str) -> dict[str, str]:
        """Environment for a rank, given where ``ibv_devices`` was written on its node."""
        env = {"MLX_JACCL_COORDINATOR": self.coordinator, "MLX_IBV_DEVICES": ibv_devices_path}
        if self.ring:
            env["MLX_JACCL_RING"] = "1"
        return env


def loopback_ring(group: GroupSpec) -> bool:
    """True for a ring group whose ranks all listen on loopback (so all run on this machine)."""
    return group.backend == "ring" and all(
        ip in LOOPBACK for host in group.hosts for ip in ring_ips(host)
    )


def port_count(group: GroupSpec) -> int:
    """How many ports from ``starting_port`` the group listens on."""
    if group.backend != "ring":
        return 1  # the jaccl coordinator
    return sum(len(ring_ips(host)) for host in group.hosts)


def listen_addresses(group: GroupSpec) -> list[str]:
    """``ip:port`` every rank of the group listens on (empty until its ports are known)."""
    if group.world_size < 2 or group.starting_port is None:
        return []
    if group.backend != "ring":
        return [jaccl_env(group.hosts, group.backend, group.starting_port).coordinator]
    return [a for rank in ring_hostfile(group.hosts, group.starting_port) for a in rank]


def ring_ips(host: HostSpec) -> tuple[str, ...]:
    """The ips a ring rank listens on: its own, or loopback for a local host that lists none."""
    if host.ips:
        return host.ips
    if is_local_ssh(host.ssh):
        return ("127.0.0.1",)
    raise ValueError(f'host "{host.name}" has no "ips"; the ring backend needs one')


def ring_hostfile(
    hosts: Sequence[HostSpec],
    starting_port: int = RING_STARTING_PORT,
    connections_per_ip: int = 1,
) -> list[list[str]]:
    """The MLX_HOSTFILE content mlx.launch's launch_ring writes: ``ip:port`` lists per rank.

    Ports count up from ``starting_port`` across ranks, ips and connections. mlx.launch writes
    an empty file instead for a single rank, which needs no ring at all.
    """
    port = starting_port
    ranks = []
    for host in hosts:
        addresses = []
        for ip in ring_ips(host):
            for _ in range(connections_per_ip):
                addresses.append(f"{ip}:{port}")
                port += 1
        ranks.append(addresses)
    return ranks


def jaccl_env(
    hosts: Sequence[HostSpec],
    backend: Backend = "jaccl",
    starting_port: int = RING_STARTING_PORT,
) -> JacclEnv:
    """What mlx.launch's launch_jaccl gives every rank: rank 0's ip:port and the rdma matrix."""
    coordinator = f"{ring_ips(hosts[0])[0]}:{starting_port}"
    devices = json.dumps([list(h.rdma) for h in hosts])
    return JacclEnv(coordinator=coordinator, ibv_devices=devices, ring=backend == "jaccl-ring")
