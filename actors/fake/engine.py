"""Fake engine actor: the generation protocol at a set pace, without MLX.

For routing tests and benchmarks, where the model is not the point. A hostfile group
selects it with the model spec ``fake:<name>?key=value&...`` (served as ``fake:<name>``;
options below, as ``FakeOptions`` fields). Tokens are a function of the prompt and
their position only, so a request resumed elsewhere from the tokens already sent goes
on exactly as an uninterrupted one would, like greedy sampling on a real model. Each
stream gets one token every ``1 / tokens_per_second`` s, up to ``max_batch`` streams at
once; one timer thread paces them all, so dozens of fake engines fit on two cores.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import msgspec

from actors.protocol.messages import (
    Cancel,
    Finished,
    Generate,
    GenerationEvent,
    GenerationFailed,
    GenerationRequest,
    Message,
    Ready,
    TokenDelta,
    TokenLogprob,
    TopLogprob,
    Usage,
)


class FakeOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How a fake engine behaves; set in the model spec's query string."""

    tokens_per_second: Annotated[float, msgspec.Meta(gt=0)] = 50.0  # per stream
    first_token_delay: Annotated[float, msgspec.Meta(ge=0)] = 0.0  # "prefill" seconds
    prompt_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None  # default: word count
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] = 64  # when the request names none
    context_length: Annotated[int, msgspec.Meta(ge=1)] = 4096
    vocab_size: Annotated[int, msgspec.Meta(ge=2)] = 1000
    stamp: bool = False  # benchmarks: each token's text ends with "@<emit time_ns>"
    start_delay: Annotated[float, msgspec.Meta(ge=0)] = 0.0  # seconds of "model load"
    # The "model's" weights: checked against this node's memory like a real model's (0: none).
    weight_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0


