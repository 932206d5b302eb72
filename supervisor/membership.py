"""Hosts joining and leaving a running cluster, without restarting anyone else.

A joining host becomes one more node (its memory reporter) and one single-host
generation group. Leaving drains first: the router stops choosing the host's
groups, requests in flight finish (up to a timeout), then its actors are
stopped by PID and the host is forgotten. A node that stays unreachable past
the grace period leaves the same way, on its own.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import structlog

from supervisor.hostfile import GroupSpec, HostSpec, is_local
from supervisor.service import BadRequest, Conflict, HostJoin, NotFound
from supervisor.ssh_target import SSHTargetError, parse_ssh_target

if TYPE_CHECKING:
    from supervisor.cluster import Cluster

log = structlog.get_logger()


def host_from_join(join: HostJoin) -> HostSpec:
    """The HostSpec a join request describes; a bad ssh target is a BadRequest."""
    if not is_local(HostSpec(ssh=join.ssh)):
        try:
            parse_ssh_target(join.ssh)
        except SSHTargetError as exc:
            raise BadRequest(f"ssh: {exc}", param="ssh") from None
    return HostSpec(
        ssh=join.ssh,
        name=join.name or join.ssh,
        python=join.python,
        workdir=join.workdir,
        env=dict(join.env),
        chip=join.chip,
        gpu_cores=join.gpu_cores,
        memory_gb=join.memory_gb,
    )


class ClusterMembership:
    def __init__(self, cluster: Cluster, *, unreachable_grace: float = 120.0):
        self._cluster = cluster
        self._grace = unreachable_grace
        self._leaving: set[str] = set()

    async def add_host(self, join: HostJoin) -> dict:
        cluster = self._cluster
        host = host_from_join(join)
        node = host.name
        if node in cluster.state.nodes:
            raise Conflict(f"node {node!r} is already in the cluster; pick another --name")
        group_name = join.group or node
        if any(g.name == group_name for g in cluster.groups):
            raise Conflict(f"group {group_name!r} already exists; pick another --group")
        group = GroupSpec(name=group_name, model=join.model or cluster.spec.model, hosts=(host,))
        cluster.add_node(host)
        cluster.add_group(group)
        log.info("host_joined", node=node, group=group_name, model=group.model, ssh=host.ssh)
        return {"node": node, "group": group_name, "model": group.model}

    async def remove_host(self, node: str, drain_timeout: float) -> dict:
        cluster = self._cluster
        if node not in cluster.state.nodes:
            raise NotFound(f"no node {node!r} in the cluster; `supervisor nodes` lists them")
        if node in self._leaving:
            raise Conflict(f"node {node!r} is already leaving")
        self._leaving.add(node)
        try:
            groups = cluster.groups_on(node)
            for group in groups:
                group.leaving = True
            drained = await cluster.wait_idle([g.name for g in groups], drain_timeout)
            for group in groups:
                await cluster.remove_group(group)
            await cluster.remove_node(node)
        finally:
            self._leaving.discard(node)
        log.info("host_left", node=node, groups=[g.name for g in groups], drained=drained)
        return {"node": node, "groups": [g.name for g in groups], "drained": drained}

    async def watch_unreachable(self, period: float = 1.0) -> None:
        """Remove nodes that stay unreachable (not up) longer than the grace period."""
        down_since: dict[str, float] = {}
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for name, node in list(self._cluster.state.nodes.items()):
                if node.local or node.state == "up":
                    down_since.pop(name, None)
                    continue
                since = down_since.setdefault(name, now)
                if now - since > self._grace and name not in self._leaving:
                    log.warning(
                        "node_unreachable_removed", node=name, reason=node.reason, grace=self._grace
                    )
                    down_since.pop(name, None)
                    asyncio.create_task(self.remove_host(name, drain_timeout=5.0))
