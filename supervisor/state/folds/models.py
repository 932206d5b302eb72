"""Models: each node's disk as its sync actor last scanned it, and the recent model jobs.

Nothing here is a second source of truth: ``nodes`` holds the last ``ModelsScanned`` of each
node (the registry, ``supervisor.models.registry``, is derived from it and the groups), and
``jobs`` the last ``jobs_kept`` jobs, folded from their events.
"""

from __future__ import annotations

from collections import OrderedDict

import msgspec
from msgspec.structs import replace

from actors.protocol.model_messages import LocalModel
from supervisor.state.events import (
    GroupRemoved,
    ModelJobEnded,
    ModelJobProgress,
    ModelJobStarted,
    ModelsScanned,
    NodeRemoved,
)
from supervisor.state.views import ModelAction, ModelPhase

JOBS_KEPT = 50  # the hostfile's models.jobs_kept default


class NodeProgressView(msgspec.Struct, frozen=True):
    phase: ModelPhase = "queued"
    done: int = 0
    total: int = 0
    rate: float = 0.0
    eta: float | None = None
    path: str = ""
    detail: str = ""


class ModelJobView(msgspec.Struct, frozen=True):
    id: str
    action: ModelAction
    model: str
    nodes: list[str]
    started_at: float
    source: str = ""
    group: str = ""
    state: str = "running"  # "running" | "done" | "failed"
    error: str = ""
    ended_at: float | None = None
    moved_bytes: int = 0
    progress: dict[str, NodeProgressView] = {}


class NodeModels(msgspec.Struct, frozen=True):
    node: str
    models_dir: str
    free_bytes: int
    models: list[LocalModel]
    scanned_at: float


class Models:
    """The model views; ``ClusterState.apply`` hands every event to ``fold``."""

    def __init__(self, jobs_kept: int = JOBS_KEPT) -> None:
        self.jobs: OrderedDict[str, ModelJobView] = OrderedDict()
        self.nodes: dict[str, NodeModels] = {}
        self._jobs_kept = max(1, jobs_kept)

    def fold(self, event) -> None:
        match event:
            case ModelJobStarted(job_id, action, model, nodes, at, source, group):
                progress = {n: NodeProgressView() for n in nodes}
                self.jobs[job_id] = ModelJobView(
                    job_id, action, model, list(nodes), at, source, group, progress=progress
                )
                while len(self.jobs) > self._jobs_kept:
                    self._drop_oldest_ended()
            case ModelJobProgress(job_id, node, phase, done, total, rate, eta, path, detail):
                job = self.jobs.get(job_id)
                if job is not None:
                    view = NodeProgressView(phase, done, total, rate, eta, path, detail)
                    self.jobs[job_id] = replace(job, progress={**job.progress, node: view})
            case ModelJobEnded(job_id, ok, at, error, moved):
                job = self.jobs.get(job_id)
                if job is not None:
                    state = "done" if ok else "failed"
                    self.jobs[job_id] = replace(
                        job, state=state, error=error, ended_at=at, moved_bytes=moved
                    )
            case ModelsScanned(node, models_dir, free_bytes, models, at):
                self.nodes[node] = NodeModels(node, models_dir, free_bytes, list(models), at)
            case NodeRemoved(node):
                self.nodes.pop(node, None)
            case GroupRemoved():
                pass
            case _:
                pass

    def _drop_oldest_ended(self) -> None:
        """Forget the oldest ended job (a running one is kept: someone may follow it)."""
        for job_id, job in self.jobs.items():
            if job.state != "running":
                del self.jobs[job_id]
                return
        self.jobs.popitem(last=False)  # all running: the bound still holds

    def job(self, job_id: str) -> ModelJobView | None:
        return self.jobs.get(job_id)

    def jobs_json(self) -> list[dict]:
        """Newest first."""
        return [msgspec.to_builtins(j) for j in reversed(self.jobs.values())]
