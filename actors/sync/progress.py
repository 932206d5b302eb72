"""Progress of one ask, sent at most a few times a second, and the hashing that feeds it."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

from actors.protocol.model_messages import SyncProgress

# At most this many SyncProgress per second per ask: a feed, not a flood, however fast bytes land.
REPORTS_PER_SECOND = 4
HASH_CHUNK = 8 * 1024 * 1024


class ProgressReporter:
    """Sends ``SyncProgress`` for one ask; thread-safe (download threads report together)."""

    def __init__(self, send: Callable[[SyncProgress], object], request_id: str) -> None:
        self._send = send
        self._request_id = request_id
        self._lock = threading.Lock()
        self._last = float("-inf")
        self._interval = 1.0 / REPORTS_PER_SECOND

    def report(self, phase: str, done: int, total: int, detail: str = "", force=False) -> None:
        """Send unless one went out less than a quarter second ago (``force``: the phase's
        first and last figures, which a reader must see)."""
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last < self._interval:
                return
            self._last = now
        self._send(
            SyncProgress(
                request_id=self._request_id, phase=phase, done=done, total=total, detail=detail
            )
        )


class ByteCounter:
    """Bytes of one phase, counted from several threads, reported through a ``ProgressReporter``."""

    def __init__(self, reporter: ProgressReporter, phase: str, total: int) -> None:
        self.reporter = reporter
        self.phase = phase
        self.total = total
        self.done = 0
        self.detail = ""
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            done = self.done
        self.reporter.report(self.phase, max(0, done), self.total, self.detail)

    def start(self) -> None:
        self.reporter.report(self.phase, self.done, self.total, self.detail, force=True)

    def finish(self) -> None:
        self.reporter.report(self.phase, self.done, self.total, self.detail, force=True)


def sha256_file(path: Path, counter: ByteCounter | None = None) -> str:
    """The file's sha256, read in 8 MiB chunks; each chunk counts as progress."""
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(HASH_CHUNK):
            digest.update(chunk)
            if counter is not None:
                counter.add(len(chunk))
    return digest.hexdigest()


def byte_tqdm(counter: ByteCounter) -> type:
    """A tqdm class for ``snapshot_download`` that feeds ``counter`` and draws nothing.

    snapshot_download makes three bars from it: files done, bytes received, bytes written.
    Only the written-bytes bar ("huggingface_hub.snapshot_download") counts: every file's
    download updates it, retries roll it back, and resumed bytes are added as ``initial``.
    """
    from huggingface_hub.utils.tqdm import tqdm

    class ByteTqdm(tqdm):
        def __init__(self, *args, **kwargs) -> None:
            self._counts = kwargs.get("name") == "huggingface_hub.snapshot_download"
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            if self._counts and n:
                counter.add(int(n))
            return super().update(n)

    return ByteTqdm
