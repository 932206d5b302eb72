"""ClusterService: the GenerationService over supervised generation groups.

Admission (draining, unknown model, prompt size, queue limit), placement through the
router, and the waiting rule when no group is ready:

- some group serving the model is starting or restarting (not ``failed``, not leaving):
  wait for it, at most ``ready_wait`` seconds, then serve. A fault costs latency, not an
  error, while any replica can come back;
- every group has failed (restart intensity exhausted): 503 at once, Retry-After 30;
- the wait ran out: 503, Retry-After ``RESTART_RETRY_AFTER``.

A request that lost its group mid-stream is placed the same way, away from the groups
it lost while another group is alive, else back on the one it lost once that restarts.
Requests waiting for a group count against ``queue_limit`` as placed ones do.

Every fact read here (group states, leaders, load, tokens owed, requests waiting) is
ClusterState's; the service tells it what it decides (admitted, refused, routed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from functools import partial

import msgspec

from actors.protocol.messages import GenerationRequest
from supervisor.config.spec import RouterSpec
from supervisor.control.handle import ActorHandle
from supervisor.serving.contract import (
    ContextLengthExceeded,
    ModelInfo,
    ModelNotFound,
    QueueFull,
    Unavailable,
)
from supervisor.serving.placement import ServedGroup
from supervisor.serving.routed_stream import RoutedStream
from supervisor.serving.router import (
    Ask,
    GroupLoad,
    Hardware,
    RouterBook,
    RouterConfig,
    choose_group,
    session_key,
)
from supervisor.state import ClusterState
from supervisor.state.events import RequestAdmitted, RequestRefused, RouteDecided, RouterDeclared
from supervisor.state.views import GroupView

FAILED_RETRY_AFTER = 30.0
RESTART_RETRY_AFTER = 5.0
DEFAULT_COOLDOWN = 5.0
# No tokenizer's tokens average more bytes than this over a whole prompt (English runs
# ~4, code ~3; the longest vocabulary entries are runs of spaces or punctuation). A prompt
# past context_length x this cannot fit: refused before an actor templates or tokenizes it.
BYTES_PER_TOKEN_CEILING = 64
# A waiting request looks again at least this often (s), whatever the state says.
LOOK_AGAIN = 1.0
_NO_HARDWARE = Hardware()
# Group states from which a group will not serve soon (see ClusterService._alive).
_NOT_COMING = frozenset({"failed", "stopped", "waiting"})


class ClusterService:
    def __init__(
        self,
        state: ClusterState,
        groups: list[ServedGroup],
        *,
        queue_limit: int,
        router: RouterSpec | None = None,
        ready_wait: float = 30.0,
        cooldown: float = DEFAULT_COOLDOWN,
        created: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._state = state
        self._groups = groups  # shared with the Cluster: groups may come and go at runtime
        self._queue_limit = queue_limit
        self._ready_wait = ready_wait
        self._created = created or int(time.time())
        self._clock = clock
        spec = router or RouterSpec()
        self._book = RouterBook(RouterConfig(spec.policy, spec.session_ttl, cooldown))
        state.apply(RouterDeclared(spec.policy, spec.session_ttl, cooldown))

    def draining(self) -> bool:
        return self._state.draining

    @property
    def waiting(self) -> int:
        """Admitted requests waiting for a group to become ready."""
        return self._state.waiting

    def _view(self, group: ServedGroup) -> GroupView | None:
        return self._state.groups.get(group.name)

    def _context_length(self, groups: Collection[ServedGroup]) -> int:
        views = [self._view(g) for g in groups]
        return max((v.context_length for v in views if v is not None), default=0)

    def list_models(self) -> list[ModelInfo]:
        by_model: dict[str, list[ServedGroup]] = {}
        for group in self._groups:
            by_model.setdefault(group.model, []).append(group)
        return [
            ModelInfo(
                id=model,
                created=self._created,
                groups=[g.name for g in groups],
                context_length=self._context_length(groups),
                ready=any((v := self._view(g)) is not None and v.leader for g in groups),
            )
            for model, groups in by_model.items()
        ]

    async def submit(self, request: GenerationRequest) -> RoutedStream:
        if self._state.draining:
            raise Unavailable("the server is shutting down; retry on another server", retry_after=5)
        if not any(g.model == request.model for g in self._groups):
            known = ", ".join(sorted({g.model for g in self._groups}))
            raise ModelNotFound(
                f"model {request.model!r} is not served here; known: {known}", param="model"
            )
        self._check_size(request)
        admitted = self._state.in_flight + self.waiting
        if admitted >= self._queue_limit:
            raise QueueFull(
                f"{admitted} requests in flight or waiting for a group reach the queue limit "
                f"of {self._queue_limit}; retry shortly",
                retry_after=1,
            )
        prompt = last_prompt(request) if self._state.keep_prompts else None
        self._state.apply(
            RequestAdmitted(
                request.request_id, request.model, request.dialect, request.endpoint, prompt
            )
        )
        try:
            group = await self.place(request)
        except BaseException as exc:  # also the client hanging up while it waits
            reason = exc.message if isinstance(exc, Unavailable) else type(exc).__name__
            status = "error" if isinstance(exc, Exception) else "cancelled"
            self._state.apply(RequestRefused(request.request_id, reason, status))
            raise
        return RoutedStream(self, self._state, group, request)

    def _check_size(self, request: GenerationRequest) -> None:
        """Refuse a prompt too large for the model's context by its bytes, before any actor."""
        context = self._context_length([g for g in self._groups if g.model == request.model])
        if not context:
            return  # no group has been ready yet: the actor's exact check decides
        size, limit = prompt_bytes(request), context * BYTES_PER_TOKEN_CEILING
        if size > limit:
            field = "messages" if request.messages is not None else "prompt"
            raise ContextLengthExceeded(
                f"{field}: {size} bytes of prompt text cannot fit the model's context of "
                f"{context} tokens (at most {limit} bytes, {BYTES_PER_TOKEN_CEILING} per "
                "token); shorten the prompt",
                param=field,
            )

    # ------------------------------------------------------------------ placement

    async def place(self, request: GenerationRequest, exclude: Collection[str] = ()) -> ServedGroup:
        """A ready group for ``request``, or Unavailable (see module doc).

        ``exclude`` (groups the request lost) is honoured while another group of the model
        is alive; when only lost ones are left, the request waits for one of them to restart.
        """
        policy = self._book.config.policy
        session = session_key(request) if policy == "sticky" else None
        deadline = self._clock() + self._ready_wait
        while True:
            alive = self._alive(request.model)
            avoid = frozenset(exclude) if any(g.name not in exclude for g in alive) else frozenset()
            ask = Ask(request.model, session, avoid)
            group = self._decide(ask)
            if group is not None:
                return group
            coming = [g for g in alive if g.name not in avoid]
            remaining = deadline - self._clock()
            if not coming or remaining <= 0:
                raise self._unavailable(ask, waited=bool(coming))
            await self._state.wait_for(partial(self._news, coming), min(remaining, LOOK_AGAIN))

    def _news(self, groups: list[ServedGroup]) -> bool:
        """Whether one of ``groups`` can take work now, or will not come any more.

        A group the state calls ready whose leader's connection just closed is neither:
        the supervisor is about to say it is restarting.
        """
        for group in groups:
            view = self._view(group)
            if view is None or view.leaving or view.state in _NOT_COMING:
                return True
            if self.leader(group) is not None:
                return True
        return False

    def leader(self, group: ServedGroup) -> ActorHandle | None:
        """The open handle of ``group``'s leader while the state says it is ready."""
        view = self._view(group)
        if view is None or view.leader is None:
            return None
        handle = group.handle(view.leader)
        return handle if handle is not None and handle.is_open else None

    def _decide(self, ask: Ask) -> ServedGroup | None:
        began = time.thread_time()  # CPU time: a busy host's preemptions are not the router's
        now = self._clock()
        serving = [g for g in self._groups if g.model == ask.model]
        free = self._free_memory() if self._book.config.policy == "hardware_aware" else None
        loads = [self._load(g, free) for g in serving]
        decision = choose_group(loads, ask, self._book.memory(), self._book.config, now)
        self._book.record(ask, decision, now)
        seconds = time.thread_time() - began
        self._state.apply(
            RouteDecided(decision.group, decision.reason, seconds, len(self._book.sessions))
        )
        return next((g for g in serving if g.name == decision.group), None)

    def _load(self, group: ServedGroup, free: dict[str, float] | None) -> GroupLoad:
        view = self._view(group)
        if view is None:  # left the cluster a moment ago
            return GroupLoad(group.name, group.model, ready=False)
        return GroupLoad(
            group.name,
            group.model,
            not view.leaving and self.leader(group) is not None,
            view.in_flight,
            view.queued_tokens,
            _NO_HARDWARE if free is None else self._hardware(group, free),
        )

    def _free_memory(self) -> dict[str, float]:
        """Each node's fraction of memory available, from its memory reporter's vitals."""
        return {
            a.node: a.vitals.mem_available / a.vitals.mem_total
            for a in self._state.actors.values()
            if a.kind == "memory" and a.vitals.mem_total
        }

    def _hardware(self, group: ServedGroup, free: dict[str, float]) -> Hardware:
        """The hostfile's hints for ``group`` plus its nodes' lowest free memory."""
        hints: Hardware = getattr(group, "hardware", _NO_HARDWARE)
        view = self._view(group)
        known = [free[n] for n in (view.nodes if view is not None else ()) if n in free]
        if not known:
            return hints
        return Hardware(hints.chip, hints.gpu_cores, hints.memory_gb, min(known))

    def _alive(self, model: str) -> list[ServedGroup]:
        """Groups of ``model`` that serve or may serve soon: not failed, leaving or stopped,
        nor ``waiting`` for a host that cannot be reached (that may take hours: a client
        told so at once beats one held for ``ready_wait``)."""
        out = []
        for g in self._groups:
            view = self._view(g)
            if g.model != model or view is None or view.leaving:
                continue
            if view.state not in _NOT_COMING:
                out.append(g)
        return out

    def _unavailable(self, ask: Ask, waited: bool) -> Unavailable:
        model = repr(ask.model)
        left = [g for g in self._groups if g.model == ask.model and g.name not in ask.exclude]
        if not left:
            return Unavailable(
                f"no other group serves {model}; retry shortly", retry_after=RESTART_RETRY_AFTER
            )
        if all((v := self._view(g)) is not None and v.state == "failed" for g in left):
            reasons = "; ".join(self._reason(g.name) for g in left)
            return Unavailable(
                f"every group serving {model} has failed ({reasons})",
                retry_after=FAILED_RETRY_AFTER,
            )
        if waited:
            return Unavailable(
                f"no group serving {model} became ready within {self._ready_wait:g} s; "
                "retry shortly",
                retry_after=RESTART_RETRY_AFTER,
            )
        states = ", ".join(f"{g.name} {self._reason(g.name)}" for g in left)
        return Unavailable(
            f"no group serving {model} is ready ({states}); retry shortly",
            retry_after=RESTART_RETRY_AFTER,
        )

    def _reason(self, group: str) -> str:
        view = self._state.groups.get(group)
        if view is None:
            return "unknown"
        return f"{view.state}: {view.reason}" if view.reason else view.state

    # ------------------------------------------------------------ stream callbacks

    def forget_group(self, group: str) -> None:
        """A group that left the cluster: drop what the router remembers of it."""
        self._book.forget_group(group)

    def cool(self, group: str) -> None:
        """``group`` just lost a request: other requests pass it over for a while."""
        self._book.cool(group, self._clock())


def prompt_bytes(request: GenerationRequest) -> int:
    """UTF-8 bytes of the text a request's prompt is made of: messages, prompt, tools."""
    size = _text_bytes(request.prompt)
    for message in request.messages or ():
        size += _text_bytes(message.content)
        for call in message.tool_calls or ():
            size += _text_bytes(call.name) + _text_bytes(call.arguments)
    if request.tools:
        size += len(msgspec.json.encode(request.tools))
    return size


def last_prompt(request: GenerationRequest) -> str:
    """What the history keeps of a prompt (history.keep_prompts): the raw prompt, or the
    last user message (the state clips it)."""
    if request.prompt is not None:
        return request.prompt
    users = [m.content for m in request.messages or () if m.role == "user" and m.content]
    return users[-1] if users else ""


def _text_bytes(text: str | None) -> int:
    if not text:
        return 0
    return len(text) if text.isascii() else len(text.encode())
