"""The ranks of a generation group, kept in lockstep: rank 0 decides, the others follow.

Every rank runs the same engine over its shard of the model. Only rank 0 receives
requests; before each step it sends its ``SharedPlan`` (requests that join the batch,
sequences that leave it) through two small ``all_sum`` collectives, as ``mlx_lm.server``
shares its requests, and every rank then applies the same plan and advances the same
batch. Collectives run on the engine thread, on the stream the batch steps on, so they
never race a step in flight (MLX-NOTES).

A ring rank waiting in a collective busy-polls a core, so idle ranks do not sit in one:
they meet once per ``idle_tick`` and sleep in between. An idle group's plan may say "probe
the link" (``engine.probe_step``): every rank runs it inside ``agree``, between two steps.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import msgspec
import structlog

from actors.generation.engine.inbox import Prompted, StepPlan
from actors.generation.engine.probe_step import LinkProber
from actors.protocol.messages import LoadProgress, ProbeSettings
from actors.protocol.rank_env import BACKEND_ENV, WORLD_SIZE_ENV, write_rank_files

log = structlog.get_logger()

IDLE_TICK = 0.05  # seconds between meetings of an idle group: the first request waits <= this
_STOP = -1  # the size rank 0 sends to end the followers' loops


class GroupFailure(Exception):
    """A collective failed (a rank died) or the ranks can no longer agree: the group is lost."""


class GroupStopped(Exception):
    """Rank 0 stopped the group; followers leave their loop."""


class SharedPlan(msgspec.Struct, frozen=True, omit_defaults=True):
    """What every rank must apply before the next step, as rank 0 decided it."""

    admit: list[Prompted] = []  # with rank 0's prompt tokens: no other rank renders one
    cancel: list[str] = []  # running request ids
    retire: list[int] = []  # batch uids of sequences that ended on a stop string
    evict: list[int] = []  # prompt cache entry ids rank 0 evicted since its last plan
    probe: str = ""  # "latency" | "bandwidth": every rank measures the link (probe_step)
    probe_bytes: int = 0  # the bandwidth probe's all_sum size


def join_group(expected_size: int) -> Any:
    """``mx.distributed.init`` with the supervisor-given environment; the group."""
    write_rank_files(os.environ)
    backend = os.environ.get(BACKEND_ENV, "any")
    group = mx.distributed.init(strict=True, backend=backend)
    if group.size() != expected_size:
        raise RuntimeError(
            f"mx.distributed.init gave a group of {group.size()} ranks, expected "
            f"{expected_size} (${WORLD_SIZE_ENV}={os.environ.get(WORLD_SIZE_ENV)})"
        )
    return group


def load_rank(config: Any, path: Path, send: Callable[[Any], Any]) -> tuple[Any, Any, Any]:
    """Check the split, join the group, load this rank's shard: (model, tokenizer, group).

    A model the group cannot split is a ``PermanentFailure``: every rank reports the same
    line and the supervisor marks the group failed instead of restarting it.
    """
    from mlx_lm.utils import sharded_load

    from actors.protocol.model_spec import model_display_name
    from actors.protocol.sharding import model_facts, sharding_problem
    from actors.runtime.control import PermanentFailure

    name = model_display_name(config.model)
    try:
        facts = model_facts(path)
    except (ValueError, KeyError) as error:
        raise PermanentFailure(f'group "{config.group}": {name} cannot be split: {error}') from None
    problem = sharding_problem(config.group, name, config.parallel, config.world_size, facts)
    if problem:
        raise PermanentFailure(problem)
    detail = f"rank {config.rank} of {config.world_size}"
    send(LoadProgress(stage="connect", fraction=0.0, detail=detail))
    group = join_group(config.world_size)
    send(LoadProgress(stage="load", fraction=0.0, detail=str(path)))
    split = {"pipeline_group" if config.parallel == "pipeline" else "tensor_group": group}
    model, tokenizer = sharded_load(str(path), **split)
    return model, tokenizer, group


def with_shared_seed(prompted: Prompted) -> Prompted:
    """Temperature sampling without a seed gets one from rank 0, so every rank draws alike."""
    request = prompted.request
    sampling = request.sampling
    if sampling.temperature == 0 or sampling.seed is not None:
        return prompted
    seeded = msgspec.structs.replace(sampling, seed=secrets.randbits(63))
    return msgspec.structs.replace(
        prompted, request=msgspec.structs.replace(request, sampling=seeded)
    )


class Lockstep:
    """Rank 0's step plans, shared with the other ranks of one group."""

    def __init__(
        self,
        group: Any,
        idle_tick: float = IDLE_TICK,
        on_lost: Callable[[str], None] | None = None,
        prober: LinkProber | None = None,
    ):
        """``on_lost``: called once the engine has given the group up (a rank is gone).

        ``prober``: the live link probe (None: never probe); rank 0 decides when.
        """
        self.group = group
        self.rank = group.rank()
        self.size = group.size()
        self.leader = self.rank == 0
        self._idle_tick = idle_tick
        self._on_lost = on_lost
        self._prober = prober
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(SharedPlan)

    def pace(self, busy: bool, wakeup: threading.Event) -> None:
        """Before a step: an idle rank 0 waits for work at most a tick, an idle follower sleeps.

        Both sleep the same tick from the same moment (the last collective), so neither
        spins long waiting for the other; new work wakes rank 0 early and the followers
        join within a tick.
        """
        if busy:
            return
        if self.leader:
            wakeup.wait(self._idle_tick)
        else:
            time.sleep(self._idle_tick)

    def agree(self, plan: StepPlan, idle: bool = False) -> StepPlan:
        """Rank 0's batch changes on every rank: rank 0 sends its plan, the others adopt it.

        Every rank then admits the same requests (with the prompt tokens rank 0 rendered
        off its engine thread) and samples with the same seeds, so batches stay equal.
        ``idle`` (rank 0): no sequence runs; with no change either, a probe may be due.
        """
        if self.leader:
            plan.admit = [with_shared_seed(r) for r in plan.admit]
            changed = plan.admit or plan.cancel or plan.retire or plan.evict
            due = None
            if self._prober is not None and not changed:
                due = self._prober.due(idle)
            probe, nbytes = due or ("", 0)
            shared = SharedPlan(plan.admit, plan.cancel, plan.retire, plan.evict, probe, nbytes)
            self.share(shared if changed or probe else None)
            self._probe(shared)
            return plan
        shared = self.share(None)
        if shared is None:
            return StepPlan()
        self._probe(shared)
        return StepPlan(
            admit=shared.admit, cancel=shared.cancel, retire=shared.retire, evict=shared.evict
        )

    def share(self, plan: SharedPlan | None) -> SharedPlan | None:
        """Rank 0's plan on every rank (None: nothing new); followers pass None."""
        payload = b""
        if self.leader and plan is not None:
            payload = self._encoder.encode(plan)
        size = int(self._all_sum(mx.array([len(payload)], dtype=mx.int32)).item())
        if size == _STOP:
            raise GroupStopped
        if size == 0:
            return None
        if self.leader:
            self._all_sum(mx.array(payload))  # the followers' zeros leave it unchanged
            return plan
        data = self._all_sum(mx.zeros(size, dtype=mx.uint8))
        try:
            return self._decoder.decode(bytes(memoryview(data)))
        except msgspec.DecodeError as error:
            raise GroupFailure(f"rank {self.rank} got a plan it cannot read: {error}") from error

    def _probe(self, shared: SharedPlan) -> None:
        """Run the plan's link probe, if it has one, as every rank does at this point."""
        if not shared.probe:
            return
        if self._prober is None:  # a follower told to probe: its own settings do not matter
            self._prober = LinkProber(ProbeSettings(enabled=False), lambda _: None)
        try:
            self._prober.run(self.group, shared.probe, shared.probe_bytes, self.leader)
        except RuntimeError as error:
            raise GroupFailure(str(error)) from error

    def stop(self) -> None:
        """Rank 0: release the followers waiting in ``share``; a lost group is left as it is."""
        if not self.leader:
            return
        try:
            self._all_sum(mx.array([_STOP], dtype=mx.int32))
        except GroupFailure:
            pass

    def lost(self, reason: str) -> None:
        """The engine gave the group up, its requests already failed: the rank must go."""
        if self._on_lost is not None:
            self._on_lost(reason)

    def _all_sum(self, x: mx.array) -> mx.array:
        try:
            out = mx.distributed.all_sum(x, group=self.group)
            mx.eval(out)  # releases the GIL: heartbeats go on while a peer is slow
        except RuntimeError as error:  # "[ring] connection to a peer was lost", ...
            raise GroupFailure(str(error)) from error
        return out
