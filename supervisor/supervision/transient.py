"""A transient group of ranks on a group's hosts: spawn, hear, end every rank by PID.

`supervisor rdma-test`'s probe ranks and a model share over ``mx.distributed`` both start
ranks as the group's generation ranks would be (``rank_environments``, the same spawners,
cores, the last rank last: it is the one that connects the ring) but run another actor kind
that loads no model. They report over this run's own control server (an ephemeral port).
Whatever happens, a run ends within its deadline and every rank it spawned is ended by PID:
a rank that hangs (SIGSTOP, a dead cable: MLX collectives have no timeout) or dies ends the
run with a one-line reason, never a hung caller.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from actors.protocol.messages import ActorConfig, ActorError, LoadProgress, Message, Shutdown
from supervisor.config.load import is_local
from supervisor.config.mlx_launch import port_count
from supervisor.config.spec import ClusterSpec, GroupSpec, HostSpec
from supervisor.control.handle import ActorHandle
from supervisor.control.server import ControlServer
from supervisor.supervision.ranks import (
    cpu_environment,
    cpu_slots,
    free_starting_port,
    machine_name,
    rank_environments,
)
from supervisor.supervision.spawner import ActorLaunch, ActorProcess, LocalSpawner, Spawner

log = structlog.get_logger()

SHUTDOWN_GRACE = 3.0  # s a rank has to exit on Shutdown once the run is done, before SIGKILL
KILL_TIMEOUT = 15.0  # s to end every rank by PID (a remote kill waits on its SSH session)


def node_name(host: HostSpec) -> str:
    return host.name or host.ssh or "localhost"


def ports_after_serving(spec: ClusterSpec, group: GroupSpec) -> int | None:
    """Where a transient group may listen while the cluster serves: None (free ports picked
    at spawn) for a group whose ports are picked that way, else the first port past every
    group's block. Not just past ``group``'s: the hostfile's groups take consecutive blocks,
    so the one right after a group's is the next group's."""
    if group.starting_port is None:
        return None
    ends = [
        g.starting_port + port_count(g)
        for g in spec.groups
        if g.world_size > 1 and g.starting_port is not None
    ]
    return max(ends)


@dataclass(frozen=True)
class Transient:
    """What to run: ``kind`` on every rank, ``options[rank]`` its ActorConfig options."""

    kind: str
    options: Sequence[dict[str, str]]
    deadline: float  # s from the first spawn to ``done``
    env: dict[str, str] = field(default_factory=dict)  # added to every rank's environment
    starting_port: int | None = None  # None: free consecutive ports on loopback
    awaited: str = "report"  # what the timeout line says never came
    close_ssh: bool = False  # a CLI run closes the pooled SSH connections; a supervisor not


class TransientRun:
    """The facts one run has heard; ``changed`` wakes the waiter on each (bounded: the
    latest stage only, one error)."""

    def __init__(self, kind: str, nodes: list[str]):
        self.kind = kind
        self.nodes = nodes
        self.size = len(nodes)
        self.changed = asyncio.Event()
        self.joined: set[int] = set()
        self.stage = "spawning"
        self.error = ""
        self.finished = False  # the caller's ``done`` held
        self.seconds = 0.0
        self.pids: dict[int, int] = {}  # rank -> PID on its host

    def heard(self, rank: int, handle: ActorHandle, msg: Message) -> None:
        if isinstance(msg, LoadProgress) and msg.stage == "joined":
            self.joined.add(rank)
            log.info(f"{self.kind}_rank_joined", rank=rank, node=self.nodes[rank], pid=handle.pid)
            if len(self.joined) == self.size:
                self.stage = "joined"
        elif isinstance(msg, LoadProgress):
            self.stage = msg.stage
        elif isinstance(msg, ActorError):
            self.error = self.error or f"rank {rank} ({self.nodes[rank]}): {msg.message}"

    def fail(self, why: str) -> None:
        self.error = self.error or why
        self.changed.set()


OnMessage = Callable[[TransientRun, int, Message], None]


async def run_transient(
    spec: ClusterSpec,
    group: GroupSpec,
    what: Transient,
    on_message: OnMessage,
    done: Callable[[], bool],
) -> TransientRun:
    """Run ``what`` on ``group``'s hosts until ``done()`` or a failure (``run.error``).

    ``on_message(run, rank, msg)`` hears every message of every rank, after the run noted
    it (``joined``, ``stage``, an ActorError's line); ``done`` is asked after each one. Never
    longer than the deadline plus the kill timeout.
    """
    nodes = [node_name(h) for h in group.hosts]
    run = TransientRun(what.kind, nodes)
    began = time.monotonic()
    token = secrets.token_urlsafe(32)
    remote = any(not is_local(h) for h in group.hosts)
    # As the cluster does: loopback when every rank is here; else every interface, and each
    # remote rank dials the address its SSH connection came from.
    server = ControlServer(
        token,
        spec.control.host or (None if remote else "127.0.0.1"),
        0,  # an ephemeral port: the running supervisor holds the hostfile's
        max_pending=spec.control.max_pending,
        max_hello_bytes=spec.control.max_hello_bytes,
    )
    processes: dict[int, ActorProcess] = {}
    handles: dict[int, ActorHandle] = {}
    watchers: list[asyncio.Task] = []

    def hear(rank: int, handle: ActorHandle, msg: Message) -> None:
        run.heard(rank, handle, msg)
        on_message(run, rank, msg)
        run.finished = run.finished or done()
        run.changed.set()

    try:
        _, port = await server.start()
        async with asyncio.timeout(what.deadline):
            await _spawn_all(spec, group, what, server, token, port, hear, processes, handles)
            watchers = [
                asyncio.create_task(_watch(rank, nodes[rank], proc, run))
                for rank, proc in processes.items()
            ]
            while not run.finished and not run.error:
                run.changed.clear()
                await run.changed.wait()
    except TimeoutError:
        run.fail(_timed_out(what, run))
    except Exception as exc:  # an unreachable host, a refused spawn: the run failed
        run.fail(str(exc) or type(exc).__name__)
    finally:
        run.pids = {rank: h.pid for rank, h in handles.items()}
        await _end_all(processes, handles, clean=run.finished and not run.error, kind=what.kind)
        for task in watchers:
            task.cancel()
        await server.close()
        if remote and what.close_ssh:
            from supervisor.ssh.spawner import close_connections

            close_connections()
    run.seconds = time.monotonic() - began
    log.info(
        "transient_group_done",
        kind=what.kind,
        group=group.name,
        error=run.error,
        seconds=run.seconds,
    )
    return run


async def _spawn_all(
    spec: ClusterSpec,
    group: GroupSpec,
    what: Transient,
    server: ControlServer,
    token: str,
    port: int,
    hear: Callable[[int, ActorHandle, Message], None],
    processes: dict[int, ActorProcess],
    handles: dict[int, ActorHandle],
) -> None:
    """Spawn ranks 0..N-1 in order (ranks 0..N-2 accept; the last connects the ring)."""
    starting = what.starting_port
    if starting is None and group.world_size > 1:
        starting = free_starting_port(port_count(group))
    environments = rank_environments(group, starting)
    slots = cpu_slots([group], lambda h: machine_name(h, spec.ssh.config))
    spawners: dict[str, Spawner] = {}
    local = LocalSpawner()
    for rank, host in enumerate(group.hosts):
        node = node_name(host)
        actor_id = f"{group.name}.{what.kind}{rank}"

        def on_message(handle: ActorHandle, msg: Message, rank=rank, node=node) -> None:
            if rank not in handles:
                handles[rank] = handle
                log.info(f"{what.kind}_rank_connected", rank=rank, node=node, pid=handle.pid)
            hear(rank, handle, msg)

        expected = server.expect(actor_id, on_message=on_message)
        expected.handle.add_done_callback(
            lambda f, rank=rank, node=node: _connected(f, what.kind, rank, node, handles)
        )
        config = ActorConfig(
            actor_id=actor_id,
            kind=what.kind,
            node=node,
            control_host=spec.control.host or ("127.0.0.1" if is_local(host) else ""),
            control_port=port,
            rank=rank,
            world_size=group.world_size,
            group=group.name,
            options=dict(what.options[rank]),
        )
        env = {
            **spec.envs,
            **host.env,
            **what.env,
            **environments[rank],
            **cpu_environment(slots.get((group.name, rank))),
        }
        spawner = local if is_local(host) else _ssh_spawner(spec, host, spawners)
        launch = ActorLaunch(config, token, env, python=host.python, nonce=expected.nonce)
        processes[rank] = await spawner.spawn(launch)


def _connected(
    future: asyncio.Future[ActorHandle],
    kind: str,
    rank: int,
    node: str,
    handles: dict[int, ActorHandle],
) -> None:
    """A rank said Hello: known by its PID from now on (even if it never speaks again)."""
    if future.cancelled() or future.exception() is not None or rank in handles:
        return
    handles[rank] = handle = future.result()
    log.info(f"{kind}_rank_connected", rank=rank, node=node, pid=handle.pid)


def _ssh_spawner(spec: ClusterSpec, host: HostSpec, spawners: dict[str, Spawner]) -> Spawner:
    from supervisor.ssh.spawner import SSHSpawner  # paramiko: only when a remote host exists

    node = node_name(host)
    if node not in spawners:
        ssh = spec.ssh
        spawners[node] = SSHSpawner(
            host,
            known_hosts=ssh.known_hosts,
            accept_new_host_keys=ssh.accept_new_host_keys,
            connect_timeout=ssh.connect_timeout,
            retries=ssh.retries,
            ssh_config=ssh.config,
        )
    return spawners[node]


async def _watch(rank: int, node: str, proc: ActorProcess, run: TransientRun) -> None:
    """A rank that exits before the run is done ends it (its peers would hang)."""
    code = await proc.wait()
    if not run.finished:
        run.fail(f"rank {rank} ({node}) exited with status {code} during {run.stage}")


def _timed_out(what: Transient, run: TransientRun) -> str:
    missing = [f"{r} ({run.nodes[r]})" for r in range(run.size) if r not in run.joined]
    where = (
        f"ranks {', '.join(missing)} never joined the group"
        if missing
        else f"stuck during {run.stage}"
    )
    return f"no {what.awaited} within {what.deadline:g} s: {where}; a rank hangs or a link is down"


async def _end_all(
    processes: dict[int, ActorProcess], handles: dict[int, ActorHandle], clean: bool, kind: str
) -> None:
    """When done: Shutdown, a short grace; then (always) SIGKILL by PID what is left."""
    procs = list(processes.values())
    if clean:
        for handle in handles.values():
            try:
                await asyncio.wait_for(handle.tell(Shutdown(reason=f"{kind} done")), 1.0)
            except Exception:
                pass  # it is killed below
        if procs:
            await asyncio.wait(
                [asyncio.ensure_future(p.wait()) for p in procs], timeout=SHUTDOWN_GRACE
            )
    kills = [asyncio.ensure_future(p.kill()) for p in procs]
    if kills:
        await asyncio.wait(kills, timeout=KILL_TIMEOUT)
    for handle in handles.values():
        await handle.close()
