"""ClusterState: the one owner of cluster facts, changed only by ``apply(event)``.

``apply`` folds one event into the views (replacing them: they are frozen), numbers it,
hands it to subscribers, and wakes whoever waits for a condition on the state. Readers
(the router, /health, /api/cluster/status, the supervisors themselves) read the views.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import assert_never

from msgspec import to_builtins
from msgspec.structs import replace

from actors.protocol.messages import Vitals
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
    NodeDeclared,
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
    TokensDelivered,
)
from supervisor.state.feed import EVENT_LOG_SIZE, SUBSCRIBER_QUEUE, EventLog, Subscription
from supervisor.state.health import health
from supervisor.state.router_stats import RouterStats
from supervisor.state.views import (
    ActorView,
    GroupView,
    LoadView,
    NodeView,
    RequestView,
    SupervisorView,
    actor_json,
    group_json,
    supervisor_json,
)

RECENT = 100  # requests and errors kept for inspection


class ClusterState:
    def __init__(
        self,
        clock=time.monotonic,
        wall=time.time,
        *,
        event_log_size: int = EVENT_LOG_SIZE,
        subscriber_queue: int = SUBSCRIBER_QUEUE,
    ):
        self._clock = clock
        self._wall = wall
        self.started_at = wall()
        self.nodes: dict[str, NodeView] = {}
        self.actors: dict[str, ActorView] = {}
        self.groups: dict[str, GroupView] = {}
        self.supervisors: dict[str, SupervisorView] = {}
        self.requests: dict[str, RequestView] = {}  # in flight
        self.admitted: set[str] = set()  # admitted, waiting to be placed
        self.recent_requests: deque[dict] = deque(maxlen=RECENT)
        self.recent_errors: deque[dict] = deque(maxlen=RECENT)
        self.requests_total = 0
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
        """Fold ``event`` into the state; its number."""
        self._fold(event)
        number = self._log.append(event)
        for subscriber in list(self._subscribers):
            subscriber.push(number, event)
        if self._waiters:
            self._wake_waiters()
        return number

    def _fold(self, event: Event) -> None:
        match event:
            case NodeDeclared(node, ssh, local):
                self.nodes.setdefault(node, NodeView(node, ssh, local))
            case NodeStatus(node, state, reason):
                self.nodes[node] = replace(self.nodes[node], state=state, reason=reason)
            case NodeRemoved(node):
                self.nodes.pop(node, None)
                self._drop_actors(lambda a: a.node == node)
            case GroupDeclared(group, model, nodes, parallel, backend):
                self.groups[group] = GroupView(group, model, list(nodes), parallel, backend)
            case GroupState():
                self._group_state(event)
            case GroupLeaving(group):
                self._group(group, leaving=True)
            case GroupRemoved(group):
                self.groups.pop(group, None)
                self._drop_actors(lambda a: a.group == group)
            case SupervisorStarted(name, group, intensity, period):
                old = self.supervisors.get(name)
                history = (old.restarts, old.restart_times) if old else (0, ())
                self.supervisors[name] = SupervisorView(name, group, intensity, period, *history)
            case SupervisorRestarted(name, at):
                self._supervisor_restarted(name, at)
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
            case ActorStopped(actor_id, state, reason):
                self._actor(actor_id, state=state, reason=reason)
                if state in ("exited", "killed", "failed") and reason:
                    self._error("actor_" + state, actor_id=actor_id, message=reason)
            case ActorRestarted(actor_id):
                self._actor(actor_id, restarts=self.actors[actor_id].restarts + 1)
            case RequestAdmitted(request_id):
                self.admitted.add(request_id)
            case RequestRefused(request_id):
                self.admitted.discard(request_id)
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
            self._error("group_failed", group=e.group, message=e.reason)

    def _supervisor_restarted(self, name: str, at: float) -> None:
        view = self.supervisors[name]
        # What the intensity counts, and no more: a set past it gives up.
        recent = [t for t in view.restart_times if at - t <= view.period] + [at]
        recent = recent[-(view.intensity + 1) :]
        self.supervisors[name] = replace(
            view, restarts=view.restarts + 1, restart_times=tuple(recent)
        )

    # --- actors ----------------------------------------------------------------

    def _actor(self, actor_id: str, **changes) -> None:
        self.actors[actor_id] = replace(self.actors[actor_id], **changes)

    def _drop_actors(self, gone: Callable[[ActorView], bool]) -> None:
        for actor_id in [a.actor_id for a in self.actors.values() if gone(a)]:
            del self.actors[actor_id]

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

    # --- requests ----------------------------------------------------------------

    def _request_started(self, e: RequestStarted) -> None:
        self.admitted.discard(e.request_id)
        self.requests_total += 1
        self.requests[e.request_id] = RequestView(
            e.request_id, e.model, e.group, (e.group,), owed=e.owed
        )
        group = self.groups.get(e.group)
        if group is not None:
            self._group(
                e.group, in_flight=group.in_flight + 1, queued_tokens=group.queued_tokens + e.owed
            )

    def _delivered(self, request_id: str, tokens: int) -> None:
        request = self.requests[request_id]
        paid = min(tokens, request.owed)
        self.requests[request_id] = replace(
            request, sent=request.sent + tokens, owed=request.owed - paid
        )
        group = self.groups.get(request.group)
        if group is not None and paid:
            self._group(request.group, queued_tokens=group.queued_tokens - paid)

    def _request_moved(self, e: RequestMoved) -> None:
        request = self.requests[e.request_id]
        self.router.failovers += 1
        lost = self.groups.get(request.group)
        if lost is not None:
            self._group(
                request.group,
                in_flight=lost.in_flight - 1,
                tokens=lost.tokens + request.sent - request.credited,
                queued_tokens=lost.queued_tokens - request.owed,
            )
        to = self.groups.get(e.to_group)
        if to is not None:
            self._group(
                e.to_group, in_flight=to.in_flight + 1, queued_tokens=to.queued_tokens + e.owed
            )
        self.requests[e.request_id] = replace(
            request,
            group=e.to_group,
            groups=(*request.groups, e.to_group),
            owed=e.owed,
            credited=request.sent,
        )

    def _request_ended(self, e: RequestEnded) -> None:
        request = self.requests.pop(e.request_id)
        group = self.groups.get(request.group)
        if group is not None:
            self._group(
                request.group,
                in_flight=group.in_flight - 1,
                served=group.served + 1,
                tokens=group.tokens + e.completion_tokens - request.credited,
                errors=group.errors + (e.outcome == "error"),
                queued_tokens=group.queued_tokens - request.owed,
            )
        self.tokens_total += e.completion_tokens
        self.recent_requests.append(
            {
                "request_id": e.request_id,
                "group": request.group,
                "groups": list(request.groups),
                "outcome": e.outcome,
                "prompt_tokens": e.prompt_tokens,
                "completion_tokens": e.completion_tokens,
                "at": self._wall(),
            }
        )
        if e.outcome == "error":
            self._error(
                "request_failed", request_id=e.request_id, group=request.group, message=e.error
            )

    def _error(self, kind: str, **fields) -> None:
        self.recent_errors.append({"kind": kind, "at": self._wall(), **fields})

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

    def subscribe(self, after: int | None = None) -> Subscription:
        """The events numbered after ``after``, then every new one (see state.feed)."""
        backlog = None if after is None else self._log.since(after)
        subscription = Subscription(
            backlog,
            lambda: (self.seq, self.snapshot()),
            self._subscribers.discard,
            self._subscriber_queue,
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

    def snapshot(self) -> dict:
        now = self._clock()
        return {
            "seq": self.seq,
            "uptime_seconds": round(self._wall() - self.started_at, 3),
            "draining": self.draining,
            "queue_depth": self.in_flight,
            "waiting": self.waiting,
            "requests_total": self.requests_total,
            "tokens_total": self.tokens_total,
            "nodes": [to_builtins(n) for n in self.nodes.values()],
            "actors": [actor_json(a, now) for a in self.actors.values()],
            "groups": [
                group_json(g, self.supervisors.get(g.name), now) for g in self.groups.values()
            ],
            "router": self.router.json(),
            "supervisors": [supervisor_json(s, now) for s in self.supervisors.values()],
        }
