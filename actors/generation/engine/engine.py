"""The generation engine: continuous batching over mlx_lm's ``BatchGenerator``.

One thread owns the model, the batch and the prompt cache; callers talk to it
through ``submit`` / ``cancel`` / ``vitals``, which never block on compute, so an
actor runtime can keep sending heartbeats while a long prompt prefills.

Each loop turn is one ``_step()``: ``_schedule()`` takes from the ``Inbox`` which
requests join and which sequences leave the batch (the one decision a distributed
group must share, ``Lockstep.agree``), ``_apply()`` carries it out, then the batch
(``actors.generation.engine.batch``) advances one token and the ``Outbox`` sends what is due.

A request alone in the engine runs as a ``Solo`` (``engine.solo``), which decodes like
``generate_step`` without the batch's bookkeeping, and joins the batch when a second
request arrives. Ranks of a group make that choice from the same plans, so they agree.

Prefixes (``cache.prefixes``): a sequence starts from the longest cached prefix, and
one whose prefix a running prefill is about to store waits for it (``Prefixes.wait``).
"""

from __future__ import annotations

import gc
from typing import Any

import mlx.core as mx
import structlog

from actors.generation.cache.prefixes import Prefixes
from actors.generation.engine.batch import Batch
from actors.generation.engine.calls import CallerSide
from actors.generation.engine.inbox import Prompted, StepPlan
from actors.generation.engine.lockstep import GroupFailure, GroupStopped, Lockstep
from actors.generation.engine.outbox import Emit, Outbox
from actors.generation.engine.solo import Solo, SoloToken
from actors.generation.requests.admission import ModelFacts, Sequence, prepare_sequence
from actors.generation.requests.constrained import GrammarTokenizer
from actors.protocol.messages import Finished, Usage

log = structlog.get_logger()


