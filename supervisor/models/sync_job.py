"""One download-and-sync job: the hub once, then node to node, every file checked.

1. The source (a node that has the model complete, else the supervisor's own machine when
   it is a target, else the first target) asks the hub for the file list and sizes
   (``SyncDownload(dry_run)``), or hashes what it has (``SyncManifestAsk``).
2. Pre-flight: every target's free disk against what it lacks, before anything moves.
3. The source downloads (``SyncDownload``): its manifest has every file's sha256.
4. Each target says what it lacks or holds corrupted (``SyncVerify``), gets those files
   staged (SFTP through the supervisor, several in flight) and checks and renames them
   (``SyncCommit``). A file whose bytes do not match is sent again, up to ``RESENDS`` times.

Every step reports ``ModelJobProgress``; the job ends with one ``ModelJobEnded``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from actors.protocol.model_messages import (
    ModelFile,
    SyncCommit,
    SyncDownload,
    SyncManifest,
    SyncManifestAsk,
    SyncNeeds,
    SyncProgress,
    SyncVerify,
)
from supervisor.models.asks import Asker, JobFailed
from supervisor.models.transfer import Copy, LocalEndpoint, SSHEndpoint, TransferError, copy_files
from supervisor.state import ClusterState
from supervisor.state.events import ModelJobProgress
from supervisor.state.folds.models import NodeModels

# Sends staged files to nodes over a group's mx.distributed link: (plan, manifest, needs of
# the nodes that lack files) -> {node: bytes sent} for the nodes it served.
Share = Callable[["SyncPlan", SyncManifest, dict[str, SyncNeeds]], Awaitable[dict[str, int]]]
RESENDS = 2  # times a file that arrived corrupted is sent again
PROGRESS_EVERY = 0.25  # s between two progress events of one node


@dataclass
class SyncPlan:
    job_id: str
    repo: str
    revision: str
    source: str
    targets: list[str]  # the source included when it is a target
    local: set[str]  # nodes on this machine (no SSH needed to reach their files)
    commit: str = ""  # known once the source has the manifest


class Meter:
    """Bytes of one node's phase: rate and ETA, and progress events at most every 0.25 s."""

    def __init__(self, state: ClusterState, job_id: str, node: str, phase, total: int, path: str):
        self._state, self._job, self._node = state, job_id, node
        self.phase, self.total, self.path = phase, total, path
        self.done = 0
        self._start = time.monotonic()
        self._last = 0.0

    def begin(self, phase) -> None:
        """A new phase: its bytes and its rate count from now."""
        self.phase, self.done, self._start = phase, 0, time.monotonic()

    def add(self, nbytes: int) -> None:
        self.set(self.done + nbytes)

    def set(self, done: int, total: int | None = None, force: bool = False) -> None:
        self.done = done
        if total is not None:
            self.total = total
        now = time.monotonic()
        if force or now - self._last >= PROGRESS_EVERY or (self.total and done >= self.total):
            self._last = now
            self.emit()

    def emit(self, phase=None, detail: str = "") -> None:
        elapsed = max(time.monotonic() - self._start, 1e-6)
        rate = self.done / elapsed
        left = max(self.total - self.done, 0)
        eta = (left / rate) if rate > 0 else None
        self._state.apply(
            ModelJobProgress(
                self._job,
                self._node,
                phase or self.phase,
                self.done,
                self.total,
                round(rate, 1),
                None if eta is None else round(eta, 2),
                self.path,
                detail,
            )
        )


def on_sync_progress(meter: Meter) -> Callable[[SyncProgress], None]:
    def forward(p: SyncProgress) -> None:
        if p.phase != meter.phase:
            meter.begin(p.phase)
        meter.set(p.done, p.total)

    return forward


async def manifest_of(asker: Asker, plan: SyncPlan, have_it: bool, timeout: float) -> SyncManifest:
    """The source's complete snapshot, downloading it from the hub unless ``have_it``."""
    state = asker.state
    path = "" if have_it else "hub"
    meter = Meter(state, plan.job_id, plan.source, "hash" if have_it else "download", 0, path)
    meter.emit()
    if have_it:
        ask = SyncManifestAsk(asker.new_id(), plan.repo, plan.revision)
    else:
        ask = SyncDownload(asker.new_id(), plan.repo, plan.revision)
    reply = await asker.ask(plan.source, ask, SyncManifest, timeout, on_sync_progress(meter))
    meter.set(reply.downloaded_bytes or meter.done, meter.total or meter.done, force=True)
    return reply


async def needs_of(asker: Asker, node: str, plan: SyncPlan, files: list[ModelFile], timeout: float):
    ask = SyncVerify(asker.new_id(), plan.repo, plan.commit, files)
    return await asker.ask(node, ask, SyncNeeds, timeout)


def estimate_preflight(listing: SyncManifest, scans: Mapping[str, NodeModels | None]) -> None:
    """Before the download: each node's free disk (last scan) against what it lacks, the
    bytes of the model less those of the same snapshot it already holds."""
    total = sum(f.size for f in listing.files)
    for node, scan in scans.items():
        if scan is None:
            continue  # not scanned: checked exactly once the source has the files
        have = max(
            (m.size for m in scan.models if m.repo == listing.repo and m.commit == listing.commit),
            default=0,
        )
        want = max(total - have, 0)
        if want > scan.free_bytes:
            raise JobFailed(
                f"node {node}: needs {want} bytes for {listing.repo}, {scan.free_bytes} free in "
                f"{scan.models_dir}"
            )


