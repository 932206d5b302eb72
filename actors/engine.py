"""The generation engine: continuous batching over mlx_lm's ``BatchGenerator``.

One thread owns the model, the ``BatchGenerator`` and the prompt cache; callers
talk to it through ``submit`` / ``cancel`` / ``vitals``, which never block on
compute, so an actor runtime can keep sending heartbeats while a long prompt
prefills. Events leave through ``emit`` on the engine thread.

Each loop turn is one ``_step()``: ``_schedule()`` decides which requests join
and which sequences leave the batch (the one decision a distributed group must
share), ``_apply()`` carries it out, then the batch advances one token.
"""

from __future__ import annotations

import gc
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import structlog
from mlx_lm.generate import BatchGenerator, make_stop_sequences
from mlx_lm.models.cache import LRUPromptCache, can_trim_prompt_cache, trim_prompt_cache
from mlx_lm.sample_utils import LogitsProcessor, Sampler
from mlx_lm.tokenizer_utils import StreamingDetokenizer

from actors.protocol import (
    ChatMessage,
    Finished,
    GenerationEvent,
    GenerationFailed,
    GenerationRequest,
    TokenDelta,
    TokenLogprob,
    ToolSpec,
    Usage,
)
from actors.sampling import (
    MAX_TOP_LOGPROBS,
    make_request_processors,
    make_request_sampler,
    token_logprob,
    validate_sampling,
)

log = structlog.get_logger()

Emit = Callable[[GenerationEvent], None]

_COUNTERS = (
    "peak_batch_size",
    "progress",
    "tokens_generated",
    "prompt_tokens",  # prefilled, i.e. not served from the prompt cache
    "requests_done",
    "cache_hits",
)


class _Output:
    """A request's decoded text: incremental, with stop strings cut and their prefixes held.

    Text is released a whole token at a time, so the ids sent with a piece of text
    are exactly the tokens that produced it; a group resuming from those ids then
    continues the same text.
    """

    def __init__(self, detokenizer: StreamingDetokenizer, stop: list[str], primer: list[int]):
        self._detokenizer = detokenizer
        for token in primer:
            detokenizer.add_token(token)
        _ = detokenizer.last_segment  # the primer's text reached the client from another group
        self._stops = [s for s in stop if s]
        self._held: list[tuple[int | None, str, TokenLogprob | None]] = []
        self._text: list[str] = []
        self._token_ids: list[int] = []
        self._logprobs: list[TokenLogprob] = []
        self.stopped = False

    def add(self, token: int, logprob: TokenLogprob | None) -> bool:
        """Take one sampled token; True once a stop string has appeared."""
        self._detokenizer.add_token(token)
        return self._push(token, self._detokenizer.last_segment, logprob, final=False)

    def finish(self) -> bool:
        """Release everything (the text can no longer grow into a stop string)."""
        self._detokenizer.finalize()
        return self._push(None, self._detokenizer.last_segment, None, final=True)

    @property
    def pending(self) -> bool:
        return bool(self._text or self._token_ids)

    def take(self) -> tuple[str, list[int], list[TokenLogprob]]:
        """The released output not yet emitted, cleared."""
        out = ("".join(self._text), self._token_ids, self._logprobs)
        self._text, self._token_ids, self._logprobs = [], [], []
        return out

    def _push(
        self, token: int | None, text: str, logprob: TokenLogprob | None, final: bool
    ) -> bool:
        if self.stopped:
            return True
        self._held.append((token, text, logprob))
        if not self._stops:
            self._release(len(self._held), None)
            return False
        held = "".join(piece[1] for piece in self._held)
        cut = _find_stop(held, self._stops)
        if cut is not None:
            self._release_until(cut)
            self.stopped = True
            return True
        safe = len(held) if final else len(held) - _partial_stop_length(held, self._stops)
        end = count = 0
        for _, piece, _ in self._held:
            if end + len(piece) > safe:
                break
            end += len(piece)
            count += 1
        self._release(count, None)
        return False

    def _release_until(self, cut: int) -> None:
        """Release the text before a stop string and the tokens that wrote it."""
        start = count = 0
        for _, piece, _ in self._held:
            if start >= cut:
                break
            start += len(piece)
            count += 1
        self._release(count, cut)
        self._held.clear()

    def _release(self, count: int, cut: int | None) -> None:
        released, self._held = self._held[:count], self._held[count:]
        text = "".join(piece for _, piece, _ in released)
        self._text.append(text if cut is None else text[:cut])
        for token, _, logprob in released:
            if token is not None:
                self._token_ids.append(token)
                if logprob is not None:
                    self._logprobs.append(logprob)


