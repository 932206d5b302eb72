"""Generation actor: loads the model, runs the engine, turns messages into engine calls."""

from __future__ import annotations

import os
import time

import structlog

from actors.protocol.messages import (
    ActorError,
    Cancel,
    Generate,
    GenerationFailed,
    LoadProgress,
    Message,
    Ready,
)
from actors.protocol.rank_env import pin_to_cpu

log = structlog.get_logger()

EXIT_GROUP_LOST = 5


class GenerationActor:
    def __init__(self) -> None:
        self._engine = None
        self._runtime = None
        self._mx = None  # mlx.core once imported: its memory figures go in every heartbeat
        self._model_bytes = 0

    def start(self, runtime) -> None:
        core = pin_to_cpu(os.environ)  # before MLX starts its threads: they inherit it
        if core is not None:
            log.info("pinned_to_cpu", core=core)
        import mlx.core as mx
        import mlx_lm  # heavy: imported here so the actor says Hello first

        from actors.generation.engine.engine import Engine
        from actors.generation.requests.admission import load_grammar
        from actors.models.resolve import resolve_model

        self._runtime = runtime
        cfg = runtime.config
        began = time.monotonic()

        def progress(stage: str, fraction: float) -> None:
            runtime.send(LoadProgress(stage=stage, fraction=fraction))

        path = resolve_model(cfg.model, progress=progress)
        self._mx = mx
        _check_fit(cfg, path)  # before a byte of weights is read
        lockstep = None
        if cfg.world_size > 1:
            from actors.generation.engine.lockstep import Lockstep, load_rank
            from actors.generation.engine.probe_step import LinkProber

            model, tokenizer, group = load_rank(cfg, path, runtime.send)
            prober = LinkProber(cfg.probe, runtime.send)  # rank 0 reports its figures
            lockstep = Lockstep(group, on_lost=self._group_lost, prober=prober)
        else:
            runtime.send(LoadProgress(stage="load", fraction=0.0, detail=str(path)))
            model, tokenizer = mlx_lm.load(str(path))
        self._model_bytes = _parameter_bytes(model)  # this rank's share, once
        context_length = _context_length(model)
        self._engine = Engine(
            model,
            tokenizer,
            model_name=cfg.model,
            # Rank 0 alone speaks for a group: the other ranks' events are the same ones.
            emit=runtime.send if lockstep is None or lockstep.leader else _discard,
            max_batch=cfg.max_batch,
            prompt_cache_bytes=cfg.prompt_cache_bytes,
            prompt_cache_entries=cfg.prompt_cache_entries,
            prefill_step_size=cfg.prefill_step_tokens,
            coalesce_ms=cfg.stream_interval_ms,
            context_length=context_length,
            grammar=load_grammar(model, tokenizer),
            lockstep=lockstep,
        )
        self._engine.start()
        seconds = time.monotonic() - began
        log.info("model_loaded", model=cfg.model, path=str(path), seconds=round(seconds, 3))
        budget = self._engine.prompt_cache_budget
        log.info("prompt_cache_budget", bytes=budget, entries=cfg.prompt_cache_entries)
        runtime.send(
            Ready(
                model=cfg.model,
                model_path=str(path),
                context_length=context_length,
                load_seconds=seconds,
                info={
                    **_blas_info(),
                    "prompt_cache_bytes": str(budget),
                    "prompt_cache_entries": str(cfg.prompt_cache_entries),
                },
            )
        )

    def handle(self, msg: Message) -> None:
        if isinstance(msg, Generate):
            if self._engine is None:
                self._runtime.send(
                    GenerationFailed(
                        request_id=msg.request.request_id,
                        message="model is still loading",
                        retryable=True,
                        status=503,
                    )
                )
                return
            self._engine.submit(msg.request)
        elif isinstance(msg, Cancel) and self._engine is not None:
            self._engine.cancel(msg.request_id)

    def _group_lost(self, reason: str) -> None:
        """A rank of the group is gone (its requests already failed): say why, then exit."""
        self._runtime.send(ActorError(message=f"generation group lost: {reason}"))
        os._exit(EXIT_GROUP_LOST)  # the group cannot be rejoined; the supervisor restarts it

    def vitals(self) -> dict[str, int | float]:
        figures = self._engine.vitals() if self._engine is not None else {}
        mx = self._mx
        if mx is not None:
            # Reads of the allocator's counters: no lock, no graph, no stream, so safe from
            # the heartbeat thread while the engine computes (a figure may be a moment old).
            figures["mlx_active_bytes"] = mx.get_active_memory()
            figures["mlx_cache_bytes"] = mx.get_cache_memory()
            figures["mlx_peak_bytes"] = mx.get_peak_memory()
        figures["model_bytes"] = self._model_bytes
        return figures

    def stop(self) -> None:
        if self._engine is not None:
            self._engine.stop()


def _discard(_event) -> None:
    pass


def _check_fit(cfg, path) -> None:
    """Refuse, in one line and for good, a model this node has no memory for."""
    from actors.memory.fit import check_fit, weight_bytes
    from actors.protocol.model_spec import model_display_name
    from actors.runtime.control import PermanentFailure

    problem = check_fit(cfg, weight_bytes(path), model=model_display_name(cfg.model))
    if problem:
        raise PermanentFailure(problem)


def _parameter_bytes(model) -> int:
    from mlx.utils import tree_flatten

    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def _context_length(model) -> int:
    args = getattr(model, "args", None)
    return int(getattr(args, "max_position_embeddings", 0) or 4096)


def _blas_info() -> dict[str, str]:
    import os

    preload = os.environ.get("LD_PRELOAD", "")
    return {"blas": "openblas" if "openblas" in preload else "builtin"}
