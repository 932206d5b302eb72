"""Swapping a group's model while the cluster serves: sync, check it fits, drain, restart.

The other groups are not touched: the swapped group stops taking new requests (its
in-flight ones finish, up to the drain timeout; a replica of the old model takes the
rest), then its ranks are stopped and started again on the new model.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from msgspec.structs import replace

from actors.protocol.model_messages import SyncManifest
from supervisor.cluster.cluster import Cluster, GenerationGroup, node_name
from supervisor.models.asks import JobFailed
from supervisor.state.events import ModelJobProgress

# The manager's sync: (repo, revision, nodes, job id, fits) -> bytes moved.
Sync = Callable[..., Awaitable[int]]

LOAD_TIMEOUT = 900.0  # s for the new model's ranks to be ready (the supervisor's load timeout)


def weights_bytes(manifest: SyncManifest) -> int:
    return sum(f.size for f in manifest.files if f.path.endswith(".safetensors"))


def fit_check(cluster: Cluster, group: GenerationGroup, repo: str):
    """A ``fits(manifest)`` that refuses the model when a rank's share of its weights does not
    fit its node: the memory available now, plus what the group's own rank holds (it is
    about to unload), less the hostfile's ``memory_margin_bytes``."""
    state = cluster.state
    margin = cluster.spec.memory_margin_bytes
    ranks = max(1, group.spec.world_size)

    def fits(manifest: SyncManifest) -> None:
        share = weights_bytes(manifest) // ranks
        for rank, host in enumerate(group.spec.hosts):
            node = node_name(host)
            memory = state.actors.get(f"{node}.memory")
            if memory is None or not memory.vitals.mem_total:
                continue  # no figure yet: the rank's own fit check refuses at load
            own = state.actors.get(f"{group.name}.rank{rank}")
            budget = memory.vitals.mem_available + (own.vitals.model_bytes if own else 0) - margin
            if share > budget:
                raise JobFailed(
                    f"node {node}: {repo} needs {share} bytes of weights per rank, "
                    f"{max(budget, 0)} fit there (memory available + this group's model - "
                    f"memory_margin_bytes {margin}); nothing was stopped"
                )

    return fits


async def swap_group(
    sync: Sync,
    drain_timeout: float,
    cluster: Cluster,
    group: GenerationGroup,
    model: str,
    repo: str,
    revision: str,
    hub: bool,
    job_id: str,
) -> int:
    """The swap job's work; the bytes moved to sync the model."""
    state = cluster.state
    nodes = [node_name(h) for h in group.spec.hosts]
    moved = 0
    if hub:
        moved = await sync(repo, revision, nodes, job_id, fits=fit_check(cluster, group, repo))
    for node in nodes:
        state.apply(ModelJobProgress(job_id, node, "drain", detail=f"group {group.name}"))
    cluster.leave([group])
    await cluster.wait_idle([group.name], drain_timeout)
    await cluster.remove_group(group)
    served = (repo if revision == "main" else f"{repo}@{revision}") if hub else model
    cluster.add_group(replace(group.spec, model=served, inherits_model=False))
    for node in nodes:
        state.apply(ModelJobProgress(job_id, node, "load", detail=f"group {group.name}: {served}"))

    def settled() -> bool:
        view = state.groups.get(group.name)
        return view is not None and view.state in ("ready", "failed")

    await state.wait_for(settled, LOAD_TIMEOUT)
    view = state.groups.get(group.name)
    if view is None or view.state != "ready":
        reason = (view.reason if view is not None else "") or "not ready in time"
        raise JobFailed(f'group "{group.name}" did not start on {served}: {reason}')
    for node in nodes:
        state.apply(ModelJobProgress(job_id, node, "done", detail=f"group {group.name}: {served}"))
    return moved
