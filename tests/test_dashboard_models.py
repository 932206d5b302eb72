"""The dashboard's Models panel logic (api/dashboard/static/js/models.js) run by node: its
fold of the feed's ModelJob* events gives the same job views as the supervisor's own fold
(supervisor/state/folds/models.py) for the same events, and its texts say the figures.
The panel's drawing in a browser is covered by tests/test_e2e_dashboard.py."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from msgspec import to_builtins

from supervisor.state.events import ModelJobEnded, ModelJobProgress, ModelJobStarted
from supervisor.state.folds.models import JOBS_KEPT, Models
from tests.conftest import ROOT

NODE = shutil.which("node")
JS = ROOT / "api" / "dashboard" / "static" / "js"
pytestmark = pytest.mark.skipif(NODE is None, reason="node is missing (apt-get install nodejs)")


def run_js(body: str, payload) -> object:
    """Run ``body`` as an ES module with ``models`` imported and ``input`` the payload;
    what it prints is JSON."""
    script = (
        f"const models = await import({json.dumps((JS / 'models.js').as_uri())});\n"
        f"const input = {json.dumps(payload)};\n{body}"
    )
    done = subprocess.run(
        [NODE, "--input-type=module", "-e", script],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def feed_item(event) -> dict:
    return {"event": type(event).__name__, "data": to_builtins(event)}


def events() -> list:
    """Three jobs: one done, one failed, one running with progress on two nodes; then more
    ended jobs than are kept, so both folds must drop the same ones."""
    out = [
        ModelJobStarted("j1", "download", "o/a", ["mac1", "mac2"], 10.0, source="mac1"),
        ModelJobProgress("j1", "mac1", "download", 5, 10, 2e6, 2.5, "hub"),
        ModelJobProgress("j1", "mac2", "transfer", 3, 10, 1e6, 7.0, "sftp", "2 files"),
        ModelJobEnded("j1", True, 20.0, moved_bytes=20),
        ModelJobStarted("j2", "swap", "o/b", ["mac2"], 21.0, group="main"),
        ModelJobEnded("j2", False, 22.0, error="group main: needs 40 GiB, 24 GiB free"),
        ModelJobStarted("j3", "download", "o/c", ["mac1"], 23.0),
        ModelJobProgress("j3", "mac1", "hash", 1, 4, 0.0, None),
    ]
    for i in range(JOBS_KEPT):
        out += [ModelJobStarted(f"k{i}", "delete", "o/d", ["mac1"], 30.0 + i),
                ModelJobEnded(f"k{i}", True, 30.5 + i)]  # fmt: skip
    return out


def python_fold(evs) -> list[dict]:
    models = Models()
    for e in evs:
        models.fold(e)
    return models.jobs_json()


FOLD = """
const jobs = new models.ModelJobs();
const ends = [];
for (const item of input.items) if (jobs.apply(item)) ends.push(item.event);
console.log(JSON.stringify({ jobs: [...jobs.jobs.values()].reverse(), ends }));
"""


def test_the_page_folds_job_events_as_the_supervisor_does():
    evs = events()
    items = [{"event": "snapshot", "data": {"state": {"model_jobs": []}}}, *map(feed_item, evs)]
    got = run_js(FOLD, {"items": items})
    assert got["jobs"] == python_fold(evs)
    assert any(j["id"] == "j3" and j["state"] == "running" for j in got["jobs"])  # kept
    # the disks are re-read after the snapshot and after each job's end, not on progress
    assert got["ends"] == ["snapshot"] + ["ModelJobEnded"] * (2 + JOBS_KEPT)


def test_a_snapshot_restores_the_jobs_then_events_continue():
    evs = events()[:7]  # j3 started, no progress yet
    snapshot = {"event": "snapshot", "data": {"state": {"model_jobs": python_fold(evs)}}}
    rest = events()[7:9]
    got = run_js(FOLD, {"items": [snapshot, *map(feed_item, rest)]})
    assert got["jobs"] == python_fold(evs + rest)


def test_texts_say_the_figures():
    got = run_js(
        """
        const p = { phase: "transfer", done: 5e8, total: 1e9, rate: 4.5e7, eta: 11, path: "sftp",
                    detail: "" };
        console.log(JSON.stringify([
          models.progressText(p),
          models.progressText({ ...p, phase: "done", detail: "nothing to move" }),
          models.nodesMark({ complete_nodes: 2, total_nodes: 2 }),
          models.nodesMark({ complete_nodes: 1, total_nodes: 2 }),
          models.nodesMark({ complete_nodes: 0, total_nodes: 2 }),
          models.partialNodes({ nodes: { b: { present: true, complete: false },
            a: { present: true, complete: true }, c: { present: false, complete: false } } }),
          models.jobTitle({ action: "swap", group: "main", model: "o/b", state: "failed" }),
          models.rate(0),
        ]));
        """,
        None,
    )
    assert got == [
        "transfer (sftp): 50% — 477 MB / 954 MB — 45.0 MB/s — ETA 11s",
        "done (sftp): 50% — 477 MB / 954 MB · nothing to move",
        {"text": "✅ 2/2 nodes", "cls": "ok"},
        {"text": "⚠️ 1/2 nodes", "cls": "warning"},
        {"text": "❌ 0/2 nodes", "cls": "critical"},
        ["b"],
        "Swapping group main to o/b: failed",
        "—",
    ]
