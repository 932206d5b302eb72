"""The models part of the state: jobs folded from their events (bounded), each node's last
scan, and the registry derived from them."""

from __future__ import annotations

import asyncio

import pytest

from actors.protocol.model_messages import LocalModel, ModelFile, SyncManifest, SyncNeeds
from supervisor.models.asks import JobFailed
from supervisor.models.registry import complete_on, model_list
from supervisor.models.sync_job import estimate_preflight, preflight
from supervisor.state import ClusterState
from supervisor.state.events import (
    GroupDeclared,
    ModelJobEnded,
    ModelJobProgress,
    ModelJobStarted,
    ModelsScanned,
    NodeDeclared,
    NodeRemoved,
)


def local(repo="org/m", commit="c1", complete=True, size=100, refs=("main",), modified=1.0):
    return LocalModel(
        repo, commit, f"/x/{commit}", size, 3, complete, refs=list(refs), modified=modified,
        quantization="4bit", architecture="LlamaForCausalLM",
    )  # fmt: skip


def test_a_job_folds_from_start_to_end_with_per_node_progress():
    state = ClusterState()
    state.apply(ModelJobStarted("j", "download", "org/m", ["a", "b"], 10.0, source="a"))
    assert state.models.job("j").state == "running"
    assert state.models.job("j").progress["b"].phase == "queued"
    state.apply(ModelJobProgress("j", "b", "transfer", 50, 100, 25.0, 2.0, "sftp"))
    state.apply(ModelJobEnded("j", False, 12.0, "node b: disk full", 50))
    job = state.models.job("j")
    assert (job.state, job.error, job.moved_bytes, job.ended_at) == (
        "failed",
        "node b: disk full",
        50,
        12.0,
    )
    assert job.progress["b"].done == 50 and job.progress["b"].path == "sftp"
    assert state.snapshot()["model_jobs"][0]["id"] == "j"


def test_jobs_are_bounded_and_ended_ones_go_first():
    state = ClusterState(model_jobs=2)
    state.apply(ModelJobStarted("running", "download", "m", ["a"], 1.0))
    state.apply(ModelJobStarted("old", "download", "m", ["a"], 2.0))
    state.apply(ModelJobEnded("old", True, 3.0))
    state.apply(ModelJobStarted("new", "download", "m", ["a"], 4.0))
    assert list(state.models.jobs) == ["running", "new"]
    assert [j["id"] for j in state.models.jobs_json()] == ["new", "running"]


def test_a_scan_is_kept_per_node_and_forgotten_with_the_node():
    state = ClusterState()
    state.apply(NodeDeclared("a", "localhost", True))
    state.apply(ModelsScanned("a", "/cache", 5000, [local()], 1.0))
    assert state.models.nodes["a"].free_bytes == 5000
    state.apply(NodeRemoved("a"))
    assert "a" not in state.models.nodes


def test_the_registry_joins_nodes_and_serving_groups():
    state = ClusterState()
    state.apply(GroupDeclared("g", "org/m", ["a"], "tensor", "ring"))
    state.apply(ModelsScanned("a", "/ca", 5000, [local()], 1.0))
    state.apply(ModelsScanned("b", "/cb", 6000, [local(complete=False, size=40)], 2.0))
    listing = model_list(["a", "b", "c"], state.models.nodes, state.groups.values(), {"a", "b"})
    (m,) = listing["models"]
    assert m["id"] == "org/m" and m["groups"] == ["g"]
    assert (m["complete_nodes"], m["total_nodes"]) == (1, 3)
    assert m["nodes"]["b"]["complete"] is False and "c" not in m["nodes"]
    assert m["quantization"] == "4bit" and m["size"] == 100
    assert listing["nodes"]["c"] == {
        "models_dir": "", "free_bytes": None, "scanned_at": None, "reachable": False
    }  # fmt: skip
    assert complete_on("org/m", "main", state.models.nodes["a"]) is not None
    assert complete_on("org/m", "c1", state.models.nodes["a"]) is not None
    assert complete_on("org/m", "main", state.models.nodes["b"]) is None


def test_preflight_names_the_node_and_the_bytes():
    listing = SyncManifest("r", "org/m", "c1", [ModelFile("w.safetensors", 900)])
    state = ClusterState()
    state.apply(ModelsScanned("a", "/ca", 1000, [], 1.0))
    state.apply(ModelsScanned("b", "/cb", 500, [local(commit="c1", size=600)], 1.0))
    estimate_preflight(listing, state.models.nodes)  # b lacks 300 of 900, has 500 free
    state.apply(ModelsScanned("b", "/cb", 200, [local(commit="c1", size=600)], 1.0))
    with pytest.raises(JobFailed, match=r"^node b: needs 300 bytes for org/m, 200 free in /cb$"):
        estimate_preflight(listing, state.models.nodes)
    needs = {"c": SyncNeeds("r", "/cc", 10, [ModelFile("w.safetensors", 900)])}
    with pytest.raises(JobFailed, match=r"^node c: needs 900 bytes"):
        preflight(needs)


def test_following_a_job_yields_each_change_until_it_ends():
    from supervisor.models.manager import ModelManager

    async def run():
        state = ClusterState()
        manager = ModelManager.__new__(ModelManager)
        manager.state = state
        state.apply(ModelJobStarted("j", "download", "org/m", ["a"], 1.0))
        seen = []

        async def follow():
            async for view in manager.follow("j"):
                seen.append(view["progress"]["a"]["phase"])

        task = asyncio.create_task(follow())
        await asyncio.sleep(0)
        state.apply(ModelJobProgress("j", "a", "download", 1, 2))
        await asyncio.sleep(0)
        state.apply(ModelJobEnded("j", True, 2.0))
        await asyncio.wait_for(task, 5)
        return seen

    seen = asyncio.run(run())
    assert seen[0] == "queued" and seen[-1] in ("download",) and len(seen) >= 2
