"""Share actor (`python -m actors share`): one rank of a model share over ``mx.distributed``.

The supervisor spawns one per rank of a multi-host group (ring or jaccl) as a transient
group (``supervisor.supervision.transient``). Every rank joins with the environment it was
given, says ``LoadProgress(stage="joined")``, then all call ``mlx_lm.share.share_file`` for
the same files in the same order: the source rank broadcasts each file over ``all_sum`` in
100 MB chunks, the others write it where they were told (the staging path the sync actor's
``SyncVerify`` named: the sync actor checks its sha256 and renames it into place later).

Options (``ActorConfig.options``): ``src`` the sending rank; ``files`` a JSON list, the same
length and order on every rank, of ``{"size": n, "path": p}``: ``p`` is the source blob on
the sending rank, the staging path on a receiver, or "" on a receiver that needs the file
not (it reads the bytes into /dev/null: an all_sum takes every rank).

The sending rank reports ``LoadProgress(stage="share", fraction=bytes done / total,
detail=file)`` at most 4 times a second; each rank ends with ``ShareDone`` and waits to be
ended. A failure raises: the runtime says ``ActorError`` and the supervisor ends every rank.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import structlog

from actors.protocol.messages import LoadProgress
from actors.protocol.model_messages import ShareDone
from actors.protocol.rank_env import join_transient_group, pin_to_cpu

log = structlog.get_logger()

PROGRESS_EVERY = 0.25  # s between two progress messages of the sending rank
DISCARD = "/dev/null"  # where a rank that needs a file not writes it


def share_options(options: dict[str, str], world_size: int) -> tuple[int, list[tuple[int, str]]]:
    """(the sending rank, [(size, path)]) from the actor's options; ValueError naming the fault."""
    try:
        src = int(options["src"])
        entries = json.loads(options["files"])
        files = [(int(e["size"]), str(e["path"])) for e in entries]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"share: bad options ({type(exc).__name__}: {exc})") from None
    if not 0 <= src < world_size:
        raise ValueError(f"share: src {src} is not a rank of a group of {world_size}")
    if any(size < 0 for size, _ in files):
        raise ValueError("share: a file size is negative")
    return src, files


class _Meter:
    """Stands in for ``mlx_lm.share``'s tqdm bar (same calls): counts the bytes the source
    has handed to the collective and reports them, throttled."""

    def __init__(self, *args, desc: str = "", **kwargs):
        self.desc = desc

    def update(self, n: int) -> None:
        _progress.add(n, self.desc)

    def close(self) -> None:
        pass


class _Progress:
    def __init__(self) -> None:
        self.runtime = None
        self.total = 0
        self.done = 0
        self._last = 0.0

    def add(self, n: int, detail: str) -> None:
        self.done += n
        now = time.monotonic()
        if self.runtime is None or now - self._last < PROGRESS_EVERY:
            return
        self._last = now
        fraction = self.done / self.total if self.total else 1.0
        self.runtime.send(LoadProgress(stage="share", fraction=fraction, detail=detail))


_progress = _Progress()


class ShareActor:
    def __init__(self) -> None:
        self._runtime = None

    def start(self, runtime) -> None:
        core = pin_to_cpu(os.environ)  # before MLX starts its threads: they inherit it
        if core is not None:
            log.info("pinned_to_cpu", core=core)
        # tqdm reads its TQDM_* overrides when imported (the supervisor sets this one too):
        # no bar may reach stderr, which the supervisor relays line by line as JSON logs.
        os.environ["TQDM_DISABLE"] = "1"
        import mlx.core as mx
        from mlx_lm import share

        cfg = runtime.config
        src, files = share_options(cfg.options, cfg.world_size)
        mx.set_default_device(mx.cpu)  # as mlx_lm.share does: the collectives run on CPU
        group = join_transient_group(mx, cfg.world_size, "share")
        rank = group.rank()
        sending = rank == src
        if sending:
            for size, path in files:
                if not path or os.path.getsize(path) != size:
                    raise RuntimeError(f"share: source file {path!r} is not {size} bytes")
            _progress.runtime, _progress.total = runtime, sum(size for size, _ in files)
            share.tqdm = _Meter  # its bar is our progress report (the module's only use of it)
        else:
            for _, path in files:
                if path:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
        runtime.send(LoadProgress(stage="joined", detail=f"rank {rank} pid {os.getpid()}"))
        began, moved = time.monotonic(), 0
        for size, path in files:
            target = path or DISCARD
            # share_file opens root / file: an absolute file replaces the root.
            share.share_file(Path("/"), target, src, group)
            if not sending and path and os.path.getsize(path) != size:
                raise RuntimeError(
                    f"share: received {os.path.getsize(path)} of {size} bytes into {path}"
                )
            moved += size
        seconds = time.monotonic() - began
        if sending:
            runtime.send(LoadProgress(stage="share", fraction=1.0, detail="done"))
        runtime.send(ShareDone(nbytes=moved, seconds=seconds))
        log.info("share_done", rank=rank, files=len(files), nbytes=moved, seconds=round(seconds, 3))

    def handle(self, msg) -> None:
        pass  # a share rank takes no work: it runs once, then waits to be ended

    def vitals(self) -> dict[str, int | float]:
        return {}

    def stop(self) -> None:
        pass