class Engine(CallerSide):
    """Serves ``GenerationRequest``s for one model from a dedicated thread."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_name: str,
        emit: Emit,
        max_batch: int = 32,
        coalesce_ms: float = 20.0,  # hostfile stream_interval_ms
        prompt_cache_bytes: int | None = None,  # None: default_budget(model)
        prompt_cache_entries: int = 64,
        default_max_tokens: int = 512,
        context_length: int,
        prefill_step_size: int = 256,  # hostfile prefill_step_tokens: per step, whole batch
        grammar: GrammarTokenizer | None = None,
        lockstep: Lockstep | None = None,
    ) -> None:
        """``grammar``: the model's vocabulary for constrained decoding; None refuses it.

        ``lockstep``: this engine is one rank of a distributed group; rank 0 takes the
        requests and the other ranks follow its plans (``actors.generation.engine.lockstep``).
        """
        self._lockstep = lockstep
        self._model = model
        self._max_batch = max_batch
        self._prefill_step_size = prefill_step_size
        self._batch = Batch(
            model, tokenizer, max_batch=max_batch, prefill_step_size=prefill_step_size
        )
        args = getattr(model, "args", None)
        self._vocab_size = int(getattr(args, "vocab_size", 0) or len(tokenizer))
        facts = ModelFacts(
            tokenizer=tokenizer,
            vocab_size=self._vocab_size,
            context_length=context_length,
            default_max_tokens=default_max_tokens,
            grammar=grammar,
        )
        super().__init__(facts, Outbox(emit, tokenizer, coalesce_ms))

        # Engine thread only.
        self._active: dict[str, Sequence] = {}
        self._retiring: list[int] = []
        self._solo: Solo | None = None  # the one sequence, when it runs alone
        self._prefixes = Prefixes(
            model,
            model_name,
            max_bytes=prompt_cache_bytes,
            max_entries=prompt_cache_entries,
            active_bytes=self._kv_bytes,
            leads=lockstep is None or lockstep.leader,
            shares=lockstep is not None,
        )
        self._eos_ids = frozenset(int(t) for t in getattr(tokenizer, "eos_token_ids", ()) or ())

    @property
    def prompt_cache_budget(self) -> int:
        """The prefix cache's byte bound (with the running sequences' KV caches)."""
        return self._prefixes.budget

    def _engine_vitals(self) -> dict[str, int]:
        return {"batch_size": self._decoding(), **self._prefixes.stats()}

    # ------------------------------------------------------------------ engine thread

    def _run(self) -> None:
        lost: GroupFailure | None = None
        try:
            self._batch.open()
            while self._running():
                self._wakeup.clear()
                if self._lockstep is None and not self._has_work():
                    self._wakeup.wait()
                    continue
                try:
                    self._step()
                except (GroupFailure, GroupStopped):
                    raise
                except Exception as error:  # a bug of ours: the batch's state is suspect
                    log.exception("engine_step_failed")
                    self._fail_batch(error)
            if self._lockstep is not None:
                self._lockstep.stop()
        except GroupStopped:
            pass
        except GroupFailure as error:
            lost = error
            log.error("generation_group_failed", error=str(error))
            self._fail_all(f"generation group failed: {error}")
        finally:
            self._shut_down()
        if lost is not None:
            self._lockstep.lost(str(lost))

    def _running(self) -> bool:
        # A follower leaves when rank 0 says so (GroupStopped): leaving on its own would
        # strand rank 0 in its last collective.
        if self._lockstep is not None and not self._lockstep.leader:
            return True
        return not self._stopping.is_set()

    def _decoding(self) -> int:
        """Sequences decoding: the batch's, or the Solo."""
        return len(self._batch) + (self._solo is not None)

    def _kv_bytes(self) -> int:
        """KV bytes the running sequences hold: they count against the prefix cache's bound."""
        solo = sum(c.nbytes for c in self._solo.cache) if self._solo is not None else 0
        return self._batch.kv_bytes + solo

    def _has_work(self) -> bool:
        return bool(self._active or self._retiring or self._inbox.pending())

    def _alone(self, plan: StepPlan) -> bool:
        """Whether the plan's one admission will be the only sequence: it may run as a Solo."""
        return len(plan.admit) == 1 and not self._batch and self._solo is None

    def _step(self) -> None:
        """One turn: agree on batch changes, apply them, advance the batch one token."""
        if self._lockstep is not None:
            self._lockstep.pace(self._has_work(), self._wakeup)
        plan = self._schedule()
        if self._lockstep is not None:
            plan = self._lockstep.agree(plan, idle=not self._active)  # idle: a probe may run
        if plan:
            self._apply(plan)
        if self._solo is not None:
            self._advance_solo()
        elif self._batch:
            self._advance()
        self._out.flush_due(self._active.values())
        stored, self._batch.stored = self._batch.stored, []
        if self._solo is not None:
            stored, self._solo.stored = stored + self._solo.stored, []
        self._prefixes.store(stored)  # the checkpoints prefill took
        for seq in self._prefixes.released(self._prefilling):
            self._start(seq, alone=False)
        self._prefixes.trim()  # after the step's last lookup: ranks evict alike

    def _schedule(self) -> StepPlan:
        """Decide which requests join and which sequences leave the batch this step."""
        room = self._max_batch - self._decoding() - len(self._prefixes.waiting)
        plan = self._inbox.take(room, self._active)
        plan.retire, self._retiring = self._retiring, []
        plan.evict = self._prefixes.take_evicted()
        return plan

    def _apply(self, plan: StepPlan) -> None:
        if not self._lockstep or not self._lockstep.leader:
            self._prefixes.follow(plan.evict)
        for request in plan.drop:
            self._out.emit(Finished(request.request_id, "cancelled", Usage(0, 0)))
            self._count(requests_done=1)
        cancelled = [self._active[rid] for rid in plan.cancel]
        alone = self._solo.seq if self._solo is not None else None
        if alone in cancelled:
            self._end_solo()
        started = [s.uid for s in cancelled if s is not alone and s.uid >= 0]  # not waiting
        self._remove(started + plan.retire)
        for seq in cancelled:
            self._finish(seq, "cancelled")
        alone = self._alone(plan)
        if plan.admit and not alone and self._solo is not None:
            self._join_batch()
        for request in plan.admit:
            self._admit(request, alone)

    def _remove(self, uids: list[int]) -> None:
        """Take sequences out of the batch, keeping their KV caches for later prompts."""
        for cache, tokens in self._batch.remove(uids):
            self._prefixes.keep(tokens, cache)

    def _admit(self, prompted: Prompted, alone: bool = False) -> None:
        try:
            seq = self._prepare(prompted)
        except Exception as error:  # the request's own fault: length, parameters, grammar
            self._reject(prompted.request_id, error)
            return
        self._active[seq.request_id] = seq
        if seq.max_new_tokens <= 0:  # resume_tokens already used the whole budget
            self._finish(seq, "length")
            return
        if not self._prefixes.wait(seq, self._prefilling()):
            self._start(seq, alone)

    def _prefilling(self) -> list[tuple[Sequence, list[int]]]:
        """Running sequences with checkpoints still ahead, and their offsets."""
        running = [(s, self._batch.ahead(s)) for s in self._batch.seqs.values()]
        if self._solo is not None:
            running.append((self._solo.seq, [offset for offset, _ in self._solo.ends]))
        return [(seq, ahead) for seq, ahead in running if ahead]

    def _start(self, seq: Sequence, alone: bool) -> None:
        try:
            self._insert(seq, alone)
        except Exception as error:
            log.exception("insert_failed", request_id=seq.request_id)
            self._fail(seq, f"could not start generation: {error!r}", 500)

    def _insert(self, seq: Sequence, alone: bool) -> None:
        """Start a sequence (alone: as the Solo) from the longest cached prefix."""
        cache, rest, ends = self._prefixes.start(seq)
        if alone:
            stop_ids = frozenset() if seq.ignores_eos else self._eos_ids
            self._solo = Solo(
                self._model,
                seq,
                cache,
                rest,
                stream=self._batch.stream,
                prefill_step_size=self._prefill_step_size,
                stop_ids=stop_ids,
                ends=ends,
            )
        else:
            self._batch.insert(seq, rest, cache, seq.prompt[: seq.cached_tokens], ends)
        with self._lock:
            self._counters["prompt_tokens"] += len(rest)
            self._counters["cache_hits"] += seq.cached_tokens > 0
            peak = max(self._counters["peak_batch_size"], self._decoding())
            self._counters["peak_batch_size"] = peak

    def _join_batch(self) -> None:
        """A second sequence is coming: the Solo goes on inside the batch from where it is."""
        solo = self._solo
        token, rest = solo.hand_over()
        if token is not None and self._solo_token(solo, token):
            return  # that token was its last
        self._solo = None
        self._batch.stored += solo.stored
        self._batch.insert(solo.seq, rest, solo.cache, list(solo.tokens), solo.ends)

    def _advance_solo(self) -> None:
        solo = self._solo
        try:
            token = solo.step()
        except Exception as error:
            log.exception("solo_step_failed", request_id=solo.seq.request_id)
            self._fail_batch(error)  # as for a batch step: a group's ranks must fail together
            return
        self._count(progress=1, tokens_generated=token is not None)
        if token is not None:
            self._solo_token(solo, token)

    def _solo_token(self, solo: Solo, token: SoloToken) -> bool:
        """Hand a Solo's token to its output; True when that ended the sequence."""
        seq = solo.seq
        try:
            reason = self._out.token(
                seq, token.token, token.logprobs, eos=token.eos, at_length=token.at_length
            )
        except Exception as error:
            log.exception("token_handling_failed", request_id=seq.request_id)
            self._end_solo()
            self._fail(seq, f"generation failed: {error!r}", 500)
            return True
        if reason is None:
            return False
        self._end_solo()
        self._finish(seq, reason)
        return True

    def _end_solo(self) -> None:
        """The Solo's sequence is done: keep its KV cache for later prompts."""
        solo, self._solo = self._solo, None
        if solo is not None:
            self._prefixes.keep(solo.tokens, solo.cache)

    def _prepare(self, prompted: Prompted) -> Sequence:
        """Everything about a request that can fail because of the request; raises ValueError."""
        if prompted.request_id in self._active:
            raise ValueError(f"request {prompted.request_id!r} is already running")
        return prepare_sequence(prompted, self._facts)

    def _advance(self) -> None:
        """Run one BatchGenerator step and turn its responses into events."""
        try:
            progress, responses = self._batch.step()
        except Exception as error:
            log.exception("batch_step_failed", batch=len(self._batch))
            self._fail_batch(error)
            return
        self._count(progress=progress, tokens_generated=len(responses))
        for seq, response in responses:
            try:
                reason = self._out.token(
                    seq,
                    response.token,
                    response.logprobs,
                    eos=response.finish_reason == "stop",  # the only token-level stop we set
                    at_length=response.finish_reason == "length",
                )
            except Exception as error:
                log.exception("token_handling_failed", request_id=seq.request_id)
                self._fail(seq, f"generation failed: {error!r}", 500)
                if response.finish_reason is None:
                    self._retiring.append(seq.uid)
                continue
            if reason is None:
                continue
            if response.finish_reason is None:
                self._retiring.append(seq.uid)  # a stop string: the batch still holds it
            else:
                self._prefixes.keep(response.all_tokens, response.prompt_cache)
            self._finish(seq, reason)

    def _finish(self, seq: Sequence, reason: str) -> None:
        self._forget(seq)
        self._out.finished(seq, reason)

    def _fail(self, seq: Sequence, message: str, status: int, retryable: bool = False) -> None:
        self._forget(seq)
        self._out.failed(seq.request_id, message, status, retryable)

    def _forget(self, seq: Sequence) -> None:
        self._active.pop(seq.request_id, None)
        self._prefixes.waiting.pop(seq.request_id, None)
        self._batch.forget(seq)
        self._count(requests_done=1)

    def _fail_batch(self, error: Exception) -> None:
        """A failed step: fail every running request and start over with a fresh batch."""
        if self._lockstep is not None:
            # Ranks step together: one rank's failed step leaves the group out of step.
            raise GroupFailure(f"generation step failed: {error!r}") from error
        for seq in list(self._active.values()):
            # Most likely the replica, not the request: another group may well succeed.
            self._fail(seq, f"generation step failed: {error!r}", 500, retryable=True)
        self._retiring = []
        self._solo = None
        self._batch.reset()

    def _shut_down(self) -> None:
        self._fail_all("engine stopped")
        self._batch.close()
        # MLX keeps per-thread streams and compile caches whose teardown at thread exit
        # races interpreter shutdown and aborts the process ("terminate called without an
        # active exception"); a worker thread must drop its arrays and clear its streams.
        self._solo = None
        self._prefixes.clear()
        self._retiring = []
        gc.collect()
        if hasattr(mx, "clear_streams"):  # mlx >= 0.32
            mx.clear_streams()

    def _fail_all(self, message: str) -> None:
        """End every running and queued request as retryable elsewhere; refuse new ones."""
        queued = self._inbox.close()
        for seq in list(self._active.values()):
            self._fail(seq, message, 503, retryable=True)
        for request in queued:
            self._out.failed(request.request_id, message, 503, retryable=True)