def _find_stop(text: str, stops: list[str]) -> int | None:
    """Index of the earliest stop string in ``text``."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _partial_stop_length(text: str, stops: list[str]) -> int:
    """Length of the longest tail of ``text`` that begins some stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(text), len(stop) - 1), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


@dataclass(eq=False)
class _Sequence:
    """One admitted request, from its insert into the batch to its last event."""

    request: GenerationRequest
    prompt: list[int]  # what is prefilled: the rendered prompt + resume_tokens
    prompt_tokens: int  # usage: the rendered prompt alone
    max_new_tokens: int
    sampler: Sampler
    processors: list[LogitsProcessor]
    extra_processors: list[LogitsProcessor]  # constrained decoding hooks in here
    output: _Output
    uid: int = -1
    cached_tokens: int = 0
    generated: int = 0
    last_emit: float = float("-inf")

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def wants_logprobs(self) -> bool:
        return self.request.logprobs or self.request.top_logprobs > 0

    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=len(self.request.resume_tokens) + self.generated,
            cached_tokens=min(self.cached_tokens, self.prompt_tokens),
        )


@dataclass
class StepPlan:
    """Changes to the batch before the next step: what ranks of a group must agree on."""

    admit: list[GenerationRequest] = field(default_factory=list)
    drop: list[GenerationRequest] = field(default_factory=list)  # cancelled while queued
    cancel: list[str] = field(default_factory=list)  # running request ids to end as cancelled
    retire: list[int] = field(default_factory=list)  # uids already finished, still in the batch

    def __bool__(self) -> bool:
        return bool(self.admit or self.drop or self.cancel or self.retire)


