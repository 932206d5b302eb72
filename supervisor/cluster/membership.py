"""Hosts joining and leaving a running cluster, without restarting anyone else.

A joining host becomes one more node (its memory reporter) and one single-host
generation group. Leaving drains first: the router stops choosing the host's
groups, requests in flight finish (up to a timeout), then its actors are
stopped by PID and the host is forgotten. A joined node that stays unreachable
past the grace period leaves the same way, on its own. A node from the hostfile
never does: it stays listed as unreachable and its groups wait for it
(supervisor/supervision/supervisor.py), because a Mac that reboots must not shrink the cluster.
"""

from __future__ import annotations

import asyncio
import re
import time

import structlog

from supervisor.cluster.cluster import Cluster
from supervisor.config.checks import (
    Problem,
    check_group_name,
    check_host,
    is_loopback,
    loopback_control,
)
from supervisor.config.load import is_local
from supervisor.config.spec import GroupSpec, HostSpec
from supervisor.serving.contract import BadRequest, Conflict, HostJoin, NotFound
from supervisor.ssh.target import (
    SSHError,
    SSHTargetError,
    load_ssh_config,
    parse_ssh_target,
    resolve_endpoint,
)

log = structlog.get_logger()


def host_from_join(join: HostJoin) -> HostSpec:
    """The HostSpec a join request describes, checked as the hostfile's hosts are and more
    (no start-up environment from a request); every problem is a BadRequest."""
    try:
        host = HostSpec(
            ssh=join.ssh,
            name=join.name or _default_name(join.ssh),
            python=join.python,
            workdir=join.workdir,
            env=dict(join.env),
            chip=join.chip,
            gpu_cores=join.gpu_cores,
            memory_gb=join.memory_gb,
        )
        check_host(host, "", from_request=True)
        check_group_name(join.group or host.name, "group")
    except Problem as exc:
        field = re.match(r'"?(\w+)"?', str(exc))
        raise BadRequest(str(exc), param=field[1] if field else None) from None
    return host


def _default_name(ssh: str) -> str:
    """A joined node's name when none is given: the host part of its ssh target."""
    if is_local(HostSpec(ssh=ssh)):
        return "localhost"
    try:
        return parse_ssh_target(ssh).host
    except SSHTargetError as exc:
        raise Problem(f'"ssh": {exc}') from None


def dials_back_to(control_host: str, host: HostSpec, ssh_config: str | None) -> str | None:
    """Why ``host``'s actors could not reach a loopback control address, or None.

    A remote machine dialing "127.0.0.1" reaches itself, and would hand the cluster token
    to whatever listens there. An SSH target that resolves to loopback is this machine.
    """
    if not is_loopback(control_host) or is_local(host):
        return None
    try:
        endpoint = resolve_endpoint(parse_ssh_target(host.ssh), load_ssh_config(ssh_config))
    except SSHError:
        endpoint = None
    if endpoint is not None and is_loopback(endpoint.hostname):
        return None
    return f"{loopback_control(control_host, host.name)}, then restart the supervisor"


class ClusterMembership:
    def __init__(self, cluster: Cluster, *, unreachable_grace: float = 120.0):
        self._cluster = cluster
        self._grace = unreachable_grace
        self._leaving: set[str] = set()
        # Only nodes that joined at run time may be removed for being unreachable.
        self._joined: set[str] = set()
        self._removals: set[asyncio.Task] = set()  # unreachable joined nodes leaving
        self.kept = 0  # times a hostfile node was past the grace and kept

    async def add_host(self, join: HostJoin) -> dict:
        cluster = self._cluster
        host = host_from_join(join)
        node = host.name
        problem = dials_back_to(cluster.control_host, host, cluster.spec.ssh.config)
        if problem is not None:
            raise BadRequest(problem, param="ssh")
        if node in cluster.state.nodes:
            raise Conflict(f"node {node!r} is already in the cluster; pick another --name")
        group_name = join.group or node
        if any(g.name == group_name for g in cluster.groups):
            raise Conflict(f"group {group_name!r} already exists; pick another --group")
        group = GroupSpec(name=group_name, model=join.model or cluster.spec.model, hosts=(host,))
        cluster.add_node(host)
        self._joined.add(node)
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
            cluster.leave(groups)
            drained = await cluster.wait_idle([g.name for g in groups], drain_timeout)
            for group in groups:
                await cluster.remove_group(group)
            await cluster.remove_node(node)
            self._joined.discard(node)
        finally:
            self._leaving.discard(node)
        log.info("host_left", node=node, groups=[g.name for g in groups], drained=drained)
        return {"node": node, "groups": [g.name for g in groups], "drained": drained}

    async def watch_unreachable(self, period: float = 1.0) -> None:
        """Remove joined nodes that stay unreachable (not up) longer than the grace period.

        A hostfile node past the grace is kept, and said so once per outage.
        """
        down_since: dict[str, float] = {}
        kept: set[str] = set()
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for name, node in list(self._cluster.state.nodes.items()):
                if node.local or node.state == "up":
                    down_since.pop(name, None)
                    kept.discard(name)
                    continue
                since = down_since.setdefault(name, now)
                if now - since <= self._grace or name in self._leaving or name in kept:
                    continue
                if name not in self._joined:
                    kept.add(name)
                    self.kept += 1
                    log.warning(
                        "node_unreachable_kept",
                        node=name,
                        reason=node.reason,
                        grace=self._grace,
                        why="a hostfile node is never removed; its groups wait for it",
                    )
                    continue
                log.warning(
                    "node_unreachable_removed", node=name, reason=node.reason, grace=self._grace
                )
                down_since.pop(name, None)
                removal = asyncio.create_task(
                    self.remove_host(name, drain_timeout=5.0), name=f"remove-{name}"
                )
                self._removals.add(removal)
                removal.add_done_callback(self._removal_done)

    def _removal_done(self, task: asyncio.Task) -> None:
        self._removals.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error(
                "node_removal_failed",
                task=task.get_name(),
                error=f"{type(error).__name__}: {error}",
            )

    async def close(self) -> None:
        """At shutdown: cancel removals still under way and wait for them to end."""
        removals = list(self._removals)
        for task in removals:
            task.cancel()
        await asyncio.gather(*removals, return_exceptions=True)
