"""A generation group's links, and rank 0's live probe reports turned into state events.

Link identity: the group's ranks talk in a ring (rank i to rank i+1, the last to rank 0),
and a probe is one ``all_sum`` over that ring. Two ranks make one link, ``"a↔b"`` (node
names in rank order). Past two, each neighbouring pair is a link and every link gets the
ring's figure: an all_sum is as fast as its slowest hop, so a degraded hop shows on every
link of the ring, and a per-pair probe (send/recv between each pair in turn) would cost N
probes for one. The interface is what that pair uses: both ends' first ring ip
(``"ip↔ip"``), or for jaccl the RDMA device each end names for the other (``"dev↔dev"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from actors.protocol.messages import LinkProbe, ProbeSettings
from supervisor.config.mlx_launch import ring_ips
from supervisor.config.spec import GroupSpec, HostSpec, ProbeSpec
from supervisor.state.events import LinkDown, LinkMeasured
from supervisor.supervision.supervisor import ChildSupervisor


class Link(msgspec.Struct, frozen=True):
    id: str
    nodes: list[str]
    interface: str


def probe_settings(spec: ProbeSpec) -> ProbeSettings:
    """The hostfile's ``probe`` section as the ranks are given it (ActorConfig.probe)."""
    fields = msgspec.structs.asdict(spec)
    del fields["comment"]
    return ProbeSettings(**fields)


def group_links(group: GroupSpec, names: Sequence[str]) -> list[Link]:
    """The links of ``group`` whose ranks run on the nodes ``names`` (rank order)."""
    n = group.world_size
    if n < 2:
        return []
    pairs = [(0, 1)] if n == 2 else [(i, (i + 1) % n) for i in range(n)]
    return [
        Link(
            f"{names[i]}↔{names[j]}",
            [names[i], names[j]],
            _interface(group.backend, group.hosts, i, j),
        )
        for i, j in pairs
    ]


def _interface(backend: str, hosts: Sequence[HostSpec], i: int, j: int) -> str:
    if backend != "ring" and hosts[i].rdma and hosts[j].rdma:
        return f"{_device(hosts[i].rdma[j])}↔{_device(hosts[j].rdma[i])}"
    return f"{_ip(hosts[i])}↔{_ip(hosts[j])}"


def _device(device) -> str:
    return "+".join(device) if isinstance(device, tuple) else str(device)


def _ip(host: HostSpec) -> str:
    try:
        return ring_ips(host)[0]
    except ValueError:  # a jaccl host that lists no ips: its ssh target says where it is
        return host.ssh


def link_events(group: str, links: list[Link], msg: LinkProbe) -> list[LinkMeasured | LinkDown]:
    """One event per link of the group from one probe report of its rank 0."""
    if not msg.ok:
        return [LinkDown(k.id, group, k.nodes, k.interface, msg.at, msg.error) for k in links]
    figures: dict[str, float] = {}
    if msg.kind == "latency":
        figures["latency_us"] = msg.latency_s * 1e6
    else:
        figures["bandwidth_gbps"] = msg.bandwidth_gbps
    return [
        LinkMeasured(k.id, group, k.nodes, k.interface, msg.at, msg.seconds, **figures)
        for k in links
    ]


class GroupSupervisor(ChildSupervisor):
    """A generation group's supervisor: its rank 0's link probe reports go to the state."""

    def __init__(self, *args, links: list[Link], **kwargs):
        super().__init__(*args, **kwargs)
        self.links = links

    def _on_message(self, child, msg) -> None:
        if isinstance(msg, LinkProbe):
            if child.spec.config.rank == 0 and self.group is not None:
                for event in link_events(self.group, self.links, msg):
                    self._state.apply(event)
            return
        super()._on_message(child, msg)
