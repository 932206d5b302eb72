"""The cluster: control port, supervision tree and service, built from a ClusterSpec."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import assert_never

import structlog

from actors.protocol.messages import ActorConfig
from actors.protocol.model_spec import parse_fake_spec, served_model
from supervisor.cluster.sampler import Sampler
from supervisor.config.load import is_local
from supervisor.config.mlx_launch import port_count
from supervisor.config.spec import ClusterSpec, GroupSpec, HostSpec
from supervisor.control.handle import ActorHandle
from supervisor.control.server import ControlServer
from supervisor.serving.router import Hardware, combine_hardware
from supervisor.serving.service import ClusterService
from supervisor.state import ClusterState
from supervisor.state.events import (
    DrainStarted,
    GroupDeclared,
    GroupLeaving,
    GroupRemoved,
    NodeDeclared,
    NodeRemoved,
    NodeStatus,
    SupervisorRemoved,
)
from supervisor.supervision.child import ChildSpec, Timeouts
from supervisor.supervision.escalation import ClusterDown, GroupDown, NodeDown, Supervised, escalate
from supervisor.supervision.links import GroupSupervisor, Link, group_links, probe_settings
from supervisor.supervision.policy import SupervisorFlags, supervisor_flags
from supervisor.supervision.ranks import (
    cpu_environment,
    cpu_slots,
    free_starting_port,
    machine_name,
    rank_environments,
)
from supervisor.supervision.spawner import LocalSpawner, Spawner, openblas_path
from supervisor.supervision.supervisor import ChildSupervisor

log = structlog.get_logger()


def node_name(host: HostSpec) -> str:
    return host.name or host.ssh or "localhost"


class GenerationGroup:
    """A supervised generation group as the service sees it (a ServedGroup): what the
    hostfile says of it, and its supervisor; its facts are the ClusterState's."""

    def __init__(self, spec: GroupSpec, supervisor: ChildSupervisor):
        self.name = spec.name
        self.model = served_model(spec.model)
        self.spec = spec
        self.hardware = combine_hardware(
            [Hardware(h.chip, h.gpu_cores, h.memory_gb) for h in spec.hosts]
        )
        self.supervisor = supervisor

    def handle(self, actor_id: str) -> ActorHandle | None:
        return self.supervisor.handle(actor_id)