def fake_options(options: dict[str, str]) -> FakeOptions:
    """Typed options; a bad one raises ValueError naming it in one line."""
    try:
        return msgspec.convert(options, FakeOptions, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(f"fake engine option: {exc}") from None


def token_at(seed: int, position: int, vocab_size: int) -> int:
    """The token at ``position`` of a completion whose prompt hashes to ``seed``."""
    return (seed ^ (position * 2654435761)) % vocab_size


def word(token: int) -> str:
    return f" w{token}"


@dataclass(eq=False)
class _Stream:
    request: GenerationRequest
    seed: int
    prompt_tokens: int
    budget: int  # completion tokens in all, resumed ones included
    position: int  # completion tokens so far, resumed ones included
    next_at: float
    done: bool = False


class FakeEngine:
    """Paces every admitted stream from one thread; events leave through ``emit``."""

    def __init__(
        self,
        options: FakeOptions,
        *,
        emit: Callable[[GenerationEvent], object],
        max_batch: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._options = options
        self._emit = emit
        self._max_batch = max_batch
        self._clock = clock
        self._lock = threading.Lock()
        self._incoming: deque[GenerationRequest] = deque()
        self._cancels: set[str] = set()
        self._counters = dict.fromkeys(
            ("peak_batch_size", "progress", "tokens_generated", "prompt_tokens", "requests_done"),
            0,
        )
        self._active: dict[str, _Stream] = {}
        self._due: list[tuple[float, int, _Stream]] = []
        self._order = itertools.count()
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fake-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, request: GenerationRequest) -> None:
        with self._lock:
            self._incoming.append(request)
        self._wakeup.set()

    def cancel(self, request_id: str) -> None:
        with self._lock:
            self._cancels.add(request_id)
        self._wakeup.set()

    def vitals(self) -> dict[str, int]:
        with self._lock:
            return {
                **self._counters,
                "active_requests": len(self._active),
                "queued_requests": len(self._incoming),
                "batch_size": len(self._active),
            }

    # ------------------------------------------------------------ engine thread

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wakeup.clear()  # before looking, so a submit meanwhile wakes the wait
            now = self._clock()
            self._take_cancels()
            self._admit(now)
            while self._due and self._due[0][0] <= now:
                _, _, stream = heapq.heappop(self._due)
                if not stream.done:
                    self._step(stream, now)
            timeout = self._due[0][0] - now if self._due else None
            self._wakeup.wait(timeout)
        for stream in list(self._active.values()):
            self._end(
                stream,
                GenerationFailed(
                    stream.request.request_id, "engine stopped", retryable=True, status=503
                ),
            )
        with self._lock:
            queued, self._incoming = list(self._incoming), deque()
        for request in queued:
            self._emit(GenerationFailed(request.request_id, "engine stopped", True, 503))

    def _take_cancels(self) -> None:
        with self._lock:
            cancels, self._cancels = self._cancels, set()
            dropped = [r for r in self._incoming if r.request_id in cancels]
            self._incoming = deque(r for r in self._incoming if r.request_id not in cancels)
        for request in dropped:
            self._finish_request(request.request_id, "cancelled", Usage(0, 0))
        for rid in cancels:
            stream = self._active.get(rid)
            if stream is not None:
                self._end(stream, Finished(rid, "cancelled", self._usage(stream)))

    def _admit(self, now: float) -> None:
        while True:
            with self._lock:
                if not self._incoming or len(self._active) >= self._max_batch:
                    return
                request = self._incoming.popleft()
            try:
                stream = self._prepare(request, now)
            except ValueError as exc:
                self._emit(GenerationFailed(request.request_id, str(exc), status=400))
                self._count(requests_done=1)
                continue
            with self._lock:
                self._active[request.request_id] = stream
                peak = max(self._counters["peak_batch_size"], len(self._active))
                self._counters["peak_batch_size"] = peak
                self._counters["prompt_tokens"] += stream.prompt_tokens
            if stream.position >= stream.budget:  # the resumed tokens used the whole budget
                self._end(stream, Finished(request.request_id, "length", self._usage(stream)))
            else:
                heapq.heappush(self._due, (stream.next_at, next(self._order), stream))

    def _prepare(self, request: GenerationRequest, now: float) -> _Stream:
        opts = self._options
        if request.request_id in self._active:
            raise ValueError(f"request {request.request_id!r} is already running")
        if request.max_tokens is not None and request.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {request.max_tokens}")
        if (request.messages is None) == (request.prompt is None):
            raise ValueError("set exactly one of messages or prompt")
        if any(not 0 <= t < opts.vocab_size for t in request.resume_tokens):
            raise ValueError("resume_tokens holds ids outside the model's vocabulary")
        text = request.prompt if request.prompt is not None else _chat_text(request)
        prompt_tokens = opts.prompt_tokens or max(1, len(text.split()))
        resumed = len(request.resume_tokens)
        if prompt_tokens + resumed >= opts.context_length:
            raise ValueError(
                f"prompt is {prompt_tokens + resumed} tokens but the model's context is "
                f"{opts.context_length}; shorten the prompt"
            )
        budget = min(request.max_tokens or opts.max_tokens, opts.context_length - prompt_tokens)
        return _Stream(
            request=request,
            seed=zlib.crc32(text.encode()),
            prompt_tokens=prompt_tokens,
            budget=budget,
            position=resumed,
            next_at=now + opts.first_token_delay,
        )

    def _step(self, stream: _Stream, now: float) -> None:
        """Emit the tokens due by ``now`` (more than one only when the thread ran late)."""
        opts = self._options
        interval = 1.0 / opts.tokens_per_second
        due = 1 + int((now - stream.next_at) / interval)
        ids = [
            token_at(stream.seed, p, opts.vocab_size)
            for p in range(stream.position, min(stream.budget, stream.position + due))
        ]
        stream.position += len(ids)
        stream.next_at += len(ids) * interval
        text = "".join(word(t) for t in ids)
        if opts.stamp:
            text += f"@{time.time_ns()}"
        request = stream.request
        self._emit(TokenDelta(request.request_id, text, ids, logprobs=_logprobs(request, ids)))
        self._count(progress=len(ids), tokens_generated=len(ids))
        if stream.position >= stream.budget:
            self._end(stream, Finished(request.request_id, "length", self._usage(stream)))
        else:
            heapq.heappush(self._due, (stream.next_at, next(self._order), stream))

    def _usage(self, stream: _Stream) -> Usage:
        return Usage(prompt_tokens=stream.prompt_tokens, completion_tokens=stream.position)

    def _end(self, stream: _Stream, event: GenerationEvent) -> None:
        stream.done = True
        with self._lock:
            self._active.pop(stream.request.request_id, None)
        self._emit(event)
        self._count(requests_done=1)

    def _finish_request(self, request_id: str, reason: str, usage: Usage) -> None:
        self._emit(Finished(request_id, reason, usage))
        self._count(requests_done=1)

    def _count(self, **increments: int) -> None:
        with self._lock:
            for name, n in increments.items():
                self._counters[name] += n


def _chat_text(request: GenerationRequest) -> str:
    return "\n".join(f"{m.role}: {m.content or ''}" for m in request.messages or ())


def _logprobs(request: GenerationRequest, ids: list[int]) -> list[TokenLogprob] | None:
    if not (request.logprobs or request.top_logprobs):
        return None
    out = []
    for t in ids:
        top = [TopLogprob(t, word(t), -0.5)][: request.top_logprobs]
        out.append(TokenLogprob(t, word(t), -0.5, top))
    return out


class FakeEngineActor:
    """The actor kind ``fake_engine``: a FakeEngine behind the generation protocol."""

    def __init__(self) -> None:
        self._engine: FakeEngine | None = None
        self._model_bytes = 0

    def start(self, runtime) -> None:
        from actors.memory.fit import check_fit, rank_share
        from actors.runtime.control import PermanentFailure

        cfg = runtime.config
        options = fake_options(cfg.options)
        if options.weight_bytes:  # none: a routing test's engine, dozens to a machine
            problem = check_fit(cfg, options.weight_bytes, model=cfg.model)
            if problem:
                raise PermanentFailure(problem)
            self._model_bytes = rank_share(options.weight_bytes, cfg.world_size)
        time.sleep(options.start_delay)
        self._engine = FakeEngine(options, emit=runtime.send, max_batch=cfg.max_batch)
        self._engine.start()
        runtime.send(
            Ready(
                model=cfg.model,
                context_length=options.context_length,
                info={"engine": "fake", "tokens_per_second": f"{options.tokens_per_second:g}"},
            )
        )

    def handle(self, msg: Message) -> None:
        if isinstance(msg, Generate) and self._engine is not None:
            self._engine.submit(msg.request)
        elif isinstance(msg, Cancel) and self._engine is not None:
            self._engine.cancel(msg.request_id)

    def vitals(self) -> dict[str, int | float]:
        figures = self._engine.vitals() if self._engine is not None else {}
        return {**figures, "model_bytes": self._model_bytes}

    def stop(self) -> None:
        if self._engine is not None:
            self._engine.stop()
