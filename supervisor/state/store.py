"""ClusterState: the one owner of cluster facts, changed only by ``apply(event)``.

``apply`` folds one event into the views (replacing them: they are frozen), numbers it,
hands it to subscribers, and wakes whoever waits for a condition on the state. Readers
(the router, /health, /metrics, the supervisors) read the views, ``links``, ``models``, the
request history and errors, ``metrics`` and ``series``; nobody keeps a copy.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Collection
from typing import assert_never

from msgspec.structs import replace

from actors.protocol.messages import Vitals
from supervisor.config.spec import HistorySpec
from supervisor.state.events import (
    ActorHeartbeat,
    ActorLoading,
    ActorReady,
    ActorRestarted,
    ActorSpawned,
    ActorStarting,
    ActorStopped,
    DrainStarted,
    Event,
    GroupDeclared,
    GroupLeaving,
    GroupRemoved,
    GroupState,
    LinkDown,
    LinkMeasured,
    ModelJob,
    ModelsScanned,
    NodeDeclared,
    NodeHealth,
    NodeRemoved,
    NodeStatus,
    RequestAdmitted,
    RequestEnded,
    RequestMoved,
    RequestRefused,
    RequestStarted,
    RouteDecided,
    RouterDeclared,
    SupervisorRemoved,
    SupervisorRestarted,
    SupervisorStarted,
    Tick,
    TokensDelivered,
)
from supervisor.state.feed import (
    COALESCE_INTERVAL,
    EVENT_LOG_SIZE,
    SUBSCRIBER_QUEUE,
    EventLog,
    Subscription,
)
from supervisor.state.folds import history as records
from supervisor.state.folds.health import health
from supervisor.state.folds.links import Links
from supervisor.state.folds.metrics import RequestMetrics
from supervisor.state.folds.models import JOBS_KEPT, Models
from supervisor.state.folds.nodes import health_change
from supervisor.state.folds.request_fold import RequestFold
from supervisor.state.folds.router_stats import RouterStats
from supervisor.state.folds.series import MEMORY, Series
from supervisor.state.reads import gauges, live_figures, series_points, snapshot
from supervisor.state.views import (
    ActorView,
    Admission,
    GroupView,
    LoadView,
    NodeView,
    RequestView,
    SupervisorView,
)


class ClusterState(RequestFold):
    def __init__(
        self,
        clock=time.monotonic,
        wall=time.time,
        *,
        event_log_size: int = EVENT_LOG_SIZE,
        subscriber_queue: int = SUBSCRIBER_QUEUE,
        history: HistorySpec | None = None,
        queue_limit: int = 0,
        model_jobs: int = JOBS_KEPT,
    ):
        history = history or HistorySpec()
        self._clock = clock
        self._wall = wall
        self.started_at = wall()
        self.queue_limit = queue_limit  # the hostfile's: shown as the queue's max
        self.keep_prompts = history.keep_prompts  # the service gives prompts only then
        self.nodes: dict[str, NodeView] = {}
        self.actors: dict[str, ActorView] = {}
        self.groups: dict[str, GroupView] = {}
        self.supervisors: dict[str, SupervisorView] = {}
        self.running: dict[str, RequestView] = {}  # placed, in flight
        self.admitted: dict[str, Admission] = {}  # admitted, waiting to be placed
        self._request_log: records.Ring[records.RequestRecord] = records.Ring(history.requests)
        self._error_log: records.Ring[records.ErrorRecord] = records.Ring(history.errors)
        self.links = Links(self._error)  # the live link probe's figures (state.links)
        self.models = Models(model_jobs)  # each node's disk, the model jobs (state.models)
        self.metrics = RequestMetrics()
        self.series = Series(clock())
        self.requests_total = 0  # placed on a group
        self.tokens_total = 0
        self.draining = False
        self.router = RouterStats()
        self._log = EventLog(event_log_size)
        self._subscriber_queue = subscriber_queue
        self._subscribers: set[Subscription] = set()
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    @property
    def seq(self) -> int:
        """The number of the last event applied (0: none yet)."""
        return self._log.last

    def apply(self, event: Event) -> int:
        """Fold ``event`` into the state; its number.

        A memory reporter's heartbeat that changes its node's health (``nodes.node_health``)
        is followed at once by a ``NodeHealth`` event: derived here, where the heartbeat and
        the health both are, so no emitter keeps a copy to compare against.
        """
        self._fold(event)
        self.links.fold(event)
        self.models.fold(event)
        number = self._log.append(event)
        for subscriber in list(self._subscribers):
            subscriber.push(number, event)
        if self._waiters:
            self._wake_waiters()
        if type(event) is ActorHeartbeat:  # a memory reporter's beat may change node health
            change = health_change(self.nodes, self.actors.get(event.actor_id), event.vitals)
            if change is not None:
                self.apply(change)
        return number

    def _fold(self, event: Event) -> None:
        match event:
            case NodeDeclared(node, ssh, local):
                self.nodes.setdefault(node, NodeView(node, ssh, local))
            case NodeStatus(node, state, reason):
                before = self.nodes[node].state
                self.nodes[node] = replace(self.nodes[node], state=state, reason=reason)
                if state in ("down", "unreachable") and before != state:
                    self._error("node_" + state, reason, node=node)
            case NodeRemoved(node):
                self.nodes.pop(node, None)
                self._drop_actors(lambda a: a.node == node)
                self.series.forget(MEMORY + node)
            case NodeHealth(node, node_health):
                if node in self.nodes:
                    self.nodes[node] = replace(self.nodes[node], health=node_health)
            case GroupDeclared(group, model, nodes, parallel, backend):
                self.groups[group] = GroupView(group, model, list(nodes), parallel, backend)
            case GroupState():
                self._group_state(event)
            case GroupLeaving(group):
                self._group(group, leaving=True)
            case GroupRemoved(group):
                self.groups.pop(group, None)
                self._drop_actors(lambda a: a.group == group)
            case LinkMeasured() | LinkDown() | ModelJob() | ModelsScanned():
                pass  # self.links and self.models fold them
            case SupervisorStarted(name, group, intensity, period):
                old = self.supervisors.get(name)
                history = (old.restarts, old.restart_times) if old else (0, ())
                self.supervisors[name] = SupervisorView(name, group, intensity, period, *history)
            case SupervisorRestarted(name, at, reason):
                self._supervisor_restarted(name, at, reason)
            case SupervisorRemoved(name):
                self.supervisors.pop(name, None)
            case ActorStarting(actor_id, kind, node, group, rank):
                view = self.actors.get(actor_id)
                if view is None:
                    self.actors[actor_id] = ActorView(actor_id, kind, node, group, rank)
                else:
                    self._actor(actor_id, state="starting", pid=None, reason="")
                    self._actor(actor_id, last_heartbeat=None, vitals=Vitals())
            case ActorSpawned(actor_id, pid):
                self._actor(actor_id, pid=pid)
            case ActorHeartbeat(actor_id, vitals):
                self._heartbeat(actor_id, vitals)
            case ActorLoading(actor_id, stage, fraction):
                self._actor(actor_id, state="loading", load=LoadView(stage, fraction))
            case ActorReady(actor_id, info):
                view = self.actors[actor_id]
                load = LoadView(view.load.stage, 1.0)
                self._actor(actor_id, state="running", load=load, info=dict(info))
            case ActorStopped(actor_id, state, reason, cause):
                # An actor that exited by itself is killed only to be reaped: one error.
                reaped = state == "killed" and self.actors[actor_id].state == "exited"
                self._actor(actor_id, state=state, reason=reason)
                if state in ("exited", "killed", "failed") and reason and not reaped:
                    self._actor_error(records.error_kind(state, cause), actor_id, reason)
            case ActorRestarted(actor_id):
                actor = self.actors[actor_id]
                self._actor(actor_id, restarts=actor.restarts + 1)
                self.metrics.restarted(actor.kind, actor.group)
            case RequestAdmitted():
                self._request_admitted(event)
            case RequestRefused():
                self._request_refused(event)
            case RequestStarted():
                self._request_started(event)
            case TokensDelivered(request_id, tokens):
                self._delivered(request_id, tokens)
            case RequestMoved():
                self._request_moved(event)
            case RequestEnded():
                self._request_ended(event)
            case RouterDeclared(policy, session_ttl, cooldown):
                self.router = RouterStats(policy, session_ttl, cooldown)
            case RouteDecided(_, reason, seconds, sessions):
                self.router.record(reason, seconds, sessions)
            case DrainStarted():
                self.draining = True
            case Tick():
                self.series.tick(self._clock(), self._wall(), gauges(self))
            case _:
                assert_never(event)

    # --- groups and supervisors ----------------------------------------------

    def _group(self, name: str, **changes) -> GroupView | None:
        """Replace group ``name`` with ``changes`` (a group that left: nothing)."""
        view = self.groups.get(name)
        if view is not None:
            view = self.groups[name] = replace(view, **changes)
        return view

    def _group_state(self, e: GroupState) -> None:
        group = self.groups[e.group]
        self.groups[e.group] = replace(
            group,
            state=e.state,
            reason=e.reason,
            restarts=group.restarts + e.restarted,
            context_length=e.context_length or group.context_length,
            leader=e.leader if e.state == "ready" else None,
        )
        if e.state == "failed":
            self._error("group_failed", e.reason, group=e.group)

    def _supervisor_restarted(self, name: str, at: float, reason: str) -> None:
        view = self.supervisors[name]
        # What the intensity counts, and no more: a set past it gives up.
        recent = [t for t in view.restart_times if at - t <= view.period] + [at]
        recent = recent[-(view.intensity + 1) :]
        self.supervisors[name] = replace(
            view, restarts=view.restarts + 1, restart_times=tuple(recent)
        )
        message = reason or f"{name} restarts"
        if view.group is not None:
            self._error("restart", message, group=view.group)
        else:  # a node actor's own set: the supervisor is named after its actor
            self._actor_error("restart", name, message)

    # --- actors ----------------------------------------------------------------

    def _actor(self, actor_id: str, **changes) -> None:
        self.actors[actor_id] = replace(self.actors[actor_id], **changes)

    def _drop_actors(self, gone: Callable[[ActorView], bool]) -> None:
        for actor_id in [a.actor_id for a in self.actors.values() if gone(a)]:
            del self.actors[actor_id]

    def _actor_error(self, kind: str, actor_id: str, message: str) -> None:
        actor = self.actors.get(actor_id)
        node, group = (actor.node, actor.group) if actor is not None else (None, None)
        self._error(kind, message, node=node, group=group, actor=actor_id)

    def _error(self, kind: str, message: str, **where) -> None:
        self._error_log.add(records.ErrorRecord(self._wall(), kind, message, **where))

    def _heartbeat(self, actor_id: str, vitals: Vitals) -> None:
        view = self.actors.get(actor_id)
        if view is None:
            return  # a beat read after its group left
        self.actors[actor_id] = replace(view, last_heartbeat=self._clock(), vitals=vitals)
        group = self.groups.get(view.group) if view.group is not None else None
        if group is not None and view.rank == 0 and view.kind == "generation":
            peak = max(group.peak_batch_size, vitals.peak_batch_size)
            if peak != group.peak_batch_size:
                self._group(group.name, peak_batch_size=peak)

    # --- waiting and following -------------------------------------------------

    def _wake_waiters(self) -> None:
        for predicate, fut in self._waiters:
            if fut.done():
                continue
            try:
                if predicate():
                    fut.set_result(None)
            except Exception as exc:  # the waiter's fault: it hears of it, apply goes on
                fut.set_exception(exc)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Until ``predicate()`` holds (checked after every event), at most ``timeout`` s;
        whether it holds."""
        if predicate():
            return True
        waiter = (predicate, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter[1], timeout)
            return True
        except TimeoutError:
            return predicate()
        finally:
            self._waiters.remove(waiter)

    def subscribe(
        self,
        after: int | None = None,
        *,
        coalesce: Collection[type] = (),
        interval: float = COALESCE_INTERVAL,
    ) -> Subscription:
        """The events numbered after ``after``, then every new one (see state.feed).

        Events of the types in ``coalesce`` (``feed.VITALS``: heartbeats, tokens, ticks)
        are not passed one by one: at most every ``interval`` s the subscriber gets one
        ``Live`` item with the figures they change (``live()``) instead.
        """
        backlog = None if after is None else self._log.since(after)
        subscription = Subscription(
            backlog,
            lambda: (self.seq, self.snapshot()),
            self._subscribers.discard,
            self._subscriber_queue,
            coalesce=frozenset(coalesce),
            live=self.live,
            interval=interval,
        )
        self._subscribers.add(subscription)
        return subscription

    # --- reads -----------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return sum(g.in_flight for g in self.groups.values())

    @property
    def waiting(self) -> int:
        """Admitted requests waiting for a group."""
        return len(self.admitted)

    def health(self) -> tuple[int, dict]:
        """200 while at least one group serves; 503 with the reasons otherwise."""
        return health(self.groups, self.draining)

    def requests(
        self, limit: int = 100, status: str | None = None, model: str | None = None
    ) -> list[records.RequestRecord]:
        """The last finished requests, newest first, of ``status`` / ``model`` if given."""
        return records.newest_requests(self._request_log, limit, status, model)

    def errors(self, limit: int = 100) -> list[records.ErrorRecord]:
        """The last errors, newest first."""
        return list(itertools.islice(self._error_log.newest(), max(0, limit)))

    @property
    def history_sizes(self) -> tuple[int, int]:
        """How many requests and errors the rings hold at most (the hostfile's history.*)."""
        return self._request_log.size, self._error_log.size

    def timeseries(self, metric: str, window: str) -> tuple[str, list[list]]:
        """``(unit, [[unix_seconds, value], ...])`` oldest first (state.reads.series_points)."""
        return series_points(self, metric, window)

    def uptime(self) -> float:
        return round(self._wall() - self.started_at, 3)

    def live(self) -> dict:
        """The figures coalesced events change: throughput, queue, memory (state.reads)."""
        return live_figures(self, self._clock())

    def snapshot(self) -> dict:
        """The whole state as /api/cluster/status and the feed's first event show it."""
        return snapshot(self, self._clock())
