"""Generation actor: loads the model, runs the engine, turns messages into engine calls."""

from __future__ import annotations

import time

import structlog

from actors.protocol import Cancel, Generate, GenerationFailed, LoadProgress, Message, Ready

log = structlog.get_logger()


class GenerationActor:
    def __init__(self) -> None:
        self._engine = None
        self._runtime = None

    def start(self, runtime) -> None:
        import mlx_lm  # heavy: imported here so the actor says Hello first

        from actors.engine import Engine
        from actors.models import resolve_model

        self._runtime = runtime
        cfg = runtime.config
        began = time.monotonic()

        def progress(stage: str, fraction: float) -> None:
            runtime.send(LoadProgress(stage=stage, fraction=fraction))

        path = resolve_model(cfg.model, progress=progress)
        runtime.send(LoadProgress(stage="load", fraction=0.0, detail=str(path)))
        model, tokenizer = mlx_lm.load(str(path))
        context_length = _context_length(model)
        self._engine = Engine(
            model,
            tokenizer,
            model_name=cfg.model,
            emit=runtime.send,
            max_batch=cfg.max_batch,
            context_length=context_length,
        )
        self._engine.start()
        seconds = time.monotonic() - began
        log.info("model_loaded", model=cfg.model, path=str(path), seconds=round(seconds, 3))
        runtime.send(
            Ready(
                model=cfg.model,
                model_path=str(path),
                context_length=context_length,
                load_seconds=seconds,
                info=_blas_info(),
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

    def vitals(self) -> dict[str, int | float]:
        return self._engine.vitals() if self._engine is not None else {}

    def stop(self) -> None:
        if self._engine is not None:
            self._engine.stop()


def _context_length(model) -> int:
    args = getattr(model, "args", None)
    return int(getattr(args, "max_position_embeddings", 0) or 4096)


def _blas_info() -> dict[str, str]:
    import os

    preload = os.environ.get("LD_PRELOAD", "")
    return {"blas": "openblas" if "openblas" in preload else "builtin"}
