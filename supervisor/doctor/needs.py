"""What each host of a hostfile must offer: its ranks' models, ports and RDMA devices."""

from __future__ import annotations

from dataclasses import dataclass

from actors.protocol.host_facts import FactsRequest, PortToBind
from supervisor.config.mlx_launch import jaccl_env, ring_hostfile
from supervisor.config.spec import ClusterSpec, GroupSpec, HostSpec


@dataclass(frozen=True)
class RankNeed:
    """One rank a host will run: its group, model and group size (its share of the model)."""

    group: str
    model: str
    world_size: int


@dataclass(frozen=True)
class PortNeed:
    group: str
    ip: str
    port: int


@dataclass(frozen=True)
class HostNeeds:
    host: HostSpec
    ranks: tuple[RankNeed, ...]
    ports: tuple[PortNeed, ...]
    rdma: tuple[str, ...]  # device names the hostfile gives this host
    env: dict[str, str]

    def request(self) -> FactsRequest:
        return FactsRequest(
            models=tuple(dict.fromkeys(r.model for r in self.ranks)),
            ports=tuple(PortToBind(p.ip, p.port) for p in self.ports),
            rdma=self.rdma,
            env=self.env,
        )


def host_needs(spec: ClusterSpec) -> list[HostNeeds]:
    """One entry per machine of the cluster, in hostfile order."""
    found = []
    for node in spec.nodes:
        ranks, ports, rdma = [], [], []
        for group in spec.groups:
            for rank, host in enumerate(group.hosts):
                if host.name != node.name:
                    continue
                ranks.append(RankNeed(group.name, group.model, group.world_size))
                ports.extend(rank_ports(group, rank))
                rdma.extend(device_names(host))
        found.append(
            HostNeeds(
                host=node,
                ranks=tuple(ranks),
                ports=tuple(dict.fromkeys(ports)),
                rdma=tuple(dict.fromkeys(rdma)),
                env={**spec.envs, **node.env},
            )
        )
    return found


def rank_ports(group: GroupSpec, rank: int) -> list[PortNeed]:
    """The ``ip:port``s this rank listens on; none when the ports are picked at start."""
    if group.world_size < 2 or group.starting_port is None:
        return []
    if group.backend == "ring":
        addresses = ring_hostfile(group.hosts, group.starting_port)[rank]
    elif rank == 0:
        addresses = [jaccl_env(group.hosts, group.backend, group.starting_port).coordinator]
    else:
        return []
    return [PortNeed(group.name, *split_address(a)) for a in addresses]


def split_address(address: str) -> tuple[str, int]:
    """``10.0.0.1:32323`` or ``[fe80::1]:32323`` -> (ip, port)."""
    ip, _, port = address.rpartition(":")
    return ip.strip("[]"), int(port)


def device_names(host: HostSpec) -> list[str]:
    """Every RDMA device the host's ``rdma`` row names (a peer may have several)."""
    names: list[str] = []
    for entry in host.rdma:
        if isinstance(entry, str):
            names.append(entry)
        elif entry is not None:
            names.extend(entry)
    return names
