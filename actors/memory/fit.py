"""Will a model fit in a node's memory? Asked by each rank before it loads its weights.

A model that does not fit would otherwise push the node into swap or get the actor
OOM-killed, and a restart would only do it again: the answer is a one-line
``PermanentFailure`` (the group is marked failed, not restarted).

The figures are estimates, and say so. The weights are the ``*.safetensors`` bytes on
disk (what mlx_lm maps in; the KV caches come on top, inside the margin). A rank of a
sharded group needs about ``total / world_size``: tensor parallelism splits every
layer's matrices, pipeline parallelism gives each rank an equal run of layers; the
embeddings and norms that are not split are small next to the layers and come out of
the margin. Ranks or groups sharing a node each compare against the same free memory.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_MARGIN_BYTES = 2_000_000_000  # hostfile memory_margin_bytes: KV caches, activations, OS


def weight_bytes(model_dir: str | Path) -> int:
    """Bytes of the model's weights: its ``*.safetensors`` files' sizes."""
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))


def rank_share(total: int, world_size: int) -> int:
    """One rank's estimated part of ``total`` weight bytes (an even split, rounded up)."""
    return -(-total // max(1, world_size))


def human_bytes(n: int) -> str:
    """Decimal units with one decimal, as a person reads them: ``38.2 GB``."""
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def fit_problem(
    *,
    node: str,
    model: str,
    weights: int,
    margin: int,
    available: int,
    total_weights: int | None = None,
    world_size: int = 1,
) -> str | None:
    """None if ``weights + margin`` fits in ``available`` bytes, else the one-line reason.

    ``weights`` is this rank's share; for a sharded group ``total_weights`` and
    ``world_size`` say what it is a share of.
    """
    needed = weights + margin
    if needed <= available:
        return None
    if world_size > 1 and total_weights is not None:
        of = f"this rank's estimated 1/{world_size} of {human_bytes(total_weights)}"
        weights_text = f"weights {human_bytes(weights)}, {of}"
        advice = "use more ranks, a smaller model, or free memory"
    else:
        weights_text = f"weights {human_bytes(weights)}"
        advice = "choose a smaller model or free memory"
    return (
        f"node {node}: model {model} needs {human_bytes(needed)} ({weights_text} + margin "
        f"{human_bytes(margin)}), {human_bytes(available)} available; {advice}"
    )


def check_fit(
    config, weights_total: int, *, model: str, available: int | None = None
) -> str | None:
    """``fit_problem`` for an actor's ``ActorConfig`` on this node (psutil's available memory)."""
    if available is None:
        import psutil

        available = psutil.virtual_memory().available
    return fit_problem(
        node=config.node,
        model=model,
        weights=rank_share(weights_total, config.world_size),
        margin=config.memory_margin_bytes,
        available=available,
        total_weights=weights_total,
        world_size=config.world_size,
    )
