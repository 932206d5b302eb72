"""ModelManager: the ``ModelAdmin`` the API serves (list, download and sync, delete, swap).

Jobs run as tasks of the supervisor's loop, at most one per model (asking for a model that
a job is already fetching gives that job). Every fact goes to the ClusterState as an event;
what the routes show is read back from it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import msgspec
import structlog
from huggingface_hub.utils import HFValidationError, validate_repo_id

from actors.protocol.model_messages import SyncDelete, SyncDeleted, SyncInventory, SyncScan
from actors.protocol.model_spec import is_demo_spec, looks_like_path, parse_fake_spec
from supervisor.cluster.cluster import Cluster, node_name
from supervisor.config.load import is_local
from supervisor.config.spec import ModelsSpec
from supervisor.models.asks import Asker, JobFailed
from supervisor.models.registry import complete_on, model_list, repo_of, serving_groups
from supervisor.models.share_job import group_share
from supervisor.models.swap import swap_group
from supervisor.models.sync_job import Endpoints, SyncPlan, run_sync
from supervisor.serving.contract import (
    BadRequest,
    Conflict,
    GroupModel,
    ModelDownload,
    NotFound,
    QueueFull,
)
from supervisor.state.events import ModelJobEnded, ModelJobStarted, ModelsScanned

log = structlog.get_logger()

SCAN_FRESH = 2.0  # s a scan of every node answers the model list for
FOLLOW_KEEPALIVE = 15.0  # s: a follower gets the job's view again at least this often


def parse_model(model: str) -> tuple[str, str]:
    """``org/name[@revision]`` -> (repo, revision); BadRequest naming what is wrong."""
    repo, _, revision = model.strip().partition("@")
    if parse_fake_spec(repo) or is_demo_spec(repo) or looks_like_path(repo):
        raise BadRequest(f'model: "{model}" is not a hub repo id; expected org/name[@revision]')
    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise BadRequest(
            f'model: "{model}" is not a hub repo id; expected org/name[@revision]'
        ) from None
    if "/" not in repo:
        raise BadRequest(f'model: "{model}" needs its organisation: org/name[@revision]')
    return repo, revision or "main"


class ModelManager:
    def __init__(self, cluster: Cluster, spec: ModelsSpec, drain_timeout: float = 30.0):
        self._cluster = cluster
        self._spec = spec
        self.drain_timeout = drain_timeout
        self.state = cluster.state
        self._asker = Asker(cluster.state, cluster.sync_handle)
        self._endpoints = Endpoints(self._local_nodes, cluster.connector)
        self._tasks: dict[str, asyncio.Task] = {}  # job id -> its task, while it runs
        self._running: dict[str, str] = {}  # repo (or "group:<name>") -> its running job
        self._syncing: dict[str, str] = {}  # repo -> the job moving its files (download, swap)
        self._scan_task: asyncio.Future[set[str]] | None = None
        self._scanned_at = 0.0

    def _nodes(self) -> list[str]:
        return [node_name(h) for h in self._cluster.spec.nodes] + [
            n for n in self.state.nodes if n not in {node_name(h) for h in self._cluster.spec.nodes}
        ]

    def _local_nodes(self) -> set[str]:
        return {node for node, view in self.state.nodes.items() if view.local} | {
            node_name(h) for h in self._cluster.spec.nodes if is_local(h)
        }

    # ------------------------------------------------------------------ reading

    async def scan(self, nodes: list[str] | None = None) -> set[str]:
        """Ask each node's disk (at most scan_timeout s); the nodes that answered."""
        nodes = self._nodes() if nodes is None else nodes

        async def one(node: str) -> bool:
            try:
                ask = SyncScan(self._asker.new_id())
                inv = await self._asker.ask(node, ask, SyncInventory, self._spec.scan_timeout)
            except JobFailed as exc:
                log.info("model_scan_failed", node=node, reason=str(exc))
                return False
            self.state.apply(
                ModelsScanned(node, inv.models_dir, inv.free_bytes, list(inv.models), time.time())
            )
            return True

        answered = await asyncio.gather(*(one(n) for n in nodes))
        return {n for n, ok in zip(nodes, answered, strict=True) if ok}

    async def models(self) -> dict:
        reachable = await self._recent_scan()
        listing = model_list(
            self._nodes(), self.state.models.nodes, self.state.groups.values(), reachable
        )
        return {**listing, "jobs": self.state.models.jobs_json()}

    async def _recent_scan(self) -> set[str]:
        """A scan of every node at most SCAN_FRESH s old; callers meanwhile share one (Open
        WebUI polls /api/tags, which lists the disks: a poll must not be a scan each)."""
        task = self._scan_task
        if task is None or (task.done() and time.monotonic() - self._scanned_at > SCAN_FRESH):
            task = self._scan_task = asyncio.ensure_future(self.scan())
            task.add_done_callback(lambda _: setattr(self, "_scanned_at", time.monotonic()))
        return await asyncio.shield(task)

    def job(self, job_id: str) -> dict | None:
        view = self.state.models.job(job_id)
        return None if view is None else _json(view)

    async def follow(self, job_id: str) -> AsyncIterator[dict]:
        view = self.state.models.job(job_id)
        if view is None:
            raise NotFound(f"no model job {job_id!r}")
        while True:
            yield _json(view)
            if view.state != "running":
                return
            await self.state.wait_for(
                lambda seen=view: self.state.models.job(job_id) is not seen, FOLLOW_KEEPALIVE
            )
            view = self.state.models.job(job_id) or view

    # ------------------------------------------------------------------ download

    def _targets(self, nodes: list[str] | None, group: str | None) -> list[str]:
        known = self._nodes()
        if group is not None:
            view = self.state.groups.get(group)
            if view is None:
                raise NotFound(f'group: no group "{group}"; groups: {", ".join(self.state.groups)}')
            return list(view.nodes)
        if nodes is None or nodes == ["all"]:
            return known
        unknown = [n for n in nodes if n not in known]
        if unknown:
            raise NotFound(f"nodes: no node {unknown[0]!r}; nodes: {', '.join(known)}")
        if not nodes:
            raise BadRequest("nodes: empty; name nodes, or leave it out for every node")
        return list(dict.fromkeys(nodes))

    def download(self, order: ModelDownload) -> dict:
        repo, revision = parse_model(order.model)
        targets = self._targets(order.nodes, order.group)
        running = self._running.get(repo) or self._syncing.get(repo)
        if running is not None:  # one job moves a model's files at a time: follow that one
            return self.job(running) or {}
        job_id = _new_id()
        source = self._source(repo, revision, targets)
        work = self.sync(repo, revision, targets, job_id, source=source)
        self._start("download", repo, targets, work, job_id=job_id, source=source[0])
        return self.job(job_id) or {}

    def _start(self, action, model, nodes, work, *, job_id: str, group: str = "", source: str = ""):
        if len(self._tasks) >= self._spec.jobs_running:
            work.close()  # the coroutine never ran
            raise QueueFull(
                f"{len(self._tasks)} model jobs are running (models.jobs_running); "
                "start this one when one ends"
            )
        key = f"group:{group}" if group else model
        started = ModelJobStarted(job_id, action, model, nodes, time.time(), source, group)
        self.state.apply(started)
        self._running[key] = job_id
        task = asyncio.create_task(self._run(job_id, key, work), name=f"model-job-{job_id}")
        self._tasks[job_id] = task
        return job_id

    async def _run(self, job_id: str, key: str, work) -> None:
        ok, error, moved = False, "the supervisor stopped before the job ended", 0
        try:
            try:
                moved = await work
                ok, error = True, ""
            except JobFailed as exc:
                error = str(exc)
            except Exception as exc:  # a bug must still end the job, with its reason
                log.exception("model_job_crashed", job_id=job_id)
                error = f"{type(exc).__name__}: {exc}"
            # Before the end is told: whoever reads the model list on it sees the outcome.
            await self.scan()
        finally:
            self._running.pop(key, None)
            self._tasks.pop(job_id, None)
            self.state.apply(ModelJobEnded(job_id, ok, time.time(), error, moved or 0))
            log.info("model_job_ended", job_id=job_id, ok=ok, error=error, moved_bytes=moved)

    def _source(self, repo: str, revision: str, targets: list[str]) -> tuple[str, bool]:
        """Who sends: a target holding the model complete, else any node holding it (the hub
        is not asked again), else this machine when it is a target, else the first target."""
        scans = self.state.models.nodes
        for node in [*targets, *(n for n in self._nodes() if n not in targets)]:
            if complete_on(repo, revision, scans.get(node)) is not None:
                return node, True
        local = [n for n in targets if n in self._local_nodes()]
        return (local or targets)[0], False

    async def sync(self, repo, revision, targets, job_id, fits=None, source=None) -> int:
        """Put ``repo`` on ``targets`` (``source``: who sends, and whether it has the model
        already; chosen from the last scans unless given). The bytes moved."""
        await self.scan(targets)  # the free disk the pre-flight reads
        source, have_it = source or self._source(repo, revision, targets)
        plan = SyncPlan(job_id, repo, revision, source, targets, self._local_nodes())
        kwargs = {"fits": fits} if fits is not None else {}
        groups = lambda: [g.spec for g in self._cluster.groups]  # noqa: E731 - read at share time
        share = group_share(self.state, self._cluster.spec, groups, self._spec.transfer_timeout)
        self._syncing[repo] = job_id
        try:
            return await self._run_sync(plan, have_it, share, kwargs)
        finally:
            self._syncing.pop(repo, None)

    async def _run_sync(self, plan: SyncPlan, have_it: bool, share, kwargs) -> int:
        _, moved = await run_sync(
            self._asker,
            self._endpoints,
            plan,
            have_it=have_it,
            in_flight=self._spec.files_in_flight,
            timeout=self._spec.transfer_timeout,
            download_timeout=self._spec.download_timeout,
            scans=self.state.models.nodes,
            share=share,
            **kwargs,
        )
        return moved

    # ------------------------------------------------------------------ delete

    async def delete(self, model: str, node: str | None) -> dict:
        repo = repo_of(model.strip())
        nodes = self._targets(None if node is None else [node], None)
        busy = self._running.get(repo) or self._syncing.get(repo)
        if busy is not None:
            raise Conflict(f'model "{repo}" is being fetched by job {busy}; delete it after')
        served = [
            g
            for g in self.state.groups.values()
            if g.name in serving_groups(repo, [g]) and set(g.nodes) & set(nodes)
        ]
        if served:
            g = served[0]
            raise Conflict(
                f'model "{repo}" is served by group "{g.name}" on {", ".join(g.nodes)}; '
                "swap the group to another model first (supervisor swap)"
            )
        await self.scan(nodes)
        holders = [n for n in nodes if any(m.repo == repo for m in self._models_on(n))]
        if not holders:
            raise NotFound(f'model "{repo}" is on no node' + (f" {node}" if node else ""))
        freed: dict[str, int] = {}
        for n in holders:
            try:
                ask = SyncDelete(self._asker.new_id(), repo)
                reply = await self._asker.ask(n, ask, SyncDeleted, self._spec.scan_timeout)
            except JobFailed as exc:
                raise Conflict(str(exc)) from exc
            freed[n] = reply.freed_bytes
        await self.scan(holders)
        return {"model": repo, "deleted": freed}

    def _models_on(self, node: str):
        scan = self.state.models.nodes.get(node)
        return scan.models if scan else []

    # ------------------------------------------------------------------ swap

    def swap(self, group: str, order: GroupModel) -> dict:
        target = next((g for g in self._cluster.groups if g.name == group), None)
        if target is None:
            raise NotFound(f'no group "{group}"; groups: {", ".join(self.state.groups)}')
        if f"group:{group}" in self._running:
            job = self._running[f"group:{group}"]
            raise Conflict(f'group "{group}" is already being swapped (job {job})')
        model = order.model.strip()
        hub = not (parse_fake_spec(model) or is_demo_spec(model) or looks_like_path(model))
        repo, revision = parse_model(model) if hub else (model, "")
        busy = self._running.get(repo) or self._syncing.get(repo)
        if hub and busy is not None:
            raise Conflict(f'model "{repo}" is being fetched by job {busy}; swap when it ends')
        job_id = _new_id()
        work = swap_group(
            self.sync, self.drain_timeout, self._cluster, target, model, repo, revision, hub, job_id
        )
        nodes = [node_name(h) for h in target.spec.hosts]
        self._start("swap", repo, nodes, work, job_id=job_id, group=group)
        return self.job(job_id) or {}

    def start(self) -> None:
        """Scan every node once its sync actor is up, so that the first job already knows
        which nodes hold what (a node that has the model sends it; the hub is not asked)."""
        self._first_scan = asyncio.create_task(self.scan(), name="models-first-scan")

    async def close(self) -> None:
        if getattr(self, "_first_scan", None) is not None:
            self._first_scan.cancel()
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)


def _new_id() -> str:
    return "job-" + secrets.token_hex(5)


def _json(view) -> dict:
    return msgspec.to_builtins(view)
