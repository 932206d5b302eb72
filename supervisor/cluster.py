"""The cluster: control port, supervision tree and service, built from a ClusterSpec."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable

import structlog

from actors.protocol import ActorConfig
from supervisor.control import ControlServer
from supervisor.handle import ActorHandle
from supervisor.hostfile import ClusterSpec, GroupSpec, HostSpec, is_local
from supervisor.serving import ClusterService
from supervisor.spawner import LocalSpawner, Spawner, openblas_path
from supervisor.state import ClusterState, GroupDeclared, NodeDeclared, NodeStatus
from supervisor.supervision import ChildSpec, ChildSupervisor, Timeouts

log = structlog.get_logger()


def node_name(host: HostSpec) -> str:
    return host.name or host.ssh or "localhost"


class GenerationGroup:
    """A supervised generation group as the service sees it."""

    def __init__(self, spec: GroupSpec, supervisor: ChildSupervisor):
        self.name = spec.name
        self.model = spec.model
        self.spec = spec
        self.supervisor = supervisor

    @property
    def leader(self) -> ActorHandle | None:
        return self.supervisor.leader

    @property
    def failed(self) -> bool:
        return self.supervisor.failed

    @property
    def ready(self) -> asyncio.Event:
        return self.supervisor.ready

    @property
    def context_length(self) -> int:
        return self.supervisor.context_length


class Cluster:
    def __init__(
        self, spec: ClusterSpec, *, spawner_for: Callable[[HostSpec], Spawner] | None = None
    ):
        self.spec = spec
        self.state = ClusterState()
        self._token = secrets.token_urlsafe(32)
        r = spec.restart
        self._timeouts = Timeouts(heartbeat=r.heartbeat_timeout, watchdog=r.watchdog_interval)
        self._control_host = spec.control.host or "127.0.0.1"
        self.control = ControlServer(self._token, self._control_host, spec.control.port)
        self._spawner_for = spawner_for or self._default_spawner
        self._local = LocalSpawner()
        self.supervisors: list[ChildSupervisor] = []
        self.groups: list[GenerationGroup] = []
        self._tasks: list[asyncio.Task] = []
        self.service = ClusterService(self.state, self.groups, queue_limit=spec.queue_limit)

    def _default_spawner(self, host: HostSpec) -> Spawner:
        if is_local(host):
            return self._local
        from supervisor.ssh import SSHSpawner  # paramiko: only when a remote host exists

        return SSHSpawner(host)

    async def start(self) -> None:
        host, port = await self.control.start()
        log.info("control_listening", host=host, port=port)
        if openblas_path() is None and _is_linux():
            log.warning(
                "blas_hint",
                message="OpenBLAS not found; MLX on Linux decodes ~2x "
                "slower with its built-in BLAS: apt-get install libopenblas0-pthread",
            )
        for node in self.spec.nodes:
            self.state.apply(NodeDeclared(node_name(node), node.ssh, is_local(node)))
            self._add(self._memory_supervisor(node, port))
        for group in self.spec.groups:
            sup = self._group_supervisor(group, port)
            self.groups.append(GenerationGroup(group, sup))
            self._add(sup)

    def _add(self, sup: ChildSupervisor) -> None:
        self.supervisors.append(sup)
        self._tasks.append(asyncio.create_task(sup.run(), name=f"sup-{sup.name}"))

    def _config(self, actor_id: str, kind: str, host: HostSpec, port: int, **extra) -> ActorConfig:
        return ActorConfig(
            actor_id=actor_id,
            kind=kind,
            node=node_name(host),
            control_host=self._control_host,
            control_port=port,
            **extra,
        )

    def _env(self, host: HostSpec) -> dict[str, str]:
        return {**self.spec.envs, **host.env}

    def _memory_supervisor(self, host: HostSpec, port: int) -> ChildSupervisor:
        node = node_name(host)
        spec = ChildSpec(
            self._config(f"{node}.memory", "memory", host, port),
            self._spawner_for(host),
            env=self._env(host),
            python=host.python,
        )
        sup = self._child_supervisor(f"{node}.memory", [spec])

        def on_state(state: str) -> None:
            up = state == "ready"
            self.state.apply(
                NodeStatus(
                    node,
                    "up" if up else "down" if state == "failed" else "connecting",
                    "" if up else state,
                )
            )

        sup.on_state = on_state
        return sup

    def _group_supervisor(self, group: GroupSpec, port: int) -> ChildSupervisor:
        nodes = [node_name(h) for h in group.hosts]
        self.state.apply(
            GroupDeclared(group.name, group.model, nodes, group.parallel, group.backend)
        )
        children = [
            ChildSpec(
                self._config(
                    f"{group.name}.rank{rank}",
                    "generation",
                    host,
                    port,
                    rank=rank,
                    world_size=len(group.hosts),
                    group=group.name,
                    model=group.model,
                    max_batch=self.spec.max_batch,
                    parallel=group.parallel,
                ),
                self._spawner_for(host),
                env=self._env(host),
                python=host.python,
            )
            for rank, host in enumerate(group.hosts)
        ]
        return self._child_supervisor(group.name, children, group=group.name)

    def _child_supervisor(
        self, name: str, children: list[ChildSpec], group: str | None = None
    ) -> ChildSupervisor:
        return ChildSupervisor(
            name,
            children,
            control=self.control,
            state=self.state,
            token=self._token,
            restart_policy=self.spec.restart,
            timeouts=self._timeouts,
            group=group,
        )

    async def drain(self, timeout: float) -> None:
        """Refuse new work (503) and wait for in-flight requests, at most ``timeout`` s."""
        self.state.draining = True
        deadline = time.monotonic() + timeout
        while self.state.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        log.info("drained", left_in_flight=self.state.in_flight)

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.supervisors), return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.control.close()
        log.info("cluster_stopped")


def _is_linux() -> bool:
    import sys

    return sys.platform.startswith("linux")
