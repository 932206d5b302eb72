"""One probe run of one group for `supervisor rdma-test`: spawn, collect, end every rank.

The ranks are started as the group's generation ranks would be (``rank_environments``,
the same spawners, ports and cores, the last rank last: it is the one that connects the
ring) but run ``python -m actors probe``, which loads no model. Rank 0 reports over this
run's own control port. Whatever happens, the run ends within its deadline and every rank
it spawned is ended by PID: a rank that hangs (SIGSTOP, a dead cable: MLX collectives have
no timeout) or dies makes the group's links "down", never a hung command.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from actors.protocol.messages import (
    ActorConfig,
    ActorError,
    LoadProgress,
    Message,
    ProbeReport,
    Shutdown,
)
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

SHUTDOWN_GRACE = 3.0  # s a rank has to exit on Shutdown after its report, before SIGKILL
KILL_TIMEOUT = 15.0  # s to end every rank by PID (a remote kill waits on its SSH session)


@dataclass(frozen=True)
class ProbeOptions:
    sizes: tuple[int, ...]
    rounds: int
    stress: bool
    deadline: float  # s from the first spawn to rank 0's report


@dataclass
class ProbeOutcome:
    """What one group's run found: ``status`` passed | failed | down."""

    group: str
    backend: str
    nodes: list[str]
    links: list[tuple[str, str]]
    status: str = "down"
    reason: str = ""
    report: ProbeReport | None = None
    seconds: float = 0.0
    pids: dict[int, int] = field(default_factory=dict)  # rank -> PID on its host


def node_name(host: HostSpec) -> str:
    return host.name or host.ssh or "localhost"


def ring_links(nodes: list[str]) -> list[tuple[str, str]]:
    """The links an all_sum over a ring crosses: each rank to the next (one for two ranks)."""
    if len(nodes) == 2:
        return [(nodes[0], nodes[1])]
    return [(nodes[i], nodes[(i + 1) % len(nodes)]) for i in range(len(nodes))]


def verdict(report: ProbeReport) -> tuple[str, str]:
    """passed, or failed with the first failed check's line."""
    if not report.correct:
        return "failed", f"correctness: {report.correctness}"
    if report.stress_failed:
        return "failed", (
            f"stress: {report.stress_failed} of {report.stress_rounds} rounds wrong; "
            f"{report.stress_detail}"
        )
    return "passed", ""


class _Run:
    """The facts one run has heard; ``changed`` wakes the waiter on each (bounded: the
    latest progress only, one report, one error)."""

    def __init__(self, size: int, on_progress: Callable[[str, float, str], None]):
        self.size = size
        self.on_progress = on_progress
        self.changed = asyncio.Event()
        self.joined: set[int] = set()
        self.stage = "spawning"
        self.report: ProbeReport | None = None
        self.error = ""

    def heard(self, rank: int, node: str, handle: ActorHandle, msg: Message) -> None:
        if isinstance(msg, LoadProgress) and msg.stage == "joined":
            self.joined.add(rank)
            log.info("probe_rank_joined", rank=rank, node=node, pid=handle.pid)
            if len(self.joined) == self.size:
                self.stage = "joined"
                self.on_progress("joined", 0.0, f"{self.size} ranks joined the group")
        elif isinstance(msg, LoadProgress):
            self.stage = msg.stage
            self.on_progress(msg.stage, msg.fraction, msg.detail)
        elif isinstance(msg, ProbeReport):
            self.report = msg
        elif isinstance(msg, ActorError):
            self.error = self.error or f"rank {rank} ({node}): {msg.message}"
        else:
            return
        self.changed.set()

    def fail(self, why: str) -> None:
        self.error = self.error or why
        self.changed.set()


