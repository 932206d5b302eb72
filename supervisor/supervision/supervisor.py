"""The supervision tree: start children, watch them, restart them by policy.

A ``ChildSupervisor`` runs a set of children under its ``SupervisorFlags``. With
one_for_all (a generation group), if any child exits, loses its control connection, goes
silent, or stops making progress with work in flight (supervisor.supervision.watchdog), every child
of the set is killed by PID and the set is restarted by each child's restart type.
one_for_one (the node actors) is a ChildSupervisor per child. A set that restarts more
than its intensity allows gives up and escalates (``on_give_up``) to the cluster.
The supervisor decides; the spawner executes.

A spawn that cannot reach its host (HostUnreachable) is no failure of the child: the
set is ``waiting`` for the host, retried with the capped backoff for as long as it
takes, spending no restart intensity, and starts normally once the host answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from actors.protocol.messages import ActorError, Heartbeat, LoadProgress, Ready, Shutdown
from supervisor.control.handle import ActorHandle
from supervisor.control.server import ControlServer
from supervisor.state import ClusterState
from supervisor.state.events import (
    ActorHeartbeat,
    ActorLoading,
    ActorReady,
    ActorRestarted,
    ActorSpawned,
    ActorStarting,
    ActorStopped,
    GroupState,
    SupervisorRestarted,
    SupervisorStarted,
)
from supervisor.state.views import GroupStateName
from supervisor.supervision.child import Child, ChildFailed, ChildSpec, Timeouts
from supervisor.supervision.policy import (
    GiveUp,
    Leave,
    RestartHistory,
    SupervisorFlags,
    Wait,
    decide,
)
from supervisor.supervision.spawner import ActorLaunch, HostUnreachable
from supervisor.supervision.watchdog import Limits, Ok, Pulse, check, loop_stall

log = structlog.get_logger()

# Seconds a child whose connection closed is given to exit, so its exit code is known.
EXIT_CODE_GRACE = 1.0


class ChildSupervisor:
    """Supervises one restart set: all its children (one_for_all) or its one child."""

    def __init__(
        self,
        name: str,
        children: list[ChildSpec],
        *,
        control: ControlServer,
        state: ClusterState,
        token: str,
        flags: SupervisorFlags,
        timeouts: Timeouts,
        group: str | None = None,
    ):
        if flags.strategy == "one_for_one" and len(children) != 1:
            # A set restarts as one: under one_for_one each child is its own set.
            raise ValueError(f"{name}: one_for_one supervises one child per ChildSupervisor")
        self.name = name
        self.group = group
        self._specs = children
        self._control = control
        self._state = state
        self._token = token
        self._flags = flags
        self._timeouts = timeouts
        self._children: list[Child] = []
        # Children the state has heard of: a rank whose peers failed first never started.
        self._declared: dict[str, None] = {}
        self._stopping = asyncio.Event()
        self._failure: asyncio.Future[ChildFailed] | None = None
        self._waiting = False  # the last start could not reach a host
        self.on_state: Callable[[str], None] = lambda s: None
        # Called with the reason once the set gave up: the cluster decides what follows.
        self.on_give_up: Callable[[str], None] = lambda reason: None

    # --------------------------------------------------- reads (facts: the state's)

    def handle(self, actor_id: str) -> ActorHandle | None:
        """The live handle of ``actor_id`` while this incarnation lasts (handles live here)."""
        if self._failure is None or self._failure.done():
            return None  # the incarnation is over: its handles serve nobody
        for child in self._children:
            if child.actor_id == actor_id and child.handle is not None and child.handle.is_open:
                return child.handle
        return None

    @property
    def leader(self) -> ActorHandle | None:
        """The handle of the group's leader while the state says the group is ready."""
        view = self._state.groups.get(self.group) if self.group is not None else None
        return None if view is None or view.leader is None else self.handle(view.leader)

    @property
    def failed(self) -> bool:
        view = self._state.groups.get(self.group) if self.group is not None else None
        return view is not None and view.state == "failed"

    def _loaded(self) -> bool:
        """Every child of this incarnation said Ready: from now on the watchdog counts."""
        return bool(self._children) and all(c.ready.done() for c in self._children)

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        flags = self._flags
        self._state.apply(SupervisorStarted(self.name, self.group, flags.intensity, flags.period))
        restarted = False
        unreachable = 0  # starts in a row that could not reach a host
        while not self._stopping.is_set():
            if not self._waiting:  # while waiting, "starting" is said once a host answers
                self._set_group_state("starting", restarted=restarted)
            failure = await self._one_incarnation()
            if not self._stopping.is_set():  # logged before the kills, which a stop may cut short
                event = "supervisor_child_failed"
                if failure.unreachable:
                    event = "supervisor_host_unreachable"
                log.warning(event, supervisor=self.name, reason=failure.reason)
            await self._kill_all(failure)
            if self._stopping.is_set():
                break
            unreachable = unreachable + 1 if failure.unreachable else 0
            restart_type = self._specs[0].restart
            now = time.monotonic()
            history = RestartHistory(self._state.supervisors[self.name].restart_times)
            decision = decide(self._flags, history, now, restart_type, failure.normal, unreachable)
            if isinstance(decision, Wait):
                self._waiting = True
                self._set_group_state(
                    "waiting", f"{failure.reason}; next try in {decision.delay:.1f} s"
                )
                await self._pause(decision.delay)
                continue
            self._waiting = False
            if failure.permanent:
                decision = GiveUp("")  # a configuration error: no restart can fix it
            if isinstance(decision, GiveUp):
                reason = "; ".join(r for r in (failure.reason, decision.reason) if r)
                for actor_id in self._declared:
                    self._state.apply(ActorStopped(actor_id, "failed", reason))
                self._set_group_state("failed", reason)
                log.error("supervisor_gave_up", supervisor=self.name, reason=reason)
                self.on_give_up(reason)  # escalate
                return
            if isinstance(decision, Leave):
                self._set_group_state("stopped", failure.reason)
                return
            restarted = True
            self._state.apply(SupervisorRestarted(self.name, now, failure.reason))
            for actor_id in self._declared:
                self._state.apply(ActorRestarted(actor_id))
            self._set_group_state(
                "restarting", f"{failure.reason}; restart in {decision.delay:.1f} s"
            )
            await self._pause(decision.delay)
        self._set_group_state("stopped", "supervisor stopping")

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if the supervisor is told to stop."""
        try:
            await asyncio.wait_for(self._stopping.wait(), delay)
        except TimeoutError:
            pass

    async def stop(self, grace: float | None = None) -> None:
        """Ask every child to shut down; what has not exited after ``grace`` is killed by PID."""
        self._stopping.set()
        grace = self._timeouts.stop_grace if grace is None else grace
        # Together: a child that stops reading costs one send timeout, not one per child.
        open_handles = [c.handle for c in self._children if c.handle and c.handle.is_open]
        shutdown = Shutdown(reason="supervisor stopping")
        await asyncio.gather(*(h.tell(shutdown) for h in open_handles), return_exceptions=True)
        procs = [c.process for c in self._children if c.process is not None]
        if procs:
            await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs], timeout=grace)
        self._fail(ChildFailed("supervisor stopping", normal=True))

    # ----------------------------------------------------------- incarnation

    async def _one_incarnation(self) -> ChildFailed:
        loop = asyncio.get_running_loop()
        self._failure = loop.create_future()
        self._children = [Child(spec) for spec in self._specs]
        watchers: list[asyncio.Task] = [asyncio.create_task(self._monitor())]
        try:
            # Ring connect order (MLX-NOTES): ranks 0..N-2 accept, the last rank dials, and
            # gives up after ~31 s: it starts once the others wait in mx.distributed.init.
            for child in self._children:
                if child is self._children[-1] and child.spec.config.world_size > 1:
                    await self._await_or_fail(
                        asyncio.gather(*(c.connecting for c in self._children[:-1])),
                        self._timeouts.load,
                        "ranks reaching mx.distributed.init",
                    )
                await self._start_child(child, watchers)
            if self._waiting:  # every host answered again: a start like any other
                self._waiting = False
                self._set_group_state("starting")
            await self._await_or_fail(
                asyncio.gather(*(c.ready for c in self._children)),
                self._timeouts.load,
                "model load",
            )
            for child in self._children:
                child.progress_at = time.monotonic()  # the watchdog counts from ready, not spawn
            leader = self._children[0]
            context = leader.ready.result().context_length
            self._set_group_state("ready", leader=leader.actor_id, context_length=context)
            return await self._failure
        except ChildFailed as failed:
            return failed
        finally:
            for task in watchers:
                task.cancel()

    async def _start_child(self, child: Child, watchers: list[asyncio.Task]) -> None:
        cfg = child.spec.config
        self._state.apply(ActorStarting(cfg.actor_id, cfg.kind, cfg.node, self.group, cfg.rank))
        self._declared.setdefault(cfg.actor_id)
        # A fresh nonce; the listener is given now: the actor's Ready may precede our wake-up.
        expected = self._control.expect(
            cfg.actor_id, on_message=lambda h, m, c=child: self._on_message(c, m)
        )
        hello = expected.handle
        spec = child.spec
        launch = ActorLaunch(cfg, self._token, spec.env, spec.python, nonce=expected.nonce)
        try:
            child.process = await child.spec.spawner.spawn(launch)
        except HostUnreachable as exc:
            self._control.forget(cfg.actor_id)
            reason = f"node {cfg.node} unreachable: {exc.reason}"
            self._state.apply(ActorStopped(cfg.actor_id, "waiting", reason))
            raise ChildFailed(reason, unreachable=True) from exc
        except Exception as exc:
            self._control.forget(cfg.actor_id)
            reason = f"{cfg.actor_id} could not be spawned on {cfg.node}: {exc}"
            self._state.apply(ActorStopped(cfg.actor_id, "failed", reason, cause="spawn"))
            raise ChildFailed(reason) from exc
        self._state.apply(ActorSpawned(cfg.actor_id, child.process.pid))
        watchers.append(asyncio.create_task(self._watch_exit(child)))
        handle = await self._await_or_fail(hello, self._timeouts.hello, f"{cfg.actor_id} hello")
        child.handle = handle
        child.last_beat = time.monotonic()
        watchers.append(asyncio.create_task(self._watch_connection(child)))

    async def _await_or_fail(self, awaitable, timeout: float, what: str):
        """Wait for ``awaitable`` unless a child fails first or the time runs out."""
        task = asyncio.ensure_future(awaitable)
        done, _ = await asyncio.wait(
            {task, self._failure}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if task in done:
            return task.result()
        task.cancel()
        # A cancelled gather() ends with CancelledError as its exception: consume it.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        if self._failure.done():
            raise self._failure.result()
        raise ChildFailed(f"{self.name}: {what} timed out after {timeout:.0f} s", cause="timeout")

    def _fail(self, failure: ChildFailed) -> None:
        if self._failure is not None and not self._failure.done():
            self._failure.set_result(failure)

    # -------------------------------------------------------------- watchers

    async def _watch_exit(self, child: Child) -> None:
        code = await child.process.wait()
        if not self._stopping.is_set():
            self._state.apply(ActorStopped(child.actor_id, "exited", f"exit code {code}"))
        self._fail(ChildFailed.exited(child.actor_id, code))

    async def _watch_connection(self, child: Child) -> None:
        reason = await child.handle.closed
        # A process that ends closes its connection first: wait a moment for its exit
        # code, so the failure says how it ended and a normal exit (code 0) counts as one
        # for a transient child. Alive past the grace: the connection itself was lost.
        try:
            await asyncio.wait_for(asyncio.shield(child.process.wait()), EXIT_CODE_GRACE)
            return  # _watch_exit reports it, with the code
        except TimeoutError:
            pass
        self._fail(ChildFailed.lost(child.actor_id, reason))

    async def _monitor(self) -> None:
        """Heartbeat silence for every child; no progress with work in flight (the watchdog)."""
        t = self._timeouts
        limits = Limits(heartbeat=t.heartbeat, connect=t.connect, watchdog=t.watchdog)
        period = min(0.25, t.heartbeat / 4)
        expected = time.monotonic() + period
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            stalled = loop_stall(now, expected)
            if stalled:
                for child in self._children:
                    child.last_beat += stalled
                    child.progress_at += stalled
                log.warning(
                    "supervisor_loop_stalled", supervisor=self.name, seconds=round(stalled, 2)
                )
            expected = now + period
            for child in self._children:
                if child.handle is None:
                    continue
                busy = child.active > 0 or (
                    child is self._children[0] and child.handle.streams_open > 0
                )
                pulse = Pulse(child.last_beat, child.progress_at, child.stage, busy)
                verdict = check(child.actor_id, pulse, now, limits, self._loaded())
                if not isinstance(verdict, Ok):
                    self._fail(ChildFailed.of(child.actor_id, verdict.cause, verdict.reason))
                    return
                child.progress_at = verdict.progress_at

    def _on_message(self, child: Child, msg) -> None:
        if isinstance(msg, Heartbeat):
            now = time.monotonic()
            child.last_beat = now
            child.active = msg.vitals.active_requests
            if msg.vitals.progress != child.progress:
                child.progress, child.progress_at = msg.vitals.progress, now
            self._state.apply(ActorHeartbeat(child.actor_id, msg.vitals))
        elif isinstance(msg, LoadProgress):
            log.info(
                "actor_loading",
                actor_id=child.actor_id,
                stage=msg.stage,
                fraction=round(msg.fraction, 3),
                detail=msg.detail,
            )
            child.stage = msg.stage
            if msg.stage == "connect" and not child.connecting.done():
                child.connecting.set_result(None)
            self._state.apply(ActorLoading(child.actor_id, msg.stage, msg.fraction))
        elif isinstance(msg, Ready):
            log.info(
                "actor_ready",
                actor_id=child.actor_id,
                model=msg.model,
                load_seconds=round(msg.load_seconds, 3),
                **msg.info,
            )
            child.stage = "ready"
            self._state.apply(ActorReady(child.actor_id, msg.info))
            if not child.ready.done():
                child.ready.set_result(msg)
            if not child.connecting.done():
                child.connecting.set_result(None)
        elif isinstance(msg, ActorError):
            why = msg.message if msg.permanent else f"{child.actor_id}: {msg.message}"
            self._fail(ChildFailed.of(child.actor_id, "error", why, permanent=msg.permanent))

    # --------------------------------------------------------------- killing

    async def _kill_all(self, failure: ChildFailed) -> None:
        """Kill every child of the set by PID (one_for_all) and wait for them."""
        for child in self._children:
            self._control.forget(child.actor_id)
            if child.handle is not None:
                await child.handle.close("killed by supervisor")
            if child.process is not None:
                await child.process.kill()
                if self._stopping.is_set():
                    self._state.apply(ActorStopped(child.actor_id, "stopped"))
                else:
                    cause = failure.cause if failure.actor in (None, child.actor_id) else ""
                    self._state.apply(ActorStopped(child.actor_id, "killed", failure.reason, cause))

    def _set_group_state(
        self,
        state: GroupStateName,
        reason: str = "",
        restarted: bool = False,
        leader: str | None = None,
        context_length: int = 0,
    ) -> None:
        if self.group is not None:
            self._state.apply(
                GroupState(self.group, state, reason, restarted, context_length, leader)
            )
        self.on_state(state)
