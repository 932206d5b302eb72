"""The model registry, derived from what each node's sync actor found on its disk.

Nothing is stored here: ``model_list`` joins the nodes' last scans (``ModelsScanned``,
folded in ``state.models``) with the groups that serve each model, every time it is asked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from actors.protocol.model_messages import LocalModel
from actors.protocol.model_spec import served_model
from supervisor.state.folds.models import NodeModels
from supervisor.state.views import GroupView


def repo_of(model: str) -> str:
    """``org/name`` of a model spec ``org/name@revision`` (the registry's id)."""
    return model.partition("@")[0]


def serving_groups(repo: str, groups: Iterable[GroupView]) -> list[str]:
    return sorted(g.name for g in groups if repo_of(served_model(g.model)) == repo)


def model_list(
    nodes: list[str],
    scans: Mapping[str, NodeModels],
    groups: Iterable[GroupView],
    reachable: set[str],
) -> dict:
    """``GET /api/cluster/models``'s "models" and "nodes" (docs/models.md has the shape)."""
    groups = list(groups)
    found: dict[str, dict[str, LocalModel]] = {}  # repo -> node -> its best snapshot there
    for node in nodes:
        scan = scans.get(node)
        for model in scan.models if scan else ():
            mine = found.setdefault(model.repo, {})
            best = mine.get(node)
            if best is None or (model.complete, model.modified) > (best.complete, best.modified):
                mine[node] = model
    models = []
    for repo in sorted(found):
        per_node = found[repo]
        newest = max(per_node.values(), key=lambda m: (m.complete, m.modified))
        models.append(
            {
                "id": repo,
                "source": "hub",
                "size": newest.size,
                "quantization": newest.quantization,
                "architecture": newest.architecture,
                "model_type": newest.model_type,
                "context_length": newest.context_length,
                "modified": max(m.modified for m in per_node.values()),
                "nodes": {
                    node: {
                        "present": True,
                        "complete": m.complete,
                        "path": m.path,
                        "missing": m.missing,
                        "commit": m.commit,
                        "size": m.size,
                    }
                    for node, m in sorted(per_node.items())
                },
                "complete_nodes": sum(m.complete for m in per_node.values()),
                "total_nodes": len(nodes),
                "groups": serving_groups(repo, groups),
            }
        )
    node_info = {
        node: {
            "models_dir": scans[node].models_dir if node in scans else "",
            "free_bytes": scans[node].free_bytes if node in scans else None,
            "scanned_at": scans[node].scanned_at if node in scans else None,
            "reachable": node in reachable,
        }
        for node in nodes
    }
    return {"models": models, "nodes": node_info}


def complete_on(repo: str, revision: str, scan: NodeModels | None) -> LocalModel | None:
    """The complete snapshot of ``repo`` at ``revision`` (a ref or a commit) on a node."""
    for model in scan.models if scan else ():
        if model.repo == repo and model.complete:
            if revision in model.refs or model.commit == revision:
                return model
    return None