async def probe_group(
    spec: ClusterSpec,
    group: GroupSpec,
    options: ProbeOptions,
    on_progress: Callable[[str, float, str], None] = lambda stage, fraction, detail: None,
) -> ProbeOutcome:
    """Run the probe on ``group``; never longer than its deadline plus the kill timeout."""
    nodes = [node_name(h) for h in group.hosts]
    outcome = ProbeOutcome(group.name, group.backend, nodes, ring_links(nodes))
    began = time.monotonic()
    run = _Run(group.world_size, on_progress)
    token = secrets.token_urlsafe(32)
    remote = any(not is_local(h) for h in group.hosts)
    # As the cluster does: loopback when every rank is here; else every interface, and each
    # remote rank dials the address its SSH connection came from.
    server = ControlServer(
        token,
        spec.control.host or (None if remote else "127.0.0.1"),
        0,  # an ephemeral port: a running supervisor may hold the hostfile's
        max_pending=spec.control.max_pending,
        max_hello_bytes=spec.control.max_hello_bytes,
    )
    processes: dict[int, ActorProcess] = {}
    handles: dict[int, ActorHandle] = {}
    watchers: list[asyncio.Task] = []
    try:
        _, port = await server.start()
        async with asyncio.timeout(options.deadline):
            await _spawn_all(spec, group, options, server, token, port, run, processes, handles)
            watchers = [
                asyncio.create_task(_watch(rank, nodes[rank], proc, run))
                for rank, proc in processes.items()
            ]
            while run.report is None and not run.error:
                run.changed.clear()
                await run.changed.wait()
    except TimeoutError:
        run.fail(_timed_out(options.deadline, run, nodes))
    except Exception as exc:  # an unreachable host, a refused spawn: the group is down
        run.fail(str(exc) or type(exc).__name__)
    finally:
        outcome.pids = {rank: h.pid for rank, h in handles.items()}
        await _end_all(processes, handles, clean=run.report is not None and not run.error)
        for task in watchers:
            task.cancel()
        await server.close()
        if remote:
            from supervisor.ssh.spawner import close_connections

            close_connections()
    outcome.seconds = time.monotonic() - began
    if run.report is not None:
        outcome.report = run.report
        outcome.status, outcome.reason = verdict(run.report)
    else:
        outcome.status, outcome.reason = "down", run.error
    log.info("probe_group_done", group=group.name, status=outcome.status, reason=outcome.reason)
    return outcome


async def _spawn_all(
    spec: ClusterSpec,
    group: GroupSpec,
    options: ProbeOptions,
    server: ControlServer,
    token: str,
    port: int,
    run: _Run,
    processes: dict[int, ActorProcess],
    handles: dict[int, ActorHandle],
) -> None:
    """Spawn ranks 0..N-1 in order (ranks 0..N-2 accept; the last connects the ring)."""
    starting = group.starting_port
    if starting is None:
        starting = free_starting_port(port_count(group))
    environments = rank_environments(group, starting)
    slots = cpu_slots([group], lambda h: machine_name(h, spec.ssh.config))
    spawners: dict[str, Spawner] = {}
    local = LocalSpawner()
    for rank, host in enumerate(group.hosts):
        node = node_name(host)
        actor_id = f"{group.name}.probe{rank}"

        def on_message(handle: ActorHandle, msg: Message, rank=rank, node=node) -> None:
            if rank not in handles:
                handles[rank] = handle
                log.info("probe_rank_connected", rank=rank, node=node, pid=handle.pid)
            run.heard(rank, node, handle, msg)

        expected = server.expect(actor_id, on_message=on_message)
        expected.handle.add_done_callback(
            lambda f, rank=rank, node=node: _connected(f, rank, node, handles)
        )
        config = ActorConfig(
            actor_id=actor_id,
            kind="probe",
            node=node,
            control_host=spec.control.host or ("127.0.0.1" if is_local(host) else ""),
            control_port=port,
            rank=rank,
            world_size=group.world_size,
            group=group.name,
            options={
                "sizes": ",".join(str(s) for s in options.sizes),
                "rounds": str(options.rounds),
                "stress": "1" if options.stress else "0",
            },
        )
        env = {
            **spec.envs,
            **host.env,
            **environments[rank],
            **cpu_environment(slots.get((group.name, rank))),
        }
        spawner = local if is_local(host) else _ssh_spawner(spec, host, spawners)
        launch = ActorLaunch(config, token, env, python=host.python, nonce=expected.nonce)
        processes[rank] = await spawner.spawn(launch)


def _connected(
    future: asyncio.Future[ActorHandle], rank: int, node: str, handles: dict[int, ActorHandle]
) -> None:
    """A rank said Hello: known by its PID from now on (even if it never speaks again)."""
    if future.cancelled() or future.exception() is not None or rank in handles:
        return
    handles[rank] = handle = future.result()
    log.info("probe_rank_connected", rank=rank, node=node, pid=handle.pid)


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


async def _watch(rank: int, node: str, proc: ActorProcess, run: _Run) -> None:
    """A rank that exits before the report takes the group down (its peers would hang)."""
    code = await proc.wait()
    if run.report is None:
        run.fail(f"rank {rank} ({node}) exited with status {code} during {run.stage}")


def _timed_out(deadline: float, run: _Run, nodes: list[str]) -> str:
    missing = [f"{r} ({nodes[r]})" for r in range(len(nodes)) if r not in run.joined]
    where = (
        f"ranks {', '.join(missing)} never joined the group"
        if missing
        else f"stuck during {run.stage}"
    )
    return f"no report within {deadline:g} s: {where}; a rank hangs or a link is down"


async def _end_all(
    processes: dict[int, ActorProcess], handles: dict[int, ActorHandle], clean: bool
) -> None:
    """After a report: Shutdown, a short grace; then (always) SIGKILL by PID what is left."""
    procs = list(processes.values())
    if clean:
        for handle in handles.values():
            try:
                await asyncio.wait_for(handle.tell(Shutdown(reason="probe done")), 1.0)
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