def preflight(needs: dict[str, SyncNeeds]) -> None:
    """Refuse the job, naming the node and the bytes, when a target's disk is too small."""
    for node, need in needs.items():
        want = sum(f.size for f in need.missing)
        if want > need.free_bytes:
            raise JobFailed(
                f"node {node}: needs {want} bytes for the model, {need.free_bytes} free in "
                f"{need.models_dir}"
            )


class Endpoints:
    """How the supervisor reads or writes one node's files: here, or over SSH."""

    def __init__(self, local: Callable[[], set[str]], connector: Callable[[str], object]):
        self._local, self._connector = local, connector  # read per job: nodes join and leave

    def of(self, node: str):
        if node in self._local():
            return LocalEndpoint()
        connector = self._connector(node)
        if connector is None:
            raise JobFailed(f"node {node}: no SSH connection to send files over")
        return SSHEndpoint(connector)


async def send_to(
    asker: Asker,
    endpoints: Endpoints,
    plan: SyncPlan,
    node: str,
    manifest: SyncManifest,
    need: SyncNeeds,
    *,
    in_flight: int,
    timeout: float,
    staged: bool = False,
) -> int:
    """Stage what ``node`` lacks, let it check and rename; resend corrupted files. Bytes sent.

    ``staged``: the files are already at their staging paths (sent over mx.distributed):
    only the check and rename, and a resend over SFTP of what failed its check."""
    state = asker.state
    by_path = {f.path: f for f in manifest.files}
    missing = need.missing
    total = sum(f.size for f in missing)
    both_here = node in plan.local and plan.source in plan.local
    path = "mx.distributed" if staged else "local" if both_here else "sftp"
    meter = Meter(state, plan.job_id, node, "transfer", total, path)
    if staged:
        meter.done = total  # the share's meter reported these bytes
    sent = 0
    for attempt in range(RESENDS + 1):
        if missing and not (staged and attempt == 0):
            copies = [Copy(by_path[f.path].location, f.location, f.size) for f in missing]
            try:
                sent += await copy_files(
                    copies,
                    endpoints.of(plan.source),
                    endpoints.of(node),
                    in_flight=in_flight,
                    timeout=timeout,
                    progress=meter.add,
                )
            except TransferError as exc:
                raise JobFailed(f"node {node}: {exc}") from exc
        meter.emit("commit")
        staged = {f.path: f.location for f in missing}
        files = [
            ModelFile(f.path, f.size, f.sha256, f.blob, staged.get(f.path, ""))
            for f in manifest.files
        ]
        commit = SyncCommit(asker.new_id(), plan.repo, manifest.commit, plan.revision, files)
        reply = await asker.ask(node, commit, None, timeout * 4)
        bad = set(reply.bad)
        if not bad:
            meter.set(meter.total, force=True)
            meter.emit("done")
            return sent
        if attempt == RESENDS:
            break
        # Staged again where the node wants them: ask it anew.
        need = await needs_of(asker, node, plan, [by_path[p] for p in sorted(bad)], timeout)
        missing = need.missing
        meter.set(meter.done, meter.total + sum(f.size for f in missing), force=True)
    raise JobFailed(f"node {node}: {', '.join(sorted(bad))} arrived corrupted {RESENDS + 1} times")


async def run_sync(
    asker: Asker,
    endpoints: Endpoints,
    plan: SyncPlan,
    *,
    have_it: bool,
    in_flight: int,
    timeout: float,
    download_timeout: float,
    scans: Mapping[str, NodeModels],
    fits: Callable[[SyncManifest], None] = lambda m: None,
    share: Share | None = None,
) -> tuple[SyncManifest, int]:
    """Run the job's sync part; the source's manifest and the bytes moved (hub + nodes).

    ``fits`` may refuse the model (raise JobFailed) once its size is known, before any node
    other than the source receives a byte (a swap checks memory there).
    """
    others = [n for n in plan.targets if n != plan.source]
    if not have_it:  # sizes from the hub first: refuse before the source downloads a byte
        ask = SyncDownload(asker.new_id(), plan.repo, plan.revision, dry_run=True)
        listing = await asker.ask(plan.source, ask, SyncManifest, timeout)
        fits(listing)
        estimate_preflight(listing, {n: scans.get(n) for n in others})
    manifest = await manifest_of(asker, plan, have_it, download_timeout)
    fits(manifest)
    plan.commit = manifest.commit
    needs = dict(
        zip(
            others,
            await asyncio.gather(
                *(needs_of(asker, n, plan, manifest.files, timeout) for n in others)
            ),
            strict=True,
        )
    )
    preflight(needs)
    shared: dict[str, int] = {}
    if share is not None:  # targets that share a multi-host group with the source
        shared = await share(plan, manifest, {n: needs[n] for n in others if needs[n].missing})
    moved = await asyncio.gather(
        *(
            send_to(
                asker,
                endpoints,
                plan,
                n,
                manifest,
                needs[n],
                in_flight=in_flight,
                timeout=timeout,
                staged=n in shared,
            )
            for n in others
        )
    )
    if plan.source in plan.targets:
        fetched = manifest.downloaded_bytes  # its bytes came from the hub (none: it had them)
        meter = Meter(
            asker.state, plan.job_id, plan.source, "done", fetched, "" if have_it else "hub"
        )
        meter.done = fetched
        meter.emit("done")
    return manifest, manifest.downloaded_bytes + sum(moved) + sum(shared.values())
