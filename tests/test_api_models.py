"""/api/cluster/models..., a group's model swap and Ollama's /api/pull, /api/delete, /api/tags
over uvicorn in process, against an in-memory ModelAdmin; spoken to with httpx and the real
ollama client. The manager behind the contract is tested end to end elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx
import ollama
import pytest

from api.edge.guards import Keys
from api.edge.heartbeat import with_heartbeat
from api.models.ollama import hub_name
from api.models.routes import follow_lines
from api.ollama.protocol import ModelRequest
from supervisor.serving.contract import (
    BadRequest,
    Conflict,
    GroupModel,
    ModelDownload,
    NotFound,
)
from tests.test_api_http import ScriptedService, serving

ADMIN = {"Authorization": "Bearer admin-key"}
USER = {"Authorization": "Bearer user-key"}
DEMO = "mlx-community/Demo-4bit"
TOTAL = 3000
NODES = ["alice@mac1", "mac2"]
SERVED = "mlx-community/Qwen2.5-0.5B"  # ScriptedService serves it
MODIFIED = 1_700_000_500.0


def disk_model(model: str, complete: int = 2) -> dict:
    path = f"/Users/alice/models/models--{model.replace('/', '--')}"
    nodes = {
        n: {"present": True, "complete": i < complete, "path": path, "commit": "c0ffee",
            "missing": [] if i < complete else ["model.safetensors"]}
        for i, n in enumerate(NODES)
    }  # fmt: skip
    return {
        "id": model, "source": "hub", "size": TOTAL, "quantization": "4bit",
        "architecture": "qwen2", "nodes": nodes, "complete_nodes": complete,
        "total_nodes": len(NODES), "groups": ["g"] if model == SERVED else [],
        "modified": MODIFIED,
    }  # fmt: skip


def script(model: str) -> list[tuple[str, str, int] | str]:
    """A job's steps, (node, phase, bytes done) then "done", or an error message."""
    steps = [("alice@mac1", "download", 1000), ("alice@mac1", "download", TOTAL)]
    if model == "org/huge":
        return [*steps, "node mac2: needs 5000000 bytes for org/huge, 10 free in /Users/alice/m"]
    more = [("alice@mac1", "hash", TOTAL), ("mac2", "transfer", 1500), ("mac2", "transfer", TOTAL)]
    return [*steps, *more, "done"]


class FakeAdmin:
    """In-memory ModelAdmin. A job advances one step each time a follower takes a view, so a
    stream's course is fixed without any clock."""

    def __init__(self) -> None:
        self.disk = {m: disk_model(m) for m in (DEMO, SERVED)}
        self.disk["org/partial"] = disk_model("org/partial", complete=0)
        self.jobs: dict[str, dict] = {}
        self.steps: dict[str, list] = {}
        self.orders: list[ModelDownload] = []
        self.deleted: list[tuple[str, str | None]] = []

    async def models(self) -> dict:
        nodes = {n: {"models_dir": "/Users/alice/models", "free_bytes": 10**9} for n in NODES}
        jobs = list(reversed(self.jobs.values()))
        return {"models": list(self.disk.values()), "nodes": nodes, "jobs": jobs}

    def _start(self, action: str, model: str, group: str = "") -> dict:
        job_id = f"job-{len(self.jobs) + 1}"
        progress = {n: {"phase": "queued", "done": 0, "total": 0, "rate": 0.0, "eta": None,
                        "path": "", "detail": ""} for n in NODES}  # fmt: skip
        self.jobs[job_id] = {
            "id": job_id, "action": action, "model": model, "nodes": list(NODES),
            "started_at": time.time(), "source": "alice@mac1", "group": group,
            "state": "running", "error": "", "ended_at": None, "moved_bytes": 0,
            "progress": progress,
        }  # fmt: skip
        self.steps[job_id] = script(model)
        return self.jobs[job_id]

    def download(self, order: ModelDownload) -> dict:
        if order.model == "org/missing":
            raise NotFound(f"model: {order.model} is not on the hub", param="model")
        if any(n not in NODES for n in order.nodes or ()):
            raise NotFound(f"nodes: no node named {order.nodes[-1]!r}", param="nodes")
        self.orders.append(order)
        return self._start("download", order.model, order.group or "")

    def job(self, job_id: str) -> dict | None:
        return self.jobs.get(job_id)

    async def follow(self, job_id: str):
        while True:
            view = self.jobs[job_id]
            yield view
            if view["state"] != "running":
                return
            self._step(job_id)

    def _step(self, job_id: str) -> None:
        view, step = self.jobs[job_id], self.steps[job_id].pop(0)
        if isinstance(step, tuple):
            node, phase, done = step
            row = {**view["progress"][node], "phase": phase, "done": done, "total": TOTAL}
            view["progress"] = {**view["progress"], node: row}
        else:
            view["state"] = "done" if step == "done" else "failed"
            view["error"] = "" if step == "done" else step
            view["ended_at"] = time.time()
        self.jobs[job_id] = dict(view)

    async def delete(self, model: str, node: str | None) -> dict:
        if model not in self.disk or (node is not None and node not in NODES):
            raise NotFound(f"model {model!r} is on no node", param="model")
        if self.disk[model]["groups"]:
            raise Conflict(f"{model} is served by group g; swap or stop the group first")
        self.deleted.append((model, node))
        return {"model": model, "nodes": [node] if node else NODES, "freed_bytes": TOTAL}

    def swap(self, group: str, order: GroupModel) -> dict:
        if group != "g":
            raise NotFound(f"no group named {group!r}", param="name")
        if order.model == "org/huge":
            raise Conflict("org/huge needs 90 GB; group g's nodes have 64 GB")
        return self._start("swap", order.model, group)