class Cluster:
    def __init__(
        self, spec: ClusterSpec, *, spawner_for: Callable[[HostSpec], Spawner] | None = None
    ):
        self.spec = spec
        self.state = ClusterState(
            history=spec.history, queue_limit=spec.queue_limit, model_jobs=spec.models.jobs_kept
        )
        self._sampler = Sampler(self.state)  # the time series' beat, while the cluster runs
        self._token = secrets.token_urlsafe(32)
        r = spec.restart
        self._timeouts = Timeouts(heartbeat=r.heartbeat_timeout, watchdog=r.watchdog_interval)
        # A group's ranks share one mx.distributed world: one fails, all restart. Each
        # node actor is alone in its set (a ChildSupervisor per node).
        self._group_flags = supervisor_flags("one_for_all", r)
        self._node_flags = supervisor_flags("one_for_one", r)
        # No control.host: loopback when every node is this machine; with remote nodes,
        # every interface, and each remote actor dials back the address its SSH
        # connection came from (a remote "127.0.0.1" would hand the token to itself).
        self._remote_nodes = any(not is_local(n) for n in spec.nodes)
        listen = spec.control.host or (None if self._remote_nodes else "127.0.0.1")
        self._control_host = spec.control.host or ("0.0.0.0" if self._remote_nodes else "127.0.0.1")
        self.control = ControlServer(
            self._token,
            listen,
            spec.control.port,
            stream_buffer_bytes=spec.stream_buffer_bytes,
            max_pending=spec.control.max_pending,
            max_hello_bytes=spec.control.max_hello_bytes,
        )
        self._spawner_for = spawner_for or self._default_spawner
        self._local = LocalSpawner()
        self._remote: dict[str, Spawner] = {}  # one SSHSpawner per node, by name
        self._cpu_slots = cpu_slots(spec.groups, lambda h: machine_name(h, spec.ssh.config))
        self.supervisors: list[ChildSupervisor] = []
        self.groups: list[GenerationGroup] = []
        self._tasks: list[asyncio.Task] = []
        self._task_of: dict[str, asyncio.Task] = {}  # supervisor name -> its run task
        self._port = 0
        self.service = ClusterService(
            self.state,
            self.groups,
            queue_limit=spec.queue_limit,
            router=spec.router,
            ready_wait=spec.ready_wait,
        )

    @property
    def control_host(self) -> str:
        """The address the control port listens on ("0.0.0.0": every interface)."""
        return self._control_host

    def _dial_address(self, host: HostSpec) -> str:
        """What ``host``'s actors dial: control.host, loopback, or "" (their SSH client's)."""
        if self.spec.control.host:
            return self.spec.control.host
        return "127.0.0.1" if is_local(host) else ""

    def _default_spawner(self, host: HostSpec) -> Spawner:
        if is_local(host):
            return self._local
        from supervisor.ssh.spawner import SSHSpawner  # paramiko: only when a remote host exists

        node = node_name(host)
        if node not in self._remote:
            ssh = self.spec.ssh
            self._remote[node] = SSHSpawner(
                host,
                known_hosts=ssh.known_hosts,
                accept_new_host_keys=ssh.accept_new_host_keys,
                connect_timeout=ssh.connect_timeout,
                retries=ssh.retries,
                ssh_config=ssh.config,
            )
        return self._remote[node]

    async def start(self) -> None:
        host, port = await self.control.start()
        self._port = port
        self._sampler.start()
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
            self._add(self._sync_supervisor(node, port))
        for group in self.spec.groups:
            sup = self._group_supervisor(group, port)
            self.groups.append(GenerationGroup(group, sup))
            self._add(sup)

    def _add(self, sup: ChildSupervisor) -> None:
        self.supervisors.append(sup)
        task = asyncio.create_task(sup.run(), name=f"sup-{sup.name}")
        self._tasks.append(task)
        self._task_of[sup.name] = task

    # ------------------------------------------------------------- membership

    def add_node(self, host: HostSpec) -> None:
        """A node joining at run time: declare it and start its memory reporter."""
        self.state.apply(NodeDeclared(node_name(host), host.ssh, is_local(host)))
        self._add(self._memory_supervisor(host, self._port))
        self._add(self._sync_supervisor(host, self._port))

    def add_group(self, group: GroupSpec) -> None:
        """A group joining at run time; the others are not touched."""
        sup = self._group_supervisor(group, self._port)
        self.groups.append(GenerationGroup(group, sup))
        self._add(sup)

    def groups_on(self, node: str) -> list[GenerationGroup]:
        return [g for g in self.groups if node in (node_name(h) for h in g.spec.hosts)]

    async def remove_group(self, group: GenerationGroup) -> None:
        """Stop a group's actors (by PID after the grace) and forget it everywhere."""
        await self._retire(group.supervisor)
        self.groups.remove(group)
        self.service.forget_group(group.name)
        self.state.apply(GroupRemoved(group.name))

    async def remove_node(self, node: str) -> None:
        for sup in [s for s in self.supervisors if s.name in (f"{node}.memory", f"{node}.sync")]:
            await self._retire(sup)
        self.state.apply(NodeRemoved(node))

    async def _retire(self, sup: ChildSupervisor) -> None:
        await sup.stop()
        task = self._task_of.pop(sup.name, None)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
            self._tasks.remove(task)
        self.supervisors.remove(sup)
        self.state.apply(SupervisorRemoved(sup.name))

    def _config(self, actor_id: str, kind: str, host: HostSpec, port: int, **extra) -> ActorConfig:
        return ActorConfig(
            actor_id=actor_id,
            kind=kind,
            node=node_name(host),
            control_host=self._dial_address(host),
            control_port=port,
            **extra,
        )

    def _env(self, host: HostSpec) -> dict[str, str]:
        """The hostfile's envs, then the host's; ``models_dir``: where its hub cache is."""
        models_dir = host.models_dir or self.spec.models_dir
        cache = {"HF_HUB_CACHE": models_dir} if models_dir else {}
        return {**self.spec.envs, **cache, **host.env}

    def _sync_supervisor(self, host: HostSpec, port: int) -> ChildSupervisor:
        """A node's sync actor (models on its disk), alone in its one_for_one set."""
        node = node_name(host)
        queue = {"queue": str(self.spec.models.sync_queue)}  # asks it holds; more: refused
        config = self._config(f"{node}.sync", "sync", host, port, options=queue)
        child = ChildSpec(config, self._spawner_for(host), env=self._env(host), python=host.python)
        return self._child_supervisor(f"{node}.sync", [child], self._node_flags)

    def sync_handle(self, node: str) -> ActorHandle | None:
        """The live handle of ``node``'s sync actor, None while it is not connected."""
        sup = next((s for s in self.supervisors if s.name == f"{node}.sync"), None)
        return sup.handle(f"{node}.sync") if sup is not None else None

    def connector(self, node: str):
        """How the supervisor reaches ``node`` over SSH (an SSHConnector); None: local."""
        spawner = self._remote.get(node)
        return getattr(spawner, "connector", None)

    def _memory_supervisor(self, host: HostSpec, port: int) -> ChildSupervisor:
        node = node_name(host)
        spawner = self._spawner_for(host)
        spec = ChildSpec(
            self._config(f"{node}.memory", "memory", host, port),
            spawner,
            restart="permanent",
            env=self._env(host),
            python=host.python,
        )
        sup = self._child_supervisor(f"{node}.memory", [spec], self._node_flags)

        def on_state(state: str) -> None:
            up = state == "ready"
            # An SSH spawner knows why its host is unreachable (host key, refused, timeout).
            unreachable = getattr(spawner, "last_error", None)
            # "waiting": the host did not answer; its supervisor tries again with the backoff.
            if state == "failed":
                return  # escalated: _escalate marks the node down
            shown = {"ready": "up", "waiting": "unreachable"}
            self.state.apply(
                NodeStatus(node, shown.get(state, "connecting"), "" if up else unreachable or state)
            )

        sup.on_state = on_state
        sup.on_give_up = lambda reason: self._escalate(
            "node", node, getattr(spawner, "last_error", None) or reason
        )
        return sup

    def _group_supervisor(self, group: GroupSpec, port: int) -> ChildSupervisor:
        nodes = [node_name(h) for h in group.hosts]
        # A "fake:<name>?options" model runs the fake engine: routing without MLX.
        fake = parse_fake_spec(group.model)
        kind, model, options = ("fake_engine", *fake) if fake else ("generation", group.model, {})
        self.state.apply(GroupDeclared(group.name, model, nodes, group.parallel, group.backend))
        ranks = rank_environments(group, self._starting_port(group)) if not fake else []
        children = [
            ChildSpec(
                self._config(
                    f"{group.name}.rank{rank}",
                    kind,
                    host,
                    port,
                    rank=rank,
                    world_size=len(group.hosts),
                    group=group.name,
                    model=model,
                    max_batch=self.spec.max_batch,
                    prompt_cache_bytes=self.spec.prompt_cache_bytes,
                    prompt_cache_entries=self.spec.prompt_cache_entries,
                    prefill_step_tokens=self.spec.prefill_step_tokens,
                    stream_interval_ms=self.spec.stream_interval_ms,
                    memory_margin_bytes=self.spec.memory_margin_bytes,
                    parallel=group.parallel,
                    options=options,
                    probe=probe_settings(self.spec.probe),
                ),
                self._spawner_for(host),
                restart=group.restart,
                env={
                    **self._env(host),
                    **(ranks[rank] if ranks else {}),
                    **cpu_environment(self._cpu_slots.get((group.name, rank))),
                },
                python=host.python,
            )
            for rank, host in enumerate(group.hosts)
        ]
        links = group_links(group, nodes)
        sup = self._child_supervisor(group.name, children, self._group_flags, group.name, links)
        sup.on_give_up = lambda reason: self._escalate("group", group.name, reason)
        return sup

    def _escalate(self, kind: Supervised, name: str, reason: str) -> None:
        """A supervisor gave up: act by the rule in supervisor.supervision.escalation."""
        states = {g: view.state for g, view in self.state.groups.items()}
        match escalate(kind, name, reason, states):
            case NodeDown(node, why):
                self.state.apply(NodeStatus(node, "down", why))
            case GroupDown():
                pass  # it stays down, marked failed by its supervisor; the others serve
            case ClusterDown(why):
                log.error("cluster_failed", reason=why)
            case never:
                assert_never(never)

    def _starting_port(self, group: GroupSpec) -> int | None:
        """The hostfile's ports, or free ones when every rank listens on loopback.

        Picked once: a restarted group binds the same ports again (MLX-NOTES: at once).
        """
        if group.world_size < 2 or group.starting_port is not None:
            return group.starting_port
        return free_starting_port(port_count(group))

    def _child_supervisor(
        self,
        name: str,
        children: list[ChildSpec],
        flags: SupervisorFlags,
        group: str | None = None,
        links: list[Link] | None = None,
    ) -> ChildSupervisor:
        """``links``: a generation group's, whose rank 0 reports their live probe."""
        extra = {} if links is None else {"links": links}
        return (ChildSupervisor if links is None else GroupSupervisor)(
            name,
            children,
            control=self.control,
            state=self.state,
            token=self._token,
            flags=flags,
            timeouts=self._timeouts,
            group=group,
            **extra,
        )

    async def drain(self, timeout: float) -> None:
        """Refuse new work (503) and wait for in-flight requests, at most ``timeout`` s."""
        self.state.apply(DrainStarted())
        await self.wait_idle(None, timeout)
        log.info("drained", left_in_flight=self.state.in_flight)

    async def wait_idle(self, groups: list[str] | None, timeout: float) -> bool:
        """Wait until ``groups`` (None: all) have nothing in flight; False if time ran out."""

        def idle() -> bool:
            views = self.state.groups
            names = views if groups is None else [g for g in groups if g in views]
            return not any(views[g].in_flight for g in names)

        return await self.state.wait_for(idle, timeout)

    def leave(self, groups: list[GenerationGroup]) -> None:
        """``groups`` are drained away: they finish their work and are given none."""
        for group in groups:
            self.state.apply(GroupLeaving(group.name))

    async def stop(self, grace: float | None = None) -> None:
        """Stop every actor; what has not exited after ``grace`` s is killed by PID."""
        await self._sampler.stop()
        await asyncio.gather(*(s.stop(grace) for s in self.supervisors), return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.control.close()
        if self._remote:
            from supervisor.ssh.spawner import close_connections

            close_connections()  # after the remote actors were ended through them
        log.info("cluster_stopped")


def _is_linux() -> bool:
    import sys

    return sys.platform.startswith("linux")