class Engine:
    """Serves ``GenerationRequest``s for one model from a dedicated thread."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_name: str,
        emit: Emit,
        max_batch: int = 32,
        coalesce_ms: float = 5.0,
        prompt_cache_size: int = 16,
        default_max_tokens: int = 512,
        context_length: int,
        prefill_step_size: int = 2048,
    ) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._model_name = model_name
        self._emit_fn = emit
        self._max_batch = max_batch
        self._coalesce_s = coalesce_ms / 1000.0
        self._default_max_tokens = default_max_tokens
        self._context_length = context_length
        self._prefill_step_size = prefill_step_size
        args = getattr(model, "args", None)
        self._vocab_size = int(getattr(args, "vocab_size", 0) or len(tokenizer))

        # Shared with callers' threads, under _lock.
        self._lock = threading.Lock()
        self._incoming: deque[GenerationRequest] = deque()
        self._cancels: set[str] = set()
        self._counters = dict.fromkeys(_COUNTERS, 0)
        self._closed = False  # set once the thread has drained; later submits fail at once
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

        # Engine thread only.
        self._generator: BatchGenerator | None = None
        self._active: dict[str, _Sequence] = {}
        self._by_uid: dict[int, _Sequence] = {}
        self._retiring: list[int] = []
        self._prompt_cache = LRUPromptCache(max_size=prompt_cache_size)
        self._eos_stop = make_stop_sequences(tokenizer)

    # ------------------------------------------------------------------ caller side

    def start(self) -> None:
        """Start the engine thread."""
        if self._thread is not None:
            raise RuntimeError("engine already started")
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread; requests still running end with a retryable GenerationFailed."""
        self._stopping.set()
        self._wakeup.set()
        if self._thread is None:
            self._fail_all("engine stopped")  # never started: no MLX state to release
        else:
            self._thread.join(timeout)

    def submit(self, request: GenerationRequest) -> None:
        """Queue a request; its events arrive through ``emit``."""
        with self._lock:
            closed = self._closed or self._stopping.is_set()
            if not closed:
                self._incoming.append(request)
        if closed:
            self._emit(_failed(request.request_id, "engine is stopped", 503, retryable=True))
            return
        self._wakeup.set()

    def cancel(self, request_id: str) -> None:
        """End a request as "cancelled" at the next step; unknown ids are ignored."""
        with self._lock:
            self._cancels.add(request_id)
        self._wakeup.set()

    def vitals(self) -> dict[str, int]:
        """Fields of ``actors.protocol.Vitals``; ``progress`` moves per prefill chunk and token."""
        with self._lock:
            return {
                **self._counters,
                "active_requests": len(self._active),
                "queued_requests": len(self._incoming),
                "batch_size": len(self._by_uid),
            }

    # ------------------------------------------------------------------ engine thread

    def _run(self) -> None:
        try:
            self._generator = self._new_generator()
            while not self._stopping.is_set():
                self._wakeup.clear()
                if not self._has_work():
                    self._wakeup.wait()
                    continue
                try:
                    self._step()
                except Exception as error:  # a bug of ours: the batch's state is suspect
                    log.exception("engine_step_failed")
                    self._fail_batch(error)
        finally:
            self._shut_down()

    def _new_generator(self) -> BatchGenerator:
        # The default stream, as mlx_lm.server does: collectives of a distributed group
        # must never race a step queued on another stream.
        return BatchGenerator(
            self._model,
            completion_batch_size=self._max_batch,
            prefill_step_size=self._prefill_step_size,
            stream=mx.default_stream(mx.default_device()),
        )

    def _has_work(self) -> bool:
        return bool(self._active or self._retiring or self._incoming or self._cancels)

    def _step(self) -> None:
        """One turn: agree on batch changes, apply them, advance the batch one token."""
        plan = self._schedule()
        if plan:
            self._apply(plan)
        if self._by_uid:
            self._advance()
        self._flush_due()

    def _schedule(self) -> StepPlan:
        """Decide which requests join and which sequences leave the batch this step."""
        plan = StepPlan(retire=self._retiring)
        self._retiring = []
        with self._lock:
            cancels, self._cancels = self._cancels, set()
            if cancels:
                plan.drop = [r for r in self._incoming if r.request_id in cancels]
                self._incoming = deque(r for r in self._incoming if r.request_id not in cancels)
                plan.cancel = [rid for rid in cancels if rid in self._active]
            room = self._max_batch - (len(self._by_uid) - len(plan.cancel))
            while self._incoming and len(plan.admit) < room:
                plan.admit.append(self._incoming.popleft())
        return plan

    def _apply(self, plan: StepPlan) -> None:
        for request in plan.drop:
            self._emit(Finished(request.request_id, "cancelled", Usage(0, 0)))
            self._count(requests_done=1)
        cancelled = [self._active[rid] for rid in plan.cancel]
        self._remove([seq.uid for seq in cancelled] + plan.retire)
        for seq in cancelled:
            self._finish(seq, "cancelled")
        for request in plan.admit:
            self._admit(request)

    def _remove(self, uids: list[int]) -> None:
        """Take sequences out of the batch, keeping their KV caches for later prompts."""
        if not uids:
            return
        caches = self._generator.remove(uids, return_prompt_caches=True)
        for cache, tokens in caches.values():
            self._store_cache(tokens, cache)

    def _admit(self, request: GenerationRequest) -> None:
        try:
            seq = self._prepare(request)
        except Exception as error:  # the request's own fault: template, length, parameters
            log.info("request_rejected", request_id=request.request_id, error=str(error))
            self._emit(_failed(request.request_id, str(error) or repr(error), 400))
            self._count(requests_done=1)
            return
        self._active[seq.request_id] = seq
        if seq.max_new_tokens <= 0:  # resume_tokens already used the whole budget
            self._finish(seq, "length")
            return
        try:
            self._insert(seq)
        except Exception as error:
            log.exception("insert_failed", request_id=seq.request_id)
            self._fail(seq, f"could not start generation: {error!r}", 500)

    def _insert(self, seq: _Sequence) -> None:
        """Put a sequence into the batch, starting from the longest cached prefix."""
        cache, rest = self._prompt_cache.fetch_nearest_cache(self._model_name, seq.prompt)
        if cache is not None and not rest:
            # An exact hit leaves nothing to feed and BatchGenerator rejects an empty prompt.
            if can_trim_prompt_cache(cache):
                trim_prompt_cache(cache, 1)
                rest = seq.prompt[-1:]
            else:
                cache, rest = None, seq.prompt
        seq.cached_tokens = len(seq.prompt) - len(rest)
        (seq.uid,) = self._generator.insert(
            [rest],
            max_tokens=[seq.max_new_tokens],
            caches=[cache],
            all_tokens=[seq.prompt[: seq.cached_tokens]],
            samplers=[seq.sampler],
            logits_processors=[seq.processors + seq.extra_processors],
            stop_sequences=[self._eos_stop],
        )
        self._by_uid[seq.uid] = seq
        with self._lock:
            self._counters["prompt_tokens"] += len(rest)
            self._counters["cache_hits"] += seq.cached_tokens > 0
            peak = max(self._counters["peak_batch_size"], len(self._by_uid))
            self._counters["peak_batch_size"] = peak

    def _prepare(self, request: GenerationRequest) -> _Sequence:
        """Everything about a request that can fail because of the request; raises ValueError."""
        if request.request_id in self._active:
            raise ValueError(f"request {request.request_id!r} is already running")
        if not 0 <= request.top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be in 0..{MAX_TOP_LOGPROBS}")
        if request.max_tokens is not None and request.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {request.max_tokens}")
        validate_sampling(request.sampling, self._vocab_size)
        resume = list(request.resume_tokens)
        if any(not 0 <= t < self._vocab_size for t in resume):
            raise ValueError("resume_tokens holds ids outside the model's vocabulary")
        prompt = self._render(request)
        full = prompt + resume
        room = self._context_length - len(full)
        if room <= 0:
            raise ValueError(
                f"prompt is {len(full)} tokens but the model's context is "
                f"{self._context_length}; shorten the prompt"
            )
        budget = request.max_tokens if request.max_tokens is not None else self._default_max_tokens
        return _Sequence(
            request=request,
            prompt=full,
            prompt_tokens=len(prompt),
            max_new_tokens=min(budget - len(resume), room),
            sampler=make_request_sampler(request.sampling, self._vocab_size),
            processors=make_request_processors(request.sampling),
            extra_processors=self._processors_for(request, full),
            output=_Output(self._tokenizer.detokenizer, request.stop, resume),
        )

    def _processors_for(
        self, request: GenerationRequest, prompt_tokens: list[int]
    ) -> list[LogitsProcessor]:
        """Extra logits processors for one request, applied after penalties and bias.

        ``prompt_tokens`` includes ``request.resume_tokens``. Constrained decoding
        (response_format, tool_choice) extends this.
        """
        return []

    def _render(self, request: GenerationRequest) -> list[int]:
        """Prompt token ids: the chat template for ``messages``, plain encoding for ``prompt``."""
        tokenizer = self._tokenizer
        if (request.messages is None) == (request.prompt is None):
            raise ValueError("set exactly one of messages or prompt")
        if request.messages is not None:
            if not request.messages:
                raise ValueError("messages is empty")
            text = tokenizer.apply_chat_template(
                [_message_dict(m) for m in request.messages],
                tools=[_tool_dict(t) for t in request.tools] if request.tools else None,
                add_generation_prompt=True,
                tokenize=False,
            )
            # The template writes any BOS itself, as tokenize=True would assume.
            tokens = tokenizer.encode(text, add_special_tokens=False)
        else:
            bos = tokenizer.bos_token
            add_special = bos is None or not request.prompt.startswith(bos)
            tokens = tokenizer.encode(request.prompt, add_special_tokens=add_special)
        if not tokens and not request.resume_tokens:
            raise ValueError("prompt is empty")
        return list(tokens)

    def _advance(self) -> None:
        """Run one BatchGenerator step and turn its responses into events."""
        try:
            prompt_responses, responses = self._generator.next()
        except Exception as error:
            log.exception("batch_step_failed", batch=len(self._by_uid))
            self._fail_batch(error)
            return
        self._count(
            progress=len(prompt_responses) + len(responses), tokens_generated=len(responses)
        )
        for response in responses:
            seq = self._by_uid.get(response.uid)
            if seq is None:
                continue
            try:
                self._on_token(seq, response)
            except Exception as error:
                log.exception("token_handling_failed", request_id=seq.request_id)
                self._fail(seq, f"generation failed: {error!r}", 500)
                if response.finish_reason is None:
                    self._retiring.append(seq.uid)

    def _on_token(self, seq: _Sequence, response: Any) -> None:
        seq.generated += 1
        if response.finish_reason == "stop":  # an EOS id: the only token-level stop we set
            seq.output.finish()
            reason = "stop"
        else:
            logprob = None
            if seq.wants_logprobs:
                logprob = token_logprob(
                    response.logprobs, response.token, seq.request.top_logprobs, self._decode
                )
            if seq.output.add(response.token, logprob):
                reason = "stop"
            elif response.finish_reason == "length":
                reason = "stop" if seq.output.finish() else "length"
            else:
                return
        if response.finish_reason is None:
            self._retiring.append(seq.uid)  # a stop string: the batch still holds it
        else:
            self._store_cache(response.all_tokens, response.prompt_cache)
        self._finish(seq, reason)

    def _decode(self, token: int) -> str:
        return self._tokenizer.decode([token])

    def _store_cache(self, tokens: list[int] | None, cache: list[Any] | None) -> None:
        if tokens and cache:
            self._prompt_cache.insert_cache(self._model_name, list(tokens), cache)

    def _flush_due(self) -> None:
        now = time.monotonic()
        for seq in self._active.values():
            if seq.output.pending and now - seq.last_emit >= self._coalesce_s:
                self._flush(seq, now)

    def _flush(self, seq: _Sequence, now: float) -> None:
        if not seq.output.pending:
            return
        text, token_ids, logprobs = seq.output.take()
        self._emit(
            TokenDelta(
                request_id=seq.request_id,
                text=text,
                token_ids=token_ids,
                logprobs=logprobs if seq.wants_logprobs else None,
            )
        )
        seq.last_emit = now

    def _finish(self, seq: _Sequence, reason: str) -> None:
        self._forget(seq)
        self._flush(seq, time.monotonic())
        self._emit(Finished(seq.request_id, reason, seq.usage()))

    def _fail(self, seq: _Sequence, message: str, status: int, retryable: bool = False) -> None:
        self._forget(seq)
        self._emit(_failed(seq.request_id, message, status, retryable))

    def _forget(self, seq: _Sequence) -> None:
        self._active.pop(seq.request_id, None)
        self._by_uid.pop(seq.uid, None)
        self._count(requests_done=1)

    def _fail_batch(self, error: Exception) -> None:
        """Fail every running request and start over with a fresh BatchGenerator."""
        for seq in list(self._active.values()):
            # Most likely the replica, not the request: another group may well succeed.
            self._fail(seq, f"generation step failed: {error!r}", 500, retryable=True)
        self._retiring = []
        self._generator.close()
        self._generator = self._new_generator()

    def _shut_down(self) -> None:
        self._fail_all("engine stopped")
        if self._generator is not None:
            self._generator.close()
        # MLX keeps per-thread streams and compile caches whose teardown at thread exit
        # races interpreter shutdown and aborts the process ("terminate called without an
        # active exception"); a worker thread must drop its arrays and clear its streams.
        self._generator = None
        self._prompt_cache = LRUPromptCache(max_size=0)
        self._retiring = []
        gc.collect()
        if hasattr(mx, "clear_streams"):  # mlx >= 0.32
            mx.clear_streams()

    def _fail_all(self, message: str) -> None:
        """End every running and queued request as retryable elsewhere; refuse new ones."""
        with self._lock:
            self._closed = True
            queued, self._incoming = list(self._incoming), deque()
        for seq in list(self._active.values()):
            self._fail(seq, message, 503, retryable=True)
        for request in queued:
            self._emit(_failed(request.request_id, message, 503, retryable=True))

    def _count(self, **increments: int) -> None:
        with self._lock:
            for name, n in increments.items():
                self._counters[name] += n

    def _emit(self, event: GenerationEvent) -> None:
        try:
            self._emit_fn(event)
        except Exception:
            log.exception("emit_failed", request_id=event.request_id)


def _failed(
    request_id: str, message: str, status: int, retryable: bool = False
) -> GenerationFailed:
    return GenerationFailed(request_id, message, retryable=retryable, status=status)


def _message_dict(message: ChatMessage) -> dict[str, Any]:
    """A chat message as chat templates expect it (OpenAI shape, arguments as an object)."""
    out: dict[str, Any] = {"role": message.role, "content": message.content or ""}
    if message.name is not None:
        out["name"] = message.name
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": _json_or_text(call.arguments)},
            }
            for call in message.tool_calls
        ]
    return out


def _json_or_text(arguments: str) -> Any:
    # Templates render arguments with tojson, as mlx_lm.server passes them: decoded.
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def _tool_dict(tool: ToolSpec) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.parameters is not None:
        function["parameters"] = tool.parameters
    return {"type": "function", "function": function}
