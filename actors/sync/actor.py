"""The ``sync`` actor: a node's model cache, driven by the supervisor's asks.

Asks run on a small pool of daemon threads so that hashing or a download never stalls the
control connection's reader (nor holds up the process's exit at Shutdown); asks about one
repo run one at a time (a delete waits for a download).
Every ask ends in exactly one terminal reply; any failure is ``SyncFailed`` with one line that
names the node.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Mapping

import structlog

from actors.protocol.messages import Message, Ready
from actors.protocol.model_messages import (
    SyncCommit,
    SyncCommitted,
    SyncDelete,
    SyncDeleted,
    SyncDownload,
    SyncFailed,
    SyncInventory,
    SyncManifest,
    SyncManifestAsk,
    SyncNeeds,
    SyncScan,
    SyncVerify,
)
from actors.sync.cache import SyncError, free_bytes, models_dir_from_env
from actors.sync.download import download, local_manifest
from actors.sync.files import commit_files, delete_repo, verify
from actors.sync.progress import ProgressReporter
from actors.sync.scan import scan_models

log = structlog.get_logger()

WORKERS = 2  # a download and a hash/verify side by side; more would fight over one disk
# Asks waiting beyond this (the hostfile's models.sync_queue, in the config's options) are
# refused at once: the supervisor runs a few jobs per node, so this many waiting means
# something upstream is looping.
MAX_PENDING = 64

ASKS = (SyncScan, SyncDownload, SyncManifestAsk, SyncVerify, SyncCommit, SyncDelete)


class SyncActor:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self.models_dir = models_dir_from_env(self._environ)
        self._asks: queue.Queue = queue.Queue()  # bounded in handle(), by self._limit
        self._limit = MAX_PENDING
        self._lock = threading.Lock()
        self._repo_locks: dict[str, threading.Lock] = {}
        self._runtime = None
        self._node = ""

    def start(self, runtime) -> None:
        self._runtime = runtime
        self._node = runtime.config.node
        self._limit = int(runtime.config.options.get("queue", MAX_PENDING))
        self.models_dir.mkdir(parents=True, exist_ok=True)
        free = free_bytes(self.models_dir, self._environ)
        for index in range(WORKERS):
            threading.Thread(target=self._work, name=f"sync-{index}", daemon=True).start()
        runtime.send(Ready(info={"models_dir": str(self.models_dir), "free_bytes": str(free)}))

    def handle(self, msg: Message) -> None:
        if not isinstance(msg, ASKS):
            return
        if self._asks.qsize() >= self._limit:  # one reader thread puts: no race past it
            self._fail(msg.request_id, f"{self._limit} model tasks already waiting; try later")
            return
        self._asks.put_nowait(msg)

    def vitals(self) -> dict[str, int | float]:
        return {}

    def stop(self) -> None:
        for _ in range(WORKERS):
            try:
                self._asks.put_nowait(None)
            except queue.Full:  # the workers are daemons: they end with the process anyway
                break

    # ------------------------------------------------------------------ one ask

    def _work(self) -> None:
        while (msg := self._asks.get()) is not None:
            self._run(msg)

    def _run(self, msg) -> None:
        try:
            repo = getattr(msg, "repo", None)
            if repo is None:
                reply = self._answer(msg)
            else:
                with self._repo_lock(repo):
                    reply = self._answer(msg)
        except SyncError as error:
            self._fail(msg.request_id, str(error))
        except Exception as error:  # an unforeseen failure still ends the ask, in one line
            log.exception("sync_ask_failed", ask=type(msg).__name__)
            first = (str(error).strip().splitlines() or [""])[0][:200]
            kind = f"{type(msg).__name__} failed: {type(error).__name__}"
            self._fail(msg.request_id, f"{kind}: {first}")
        else:
            self._send(reply)

    def _answer(self, msg) -> Message:
        """The terminal reply to ``msg``; progress goes out meanwhile."""
        rid = msg.request_id
        reporter = ProgressReporter(self._send, rid)
        models_dir = self.models_dir
        if isinstance(msg, SyncScan):
            models = scan_models(models_dir)
            return SyncInventory(rid, str(models_dir), self._free(), models)
        if isinstance(msg, SyncDownload):
            commit, files, fetched = download(
                models_dir,
                self._environ,
                reporter,
                msg.repo,
                msg.revision,
                msg.allow_patterns,
                dry_run=msg.dry_run,
            )
            return SyncManifest(rid, msg.repo, commit, files, downloaded_bytes=fetched)
        if isinstance(msg, SyncManifestAsk):
            commit, files = local_manifest(models_dir, reporter, msg.repo, msg.revision)
            return SyncManifest(rid, msg.repo, commit, files)
        if isinstance(msg, SyncVerify):
            missing = verify(models_dir, reporter, msg.repo, msg.commit, msg.files)
            return SyncNeeds(rid, str(models_dir), self._free(), missing)
        if isinstance(msg, SyncCommit):
            bad = commit_files(models_dir, reporter, msg.repo, msg.commit, msg.revision, msg.files)
            return SyncCommitted(rid, bad)
        assert isinstance(msg, SyncDelete)
        return SyncDeleted(rid, delete_repo(models_dir, msg.repo))

    def _repo_lock(self, repo: str) -> threading.Lock:
        with self._lock:
            return self._repo_locks.setdefault(repo, threading.Lock())

    def _free(self) -> int:
        return free_bytes(self.models_dir, self._environ)

    def _fail(self, request_id: str, message: str) -> None:
        self._send(SyncFailed(request_id=request_id, message=f"node {self._node}: {message}"))

    def _send(self, msg: Message) -> None:
        assert self._runtime is not None, "SyncActor.start was not called"
        self._runtime.send(msg)
