"""Models end to end: download once from a hub, sync to every node, list, delete, swap.

A real supervisor with three nodes: n1 is this machine, n2 and n3 are reached over a real
sshd on loopback; each node has its own models_dir. The hub is tests/fake_hub.py, which the
real huggingface_hub client in n1's sync actor downloads from. Groups serve fake models
(no MLX) except where a swap loads the downloaded demo model for real.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

import httpx
import ollama
import pytest

from tests.clients import chat, client_for
from tests.conftest import ROOT, RunningSupervisor, run_cli, wait_for
from tests.fake_hub import DEMO_REPO, FakeHub, fake_hub_fixture  # noqa: F401
from tests.sshd import Sshd, sshd_fixture  # noqa: F401

pytestmark = pytest.mark.e2e
FAKE = "fake:m?tokens_per_second=200"


def cluster_hostfile(sshd: Sshd, hub: FakeHub, tmp: Path, *, env3=None, groups=None) -> dict:
    config = sshd.write_ssh_config(tmp / "ssh_config", "mac2 mac3")
    known = sshd.write_known_hosts(tmp / "known_hosts")
    remote = {"python": sys.executable, "workdir": str(ROOT)}
    hosts = [
        {"ssh": "localhost", "name": "n1", "models_dir": str(tmp / "n1")},
        {"ssh": "mac2", "name": "n2", "models_dir": str(tmp / "n2"), **remote},
        {"ssh": "mac3", "name": "n3", "models_dir": str(tmp / "n3"), **remote, "env": env3 or {}},
    ]
    return {
        "hosts": hosts,
        "model": FAKE,
        "groups": groups or [{"name": f"g{i}", "hosts": [i - 1]} for i in (1, 2, 3)],
        "envs": [f"HF_ENDPOINT={hub.url}", "HF_HUB_DISABLE_TELEMETRY=1"],
        "ssh": {"known_hosts": str(known), "config": str(config)},
        "models": {"jobs_running": 1},
    }


def snapshot_files(models_dir: Path, repo: str = DEMO_REPO) -> dict[str, str]:
    """path -> sha256 of every file of the repo's snapshots in a node's cache."""
    root = models_dir / ("models--" + repo.replace("/", "--")) / "snapshots"
    return {
        str(p.relative_to(root).as_posix().split("/", 1)[1]): hashlib.sha256(
            p.read_bytes()
        ).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def models(sup: RunningSupervisor) -> dict:
    return httpx.get(sup.url + "/api/cluster/models", timeout=30).json()


def download(sup: RunningSupervisor, *args: str) -> dict:
    done = run_cli("download", DEMO_REPO, "--url", sup.url, "--json", *args, timeout=300)
    assert done.returncode in (0, 1), done.stderr
    return {"rc": done.returncode, "job": json.loads(done.stdout or "{}"), "stderr": done.stderr}


@pytest.fixture
def cluster(sshd, fake_hub, tmp_path):
    sup = RunningSupervisor(tmp_path, cluster_hostfile(sshd, fake_hub, tmp_path))
    try:
        sup.wait_healthy(timeout=120)
        wait_for(lambda: len(models(sup)["nodes"]) == 3, 60, "three nodes listed")
        yield sup
    finally:
        sup.stop()


def test_download_once_sync_everywhere_then_nothing_moves(cluster, fake_hub, tmp_path):
    first = download(cluster)
    assert first["rc"] == 0, first
    job = first["job"]
    assert job["state"] == "done" and job["source"] == "n1"
    # The hub served each file once: to the source; the others got n1's copy.
    n1 = snapshot_files(tmp_path / "n1")
    fetched = {p: fake_hub.fetch_count(DEMO_REPO, p) for p in fake_hub.repos[DEMO_REPO].files}
    assert {p: n for p, n in fetched.items() if n} == {p: 1 for p in n1}
    assert n1 and n1 == snapshot_files(tmp_path / "n2") == snapshot_files(tmp_path / "n3")
    assert {job["progress"][n]["path"] for n in ("n2", "n3")} == {"sftp"}

    listed = models(cluster)["models"]
    (demo,) = [m for m in listed if m["id"] == DEMO_REPO]
    assert demo["complete_nodes"] == 3 and demo["total_nodes"] == 3
    assert demo["size"] > 0 and demo["architecture"]

    second = download(cluster)
    assert second["rc"] == 0 and second["job"]["moved_bytes"] == 0, second
    assert fake_hub.body_fetches() == len(n1)

    # A weight file corrupted on n3 is found and sent again.
    root = tmp_path / "n3" / ("models--" + DEMO_REPO.replace("/", "--")) / "blobs"
    blob = max(root.iterdir(), key=lambda p: p.stat().st_size)
    blob.write_bytes(b"\0" * blob.stat().st_size)
    third = download(cluster)
    assert third["rc"] == 0, third
    assert third["job"]["moved_bytes"] == blob.stat().st_size
    assert snapshot_files(tmp_path / "n3") == n1


def test_a_node_without_the_disk_is_refused_before_anything_moves(sshd, fake_hub, tmp_path):
    hostfile = cluster_hostfile(sshd, fake_hub, tmp_path, env3={"MLXS_FAKE_FREE_BYTES": "1000"})
    sup = RunningSupervisor(tmp_path, hostfile)
    try:
        sup.wait_healthy(timeout=120)
        refused = download(sup)
        assert refused["rc"] == 1
        line = refused["stderr"].strip().splitlines()[-1]
        assert "node n3" in line and "1000 free" in line, refused
        assert fake_hub.body_fetches() == 0  # refused before the source downloaded a byte
        assert not (tmp_path / "n2" / ("models--" + DEMO_REPO.replace("/", "--"))).exists()
        absent = run_cli("download", "fake-org/nope", "--url", sup.url, timeout=120)
        assert absent.returncode == 1
        line = absent.stderr.strip().splitlines()[-1]
        assert "node n1:" in line and "no such repository" in line, absent.stderr
    finally:
        sup.stop()


def test_a_cut_connection_still_ends_complete(cluster, fake_hub, tmp_path):
    weights = next(p for p in fake_hub.repos[DEMO_REPO].files if p.endswith(".safetensors"))
    fake_hub.cut_after(DEMO_REPO, weights, 4096)
    done = download(cluster, "--nodes", "n1,n2")
    assert done["rc"] == 0, done
    assert snapshot_files(tmp_path / "n1") == snapshot_files(tmp_path / "n2")
    assert not (tmp_path / "n3" / ("models--" + DEMO_REPO.replace("/", "--"))).exists()


def test_ollama_pull_shows_progress_and_ends_in_success(cluster, tmp_path):
    client = ollama.Client(host=cluster.url, headers=_admin_headers(cluster))
    lines = list(client.pull(DEMO_REPO, stream=True))
    assert lines[-1].status == "success"
    assert any(line.total and line.completed for line in lines)
    tags = client.list().models
    (demo,) = [m for m in tags if m.model == DEMO_REPO]
    assert demo.size > 0
    client.delete(DEMO_REPO)
    assert DEMO_REPO not in {m["id"] for m in models(cluster)["models"]}


def test_swap_a_group_while_a_replica_of_the_other_model_serves(sshd, fake_hub, tmp_path):
    groups = [{"name": "a", "hosts": [0]}, {"name": "b", "hosts": [1]}, {"name": "c", "hosts": [2]}]
    sup = RunningSupervisor(tmp_path, cluster_hostfile(sshd, fake_hub, tmp_path, groups=groups))
    try:
        sup.wait_healthy(timeout=120)
        client = client_for(sup)
        refused = run_cli("rm-model", DEMO_REPO, "--url", sup.url)
        assert refused.returncode == 2, refused  # a model on no node: nothing to delete
        assert refused.stderr.strip().endswith('model "fake-org/demo-tiny" is on no node')
        # Requests to the old model go on the whole time; the replicas b and c serve them.
        done = threading.Event()
        outcomes: list[str] = []

        def traffic() -> None:
            while not done.is_set():
                try:
                    chat(client, "still there?", model="fake:m", max_tokens=4)
                    outcomes.append("ok")
                except Exception as exc:  # counted: the assertion below names it
                    outcomes.append(f"{type(exc).__name__}: {exc}")

        sender = threading.Thread(target=traffic, daemon=True)
        sender.start()
        try:
            swap = run_cli("swap", "a", DEMO_REPO, "--url", sup.url, "--json", timeout=600)
        finally:
            done.set()
            sender.join(60)
        assert swap.returncode == 0, swap.stderr + swap.stdout
        assert json.loads(swap.stdout)["progress"]["n1"]["phase"] == "done"
        assert outcomes and set(outcomes) == {"ok"}, [o for o in outcomes if o != "ok"][:3]
        served = {m.id for m in client.models.list().data}
        assert served == {"fake:m", DEMO_REPO}
        tags = {m.model for m in ollama.Client(host=sup.url).list().models}
        assert DEMO_REPO in tags
        reply = client.chat.completions.create(
            model=DEMO_REPO, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert reply.choices[0].message.content is not None
        in_use = run_cli("rm-model", DEMO_REPO, "--node", "n1", "--url", sup.url)
        assert in_use.returncode == 1 and 'served by group "a"' in in_use.stderr
        assert not (tmp_path / "n2" / ("models--" + DEMO_REPO.replace("/", "--"))).exists()
        fetched = fake_hub.body_fetches()
        to_n2 = download(sup, "--nodes", "n2")  # the swap synced to a's node only
        assert to_n2["rc"] == 0 and to_n2["job"]["source"] == "n1", to_n2
        assert fake_hub.body_fetches() == fetched  # sent from n1's copy, not the hub
        gone = run_cli("rm-model", DEMO_REPO, "--node", "n2", "--url", sup.url)
        assert gone.returncode == 0, gone.stderr  # n2 holds a copy no group there serves
        assert not (tmp_path / "n2" / ("models--" + DEMO_REPO.replace("/", "--"))).exists()
    finally:
        sup.stop()


def test_a_swap_to_a_model_that_cannot_fit_is_refused_before_anything_stops(
    sshd, fake_hub, tmp_path
):
    hostfile = cluster_hostfile(sshd, fake_hub, tmp_path)
    sup = RunningSupervisor(tmp_path, {**hostfile, "memory_margin_bytes": 10**15})
    try:
        sup.wait_healthy(timeout=120)
        wait_for(lambda: sup.actor("memory")["vitals"]["mem_total"] > 0, 30, "memory figures")
        swap = run_cli("swap", "g1", DEMO_REPO, "--url", sup.url, "--json", timeout=300)
        assert swap.returncode == 1
        line = swap.stderr.strip().splitlines()[-1]
        assert "node n1:" in line and "nothing was stopped" in line, line
        (g1,) = [g for g in sup.status()["groups"] if g["name"] == "g1"]
        assert g1["state"] == "ready" and g1["restarts"] == 0 and g1["model"] == "fake:m"
        assert fake_hub.body_fetches() == 0  # refused from the hub's listing, before a download
    finally:
        sup.stop()


def _admin_headers(sup: RunningSupervisor) -> dict:
    import os

    from supervisor.cli.credentials import find_admin_key  # the key file `start` wrote

    return {"Authorization": f"Bearer {find_admin_key(sup.url, None, os.environ)}"}


def test_a_killed_sync_actor_fails_its_job_is_restarted_and_the_job_resumes(cluster, fake_hub):
    weights = next(p for p in fake_hub.repos[DEMO_REPO].files if p.endswith(".safetensors"))
    release = fake_hub.hold(DEMO_REPO, weights)
    try:
        started = httpx.post(
            cluster.url + "/api/cluster/models",
            json={"model": DEMO_REPO},
            headers=_admin_headers(cluster),
            timeout=10,
        )
        assert started.status_code == 202, started.text
        job_url = f"{cluster.url}/api/cluster/models/jobs/{started.json()['id']}"
        wait_for(fake_hub.held.is_set, 60, "the source's download to be in flight")
        # While it runs, asking again follows the same job, and deleting the model is refused.
        again = httpx.post(
            cluster.url + "/api/cluster/models",
            json={"model": DEMO_REPO},
            headers=_admin_headers(cluster),
            timeout=10,
        )
        assert again.json()["id"] == started.json()["id"]
        busy = run_cli("rm-model", DEMO_REPO, "--url", cluster.url)
        assert busy.returncode == 1 and "is being fetched by job" in busy.stderr, busy.stderr
        other = httpx.post(  # models.jobs_running is 1 here: a second model waits its turn
            cluster.url + "/api/cluster/models",
            json={"model": "fake-org/other"},
            headers=_admin_headers(cluster),
            timeout=10,
        )
        assert other.status_code == 429 and "models.jobs_running" in other.text, other.text
        before = sync_actor(cluster, "n1")
        os.kill(before["pid"], signal.SIGKILL)
        wait_for(lambda: httpx.get(job_url).json()["state"] != "running", 30, "the job to end")
        job = httpx.get(job_url).json()
        assert job["state"] == "failed", job
        assert job["error"].startswith("node n1: ") and "lost" in job["error"], job["error"]
        wait_for(
            lambda: (
                sync_actor(cluster, "n1")["restarts"] == 1
                and sync_actor(cluster, "n1")["state"] == "running"
            ),
            60,
            "n1's sync actor to be restarted",
        )
        assert sync_actor(cluster, "n1")["pid"] != before["pid"]
    finally:
        release.set()
    again = download(cluster)  # started again, it resumes and ends complete everywhere
    assert again["rc"] == 0, again
    assert again["job"]["progress"]["n3"]["phase"] == "done"


def sync_actor(sup: RunningSupervisor, node: str) -> dict:
    return next(a for a in sup.status()["actors"] if a["id"] == f"{node}.sync")


def test_the_dashboard_shows_a_download_live_per_node_then_the_model_on_every_node(
    cluster, fake_hub
):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(chromium, os.X_OK):
        pytest.skip(f"{chromium} is missing; install it with: apt-get install chromium")
    weights = next(p for p in fake_hub.repos[DEMO_REPO].files if p.endswith(".safetensors"))
    release = fake_hub.hold(DEMO_REPO, weights)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(cluster.url + "/dashboard")
            sync_api.expect(page.locator("#conn")).to_have_text("live", timeout=10_000)
            started = httpx.post(
                cluster.url + "/api/cluster/models",
                json={"model": DEMO_REPO},
                headers=_admin_headers(cluster),
                timeout=10,
            )
            job = page.locator(f'[data-job="{started.json()["id"]}"]')
            # The job and a bar per node appear from the feed while the download is held.
            sync_api.expect(job).to_contain_text("running", timeout=10_000)
            sync_api.expect(job.locator('[role="progressbar"]')).to_have_count(3)
            sync_api.expect(job).to_contain_text("download (hub)")  # n1's bytes, as they come
            (ROOT / "test-artifacts").mkdir(exist_ok=True)  # git-ignored; docs/img has a copy
            page.locator("#models").screenshot(path=ROOT / "test-artifacts" / "models-job.png")
            release.set()
            sync_api.expect(page.locator("#models")).to_contain_text("✅ 3/3 nodes", timeout=60_000)
            page.locator("#models").screenshot(path=ROOT / "test-artifacts" / "models-done.png")
        finally:
            release.set()
            browser.close()  # ends the browser process Playwright started


def test_nodes_of_a_ring_group_with_the_source_get_the_model_over_mx_distributed(
    sshd, fake_hub, tmp_path
):
    """n1 and n2 form a 2-rank ring group: n2 gets the files over its link (mlx_lm.share's
    functions); n3 shares no group with n1 and gets them over SFTP. Same bytes everywhere."""
    hostfile = cluster_hostfile(sshd, fake_hub, tmp_path)
    for host in hostfile["hosts"]:
        host["ips"] = ["127.0.0.1"]
    hostfile["groups"] = [{"name": "pair", "hosts": [0, 1]}, {"name": "solo", "hosts": [2]}]
    sup = RunningSupervisor(tmp_path, hostfile)
    try:
        sup.wait_healthy(timeout=120)
        done = download(sup)
        assert done["rc"] == 0, done
        paths = {n: p["path"] for n, p in done["job"]["progress"].items()}
        assert paths == {"n1": "hub", "n2": "mx.distributed", "n3": "sftp"}, done["job"]
        n1 = snapshot_files(tmp_path / "n1")
        assert n1 and n1 == snapshot_files(tmp_path / "n2") == snapshot_files(tmp_path / "n3")
        shared = [e for e in sup.log_lines() if e.get("event") == "model_share_done"]
        assert [e["group"] for e in shared] == ["pair"]
    finally:
        sup.stop()