@contextlib.asynccontextmanager
async def api(admin: FakeAdmin | None = None, **options):
    keys = Keys(admin="admin-key", api="user-key")
    async with serving(ScriptedService(), keys=keys, model_admin=admin, **options) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            yield client


def error_line(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    message = body if isinstance(body, str) else body["message"]
    assert message and "\n" not in message
    return message


async def test_model_list_is_read_with_the_inference_key_and_redacted_without_admin():
    async with api(FakeAdmin()) as client:
        error_line(await client.get("/api/cluster/models"), 401)
        shown = (await client.get("/api/cluster/models", headers=USER)).json()
        full = (await client.get("/api/cluster/models", headers=ADMIN)).json()
    assert [m["id"] for m in full["models"]] == [DEMO, SERVED, "org/partial"]
    assert full["models"][0]["nodes"]["alice@mac1"]["path"].startswith("/Users/alice/")
    assert "alice" not in json.dumps(shown) and "<path>" in json.dumps(shown)
    assert shown["models"][0]["quantization"] == "4bit"


async def test_download_needs_the_admin_key_and_a_json_body():
    admin = FakeAdmin()
    async with api(admin) as client:
        body = {"model": DEMO}
        error_line(await client.post("/api/cluster/models", json=body), 401)
        error_line(await client.post("/api/cluster/models", json=body, headers=USER), 403)
        text = await client.post("/api/cluster/models", content=json.dumps(body), headers=ADMIN)
        assert "application/json" in error_line(text, 415)
        missing = await client.post("/api/cluster/models", json={}, headers=ADMIN)
        assert error_line(missing, 400) == "model: required field is missing"
        extra = await client.post("/api/cluster/models", json={**body, "x": 1}, headers=ADMIN)
        assert "x" in error_line(extra, 400)
        nowhere = {**body, "nodes": ["mac9"]}
        bad_node = await client.post("/api/cluster/models", json=nowhere, headers=ADMIN)
        assert error_line(bad_node, 404) == "nodes: no node named 'mac9'"
    assert admin.orders == []


async def test_a_download_job_is_started_read_and_followed_to_its_end():
    admin = FakeAdmin()
    async with api(admin) as client:
        order = {"model": DEMO + "@main", "nodes": ["mac2"], "group": "g"}
        started = await client.post("/api/cluster/models", json=order, headers=ADMIN)
        assert started.status_code == 202, started.text
        job = started.json()
        assert (job["state"], job["model"], job["action"]) == (
            "running",
            DEMO + "@main",
            "download",
        )
        assert admin.orders == [ModelDownload(DEMO + "@main", ["mac2"], "g")]
        again = await client.get(f"/api/cluster/models/jobs/{job['id']}", headers=USER)
        assert again.json()["id"] == job["id"]
        error_line(await client.get("/api/cluster/models/jobs/nope", headers=USER), 404)
        error_line(await client.get("/api/cluster/models/jobs/nope/follow", headers=USER), 404)
        url = f"/api/cluster/models/jobs/{job['id']}/follow"
        async with client.stream("GET", url, headers=ADMIN) as r:
            assert r.headers["content-type"] == "application/x-ndjson"
            views = [json.loads(line) async for line in r.aiter_lines() if line]
        listed = (await client.get("/api/cluster/models", headers=ADMIN)).json()
    assert [v["state"] for v in views] == ["running"] * 6 + ["done"]
    mac2 = [v["progress"]["mac2"]["done"] for v in views]
    assert mac2 == sorted(mac2) and mac2[-1] == TOTAL
    assert views[1]["progress"]["alice@mac1"] == {**views[1]["progress"]["alice@mac1"],
                                                  "phase": "download", "done": 1000}  # fmt: skip
    assert listed["jobs"][0]["state"] == "done"


async def test_delete_a_model_from_a_node_or_everywhere_and_refusals():
    admin = FakeAdmin()
    async with api(admin) as client:
        path = f"/api/cluster/models/{DEMO}"
        error_line(await client.delete(path), 401)
        error_line(await client.delete(path, headers=USER), 403)
        one = await client.delete(path, params={"node": "mac2"}, headers=ADMIN)
        assert one.status_code == 200 and one.json()["nodes"] == ["mac2"]
        assert (await client.delete(path, headers=ADMIN)).json()["freed_bytes"] == TOTAL
        served = await client.delete(f"/api/cluster/models/{SERVED}", headers=ADMIN)
        assert error_line(served, 409).endswith("swap or stop the group first")
        error_line(await client.delete("/api/cluster/models/org/none", headers=ADMIN), 404)
    assert admin.deleted == [(DEMO, "mac2"), (DEMO, None)]


async def test_swap_a_groups_model_is_an_admin_job():
    admin = FakeAdmin()
    async with api(admin) as client:
        body = {"model": DEMO}
        error_line(await client.post("/api/cluster/groups/g/model", json=body, headers=USER), 403)
        swap = await client.post("/api/cluster/groups/g/model", json=body, headers=ADMIN)
        assert swap.status_code == 202 and swap.json()["action"] == "swap"
        assert swap.json()["group"] == "g"
        nowhere = await client.post("/api/cluster/groups/h/model", json=body, headers=ADMIN)
        assert error_line(nowhere, 404) == "no group named 'h'"
        huge = {"model": "org/huge"}
        too_big = await client.post("/api/cluster/groups/g/model", json=huge, headers=ADMIN)
        assert "64 GB" in error_line(too_big, 409)
        empty = await client.post("/api/cluster/groups/g/model", json={"model": ""}, headers=ADMIN)
        assert error_line(empty, 400).startswith("model:")


async def test_ollama_client_pulls_with_progress_to_success_and_deletes():
    admin = FakeAdmin()
    async with api(admin) as http:
        client = ollama.AsyncClient(host=str(http.base_url), headers=ADMIN)
        parts = [p async for p in await client.pull(DEMO + ":latest", stream=True)]
        whole = await client.pull("hf.co/" + DEMO, stream=False)
        deleted = await client.delete(DEMO)
        with pytest.raises(ollama.ResponseError) as gone:
            await client.delete("org/none")
        with pytest.raises(ollama.ResponseError) as served:
            await client.delete(SERVED)
    statuses = [p.status for p in parts]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    pulled = [(p.status, p.completed, p.total) for p in parts if p.digest]
    assert pulled == [
        (f"pulling {DEMO}", 1000, TOTAL),
        (f"pulling {DEMO}", TOTAL, TOTAL),
        ("syncing to mac2", 1500, TOTAL),
        ("syncing to mac2", TOTAL, TOTAL),
    ]
    assert len({p.digest for p in parts if p.digest}) == 2
    assert all(p.digest.startswith("sha256:") for p in parts if p.digest)
    assert whole.status == "success" and whole.completed is None
    assert [o.model for o in admin.orders] == [DEMO, DEMO]
    assert deleted.status == "success" and admin.deleted == [(DEMO, None)]
    assert gone.value.status_code == 404 and "org/none" in gone.value.error
    assert served.value.status_code == 409


async def test_a_failed_pull_ends_with_ollamas_error():
    async with api(FakeAdmin()) as http:
        client = ollama.AsyncClient(host=str(http.base_url), headers=ADMIN)
        with pytest.raises(ollama.ResponseError) as streamed:
            _ = [p async for p in await client.pull("org/huge", stream=True)]
        with pytest.raises(ollama.ResponseError) as whole:
            await client.pull("org/huge")
        with pytest.raises(ollama.ResponseError) as unknown:
            await client.pull("org/missing")
        raw = await http.post("/api/pull", json={"name": "org/huge"}, headers=ADMIN)
    assert streamed.value.error.startswith("node mac2: needs 5000000 bytes for org/huge")
    assert whole.value.status_code == 502 and whole.value.error == streamed.value.error
    assert unknown.value.status_code == 404 and unknown.value.error.endswith("not on the hub")
    lines = [json.loads(line) for line in raw.text.splitlines()]
    assert lines[0] == {"status": "pulling manifest"} and set(lines[-1]) == {"error"}


async def test_pull_is_admin_unless_the_hostfile_lets_the_inference_key_pull():
    async with api(FakeAdmin()) as http:
        for headers, status in [({}, 401), (USER, 403)]:
            r = await http.post("/api/pull", json={"model": DEMO}, headers=headers)
            assert set(r.json()) == {"error"} and r.status_code == status
        r = await http.request("DELETE", "/api/delete", json={"model": DEMO}, headers=USER)
        assert r.status_code == 403 and set(r.json()) == {"error"}
    async with api(FakeAdmin(), pull_with_inference_key=True) as http:
        client = ollama.AsyncClient(host=str(http.base_url), headers=USER)
        assert (await client.pull(DEMO)).status == "success"
        with pytest.raises(ollama.ResponseError) as info:
            await client.delete(DEMO)
        assert info.value.status_code == 403
        r = await http.post("/api/pull", json={"model": DEMO})
        assert r.status_code == 401 and set(r.json()) == {"error"}


async def test_tags_list_served_and_downloaded_models_once():
    async with api(FakeAdmin()) as http:
        client = ollama.AsyncClient(host=str(http.base_url), headers=USER)
        listed = (await client.list()).models
    by_name = {m.model: m for m in listed}
    assert [m.model for m in listed] == ["demo:tiny", SERVED, DEMO]  # partial ones are not
    assert by_name[SERVED].size == TOTAL and by_name["demo:tiny"].size == 0
    assert by_name[DEMO].modified_at.timestamp() == MODIFIED
    assert by_name[DEMO].details.quantization_level == "4bit"
    assert by_name[DEMO].details.family == "qwen2"


async def test_without_a_model_admin_the_routes_are_absent_and_pull_is_refused():
    async with api(None) as http:
        assert (await http.get("/api/cluster/models", headers=ADMIN)).status_code == 404
        post = await http.post("/api/cluster/models", json={"model": DEMO}, headers=ADMIN)
        assert post.status_code in (404, 405)
        pull = await http.post("/api/pull", json={"model": DEMO}, headers=ADMIN)
        assert pull.status_code == 400 and pull.json()["error"].startswith("pulling models")
        tags = (await http.get("/api/tags", headers=USER)).json()["models"]
    assert [t["name"] for t in tags] == ["demo:tiny", SERVED]


@pytest.mark.parametrize(
    "name", [DEMO, DEMO + ":latest", "hf.co/" + DEMO, "https://huggingface.co/" + DEMO]
)
def test_ollama_names_become_hub_repo_ids(name):
    assert hub_name(ModelRequest(model=name)) == hub_name(ModelRequest(name=name)) == DEMO
    assert hub_name(ModelRequest(model=DEMO + "@refs/pr/1")) == DEMO + "@refs/pr/1"


@pytest.mark.parametrize(
    "name", ["", "llama3", "llama3:8b", "org/name:q4", "a/b/c", "/x", "x" * 300]
)
def test_names_that_are_no_hub_repo_id_are_one_line_400s(name):
    with pytest.raises(BadRequest) as info:
        hub_name(ModelRequest(model=name))
    assert info.value.param == "model" and info.value.message.startswith("model:")
    assert "\n" not in info.value.message


async def test_a_quiet_follow_repeats_its_last_line_and_closes_its_source():
    release, closed = asyncio.Event(), asyncio.Event()

    async def views():
        try:
            yield {"id": "j", "state": "running", "path": "/Users/alice/x"}
            await release.wait()
            yield {"id": "j", "state": "done", "path": ""}
        finally:
            closed.set()

    lines = follow_lines(views(), lambda v: {**v, "path": "<p>"}, heartbeat=0.01)
    first = await anext(lines)
    assert json.loads(first) == {"id": "j", "state": "running", "path": "<p>"}
    assert await anext(lines) == first  # nothing new within a heartbeat: the same line
    release.set()
    rest = [line async for line in lines]
    assert json.loads(rest[-1])["state"] == "done" and set(rest[:-1]) <= {first}
    assert closed.is_set()


async def test_a_stopped_consumer_cancels_the_wait_and_closes_the_source():
    closed = asyncio.Event()

    async def never():
        try:
            yield 1
            await asyncio.Event().wait()
        finally:
            closed.set()

    beats = with_heartbeat(never(), heartbeat=0.01)
    assert [await anext(beats), await anext(beats)] == [1, None]
    await beats.aclose()
    await asyncio.wait_for(closed.wait(), 5)


async def test_the_routes_are_in_the_openapi_document():
    async with api(FakeAdmin()) as http:
        document = (await http.get("/schema/openapi.json")).json()
    paths = document["paths"]
    assert {"get", "post"} <= set(paths["/api/cluster/models"])
    assert "delete" in paths["/api/cluster/models/{model}"]
    assert "application/x-ndjson" in str(paths["/api/cluster/models/jobs/{job_id}/follow"])
    assert "post" in paths["/api/cluster/groups/{name}/model"]
    assert "502" in paths["/api/pull"]["post"]["responses"] and "delete" in paths["/api/delete"]
