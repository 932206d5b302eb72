"""`supervisor download | models | rm-model | swap`: drawing from canned JSON (the shapes of
GET /api/cluster/models and of a model job view), argument errors without a server, and the
job-following client against a stand-in HTTP server that speaks those shapes."""

from __future__ import annotations

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rich.console import Console
from rich.text import Text

from supervisor.cli.main import main
from supervisor.cli.models import commands as models_cmd
from supervisor.cli.models import render as draw
from tests.conftest import run_cli

GIB = 2**30
REPO = "mlx-community/Qwen3-4B-4bit"
BODY = {
    "models": [
        {
            "id": REPO,
            "source": "hub",
            "size": int(2.4 * GIB),
            "quantization": "4bit",
            "architecture": "Qwen3ForCausalLM",
            "nodes": {
                "mac1": {"present": True, "complete": True, "path": "/m/a", "missing": [],
                         "commit": "c1"},
                "mac2": {"present": True, "complete": True, "path": "/m/b", "missing": [],
                         "commit": "c1"},
            },
            "complete_nodes": 2, "total_nodes": 2, "groups": ["main"], "modified": 1.0,
        },
        {
            "id": "mlx-community/Mistral-7B-v0.3-4bit",
            "source": "hub",
            "size": int(3.8 * GIB),
            "quantization": "",
            "architecture": "MistralForCausalLM",
            "nodes": {
                "mac1": {"present": True, "complete": True, "path": "/m/c", "missing": [],
                         "commit": "c2"},
                "mac2": {"present": True, "complete": False, "path": "/m/d",
                         "missing": ["model-00002-of-00002.safetensors"], "commit": "c2"},
            },
            "complete_nodes": 1, "total_nodes": 2, "groups": [], "modified": 2.0,
        },
    ],
    "nodes": {
        "mac1": {"models_dir": "/Users/a/.cache/huggingface/hub", "free_bytes": 100 * GIB,
                 "scanned_at": 1.0, "reachable": True},
        "mac2": {"models_dir": "/Volumes/models", "free_bytes": 7 * GIB, "scanned_at": 1.0,
                 "reachable": False},
    },
    "jobs": [],
}  # fmt: skip
JOB = {
    "id": "j1", "action": "download", "model": REPO, "nodes": ["mac1", "mac2"],
    "started_at": 100.0, "source": "mac1", "group": "", "state": "running", "error": "",
    "ended_at": None, "moved_bytes": 0,
    "progress": {
        "mac1": {"phase": "download", "done": 3 * 10**8, "total": 6 * 10**8, "rate": 45e6,
                 "eta": 6.7, "path": "hub", "detail": ""},
        "mac2": {"phase": "queued", "done": 0, "total": 0, "rate": 0.0, "eta": None,
                 "path": "", "detail": ""},
    },
}  # fmt: skip


def text_of(*parts, width: int = 140) -> str:
    console = Console(record=True, width=width, color_system=None, file=open("/dev/null", "w"))
    for part in parts:
        console.print(part, soft_wrap=isinstance(part, Text))
    return console.export_text()


def ended(state: str, **changes) -> dict:
    job = copy.deepcopy(JOB)
    job.update(state=state, ended_at=162.0, **changes)
    for p in job["progress"].values():
        p.update(phase=state, done=p["total"], rate=0.0, eta=None)
    return job


# ------------------------------------------------------------------------- drawing


def test_models_table_has_size_quant_arch_nodes_and_groups():
    lines = text_of(*draw.models_parts(BODY)).splitlines()
    qwen = next(x for x in lines if x.startswith(REPO))
    assert qwen.split()[1:] == ["2.4", "GiB", "4bit", "Qwen3ForCausalLM", "✅", "2/2", "main"]
    mistral = next(x for x in lines if x.startswith("mlx-community/Mistral"))
    assert "⚠️ 1/2 partial: mac2" in mistral and "—" in mistral  # no quantization, no group
    # what a partial copy lacks, and a node that did not answer: whole lines
    assert ("model mlx-community/Mistral-7B-v0.3-4bit on mac2: partial, 1 file(s) missing: "
            "model-00002-of-00002.safetensors") in lines  # fmt: skip
    assert "node mac2: not answering; its last scan is shown" in lines
    disks = next(x for x in lines if x.startswith("mac2 "))
    assert "/Volumes/models" in disks and "7.0 GiB" in disks and "last scan" in disks


def test_the_nodes_mark_is_green_yellow_or_red():
    def mark(complete, total):
        return draw.nodes_mark({"complete_nodes": complete, "total_nodes": total})

    assert (mark(2, 2).plain, mark(2, 2).style) == ("✅ 2/2", "green")
    assert (mark(1, 3).plain, mark(1, 3).style) == ("⚠️ 1/3", "yellow")
    assert (mark(0, 2).plain, mark(0, 2).style) == ("❌ 0/2", "red")


def test_no_models_is_one_dim_line():
    assert text_of(*draw.models_parts({"models": [], "nodes": {}, "jobs": []})).strip() == (
        draw.NO_MODELS
    )


def test_jobs_are_listed_running_first_with_their_progress_or_error():
    failed = ended("failed", id="j0", error="node mac2: needs 2576980378 bytes, 7 free")
    lines = text_of(*draw.notes({**BODY, "jobs": [failed, JOB]})).splitlines()
    jobs = [x for x in lines if x.startswith("job ")]
    assert jobs == [
        f"job j1 download {REPO} running: mac1 download 50% · mac2 queued",
        f"job j0 download {REPO} failed: node mac2: needs 2576980378 bytes, 7 free",
    ]


def test_a_node_bar_carries_the_supervisors_rate_and_eta():
    mac1 = draw.bar_fields("mac1", JOB["progress"]["mac1"])
    assert (mac1["completed"], mac1["total"]) == (3 * 10**8, 6 * 10**8)
    assert mac1["phase"] == "download via hub"
    assert (mac1["amount"], mac1["speed"], mac1["eta"]) == (
        "286.1 MiB/572.2 MiB",
        "45.0 MB/s",
        "6s",
    )
    mac2 = draw.bar_fields("mac2", JOB["progress"]["mac2"])
    assert mac2["total"] is None and mac2["speed"] == "" and mac2["amount"] == "—"
    nothing_moved = draw.bar_fields("mac1", {"phase": "done", "done": 0, "total": 0})
    assert (nothing_moved["completed"], nothing_moved["total"]) == (1, 1)  # a full bar


def test_plain_output_is_a_line_per_phase_change():
    assert draw.phase_changes(None, JOB) == [
        "mac1 download via hub 286.1 MiB/572.2 MiB 45.0 MB/s ETA 6s",
        "mac2 queued",
    ]
    later = copy.deepcopy(JOB)
    later["progress"]["mac1"]["done"] += 1  # same phase: nothing new to say
    later["progress"]["mac2"].update(phase="transfer", total=10, path="sftp", rate=2e6, eta=3)
    assert draw.phase_changes(JOB, later) == ["mac2 transfer via sftp 0 B/10 B 2.0 MB/s ETA 3s"]


def test_outcome_is_the_exit_code_and_one_line():
    assert draw.outcome(ended("done", moved_bytes=GIB)) == (
        0, f"download {REPO}: done on mac1, mac2; 1.0 GiB moved in 1m 02s"
    )  # fmt: skip
    assert draw.outcome(ended("done"))[1].endswith("nothing to move in 1m 02s")
    swap = ended("failed", action="swap", group="main", error="group main: needs 40 GiB")
    assert draw.outcome(swap) == (1, f"swap {REPO} on group main failed: group main: needs 40 GiB")


# ------------------------------------------------------------ bad input: exit 2, one line


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["download", "not-a-repo"], "is not a hub repo id"),
        (["download", "org/na me"], "is not a hub repo id"),
        (["download", "org--x/name"], "is not a hub repo id"),
        (["download", f"{REPO}@bad rev"], "bad revision"),
        (["download", REPO, "--nodes", "mac1,,mac2"], "expected 'all' or node names"),
        (["download", REPO, "--nodes", "all", "--group", "g"], "not allowed with argument"),
        (["rm-model", f"{REPO}@main"], "removes every revision"),
        (["swap", "main"], "the following arguments are required: model"),
        (["models", "--frobnicate"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and says in err


def test_admin_commands_without_a_key_are_refused_before_sending(monkeypatch, capsys):
    monkeypatch.delenv("MLXS_ADMIN_KEY", raising=False)
    # not loopback: no local key file is read, and no request goes out
    assert main(["download", REPO, "--url", "http://192.0.2.1:9"]) == 2
    assert capsys.readouterr().err.strip() == (
        "supervisor: download needs the supervisor's admin key; pass --admin-key or set "
        "MLXS_ADMIN_KEY"
    )


def test_the_installed_command_parses_the_same_way():
    done = run_cli("download", "nope", timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "supervisor: argument model: 'nope' is not a hub repo id: expected org/name, e.g. "
        "mlx-community/Qwen3-4B-4bit"
    ]


def test_model_ids_with_revisions_pass():
    assert models_cmd.model_id(f"{REPO}@main") == f"{REPO}@main"
    assert models_cmd.model_id("org/n.a_m-e@0123abcd") == "org/n.a_m-e@0123abcd"
    assert models_cmd.node_list("all") == "all"
    assert models_cmd.node_list("mac1, mac2,mac1") == ["mac1", "mac2"]


# ------------------------------------- the client against a stand-in for the HTTP routes


class StandIn(ThreadingHTTPServer):
    """Answers like api/models' routes, from canned views; records what it was sent."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str, dict | None, str]] = []
        self.stream = [JOB, ended("done", moved_bytes=GIB)]  # what follow sends
        self.job = ended("done", moved_bytes=GIB)  # what GET jobs/{id} answers
        self.hold = threading.Event()  # a follow with hold_open waits here (quiet stream)
        self.hold_open = False
        self.delete_answer = (200, {"model": REPO, "deleted": {"mac2": 3 * GIB}})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: StandIn

    def log_message(self, *args) -> None:  # quiet test output
        return None

    def _answer(self, code: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.server.seen.append((self.command, self.path, body, self.headers["authorization"]))

    def do_GET(self) -> None:
        self._record()
        if self.path == "/api/cluster/models":
            return self._answer(200, BODY)
        if self.path == "/api/cluster/models/jobs/j1":
            return self._answer(200, self.server.job)
        assert self.path == "/api/cluster/models/jobs/j1/follow", self.path
        self.send_response(200)
        self.send_header("content-type", "application/x-ndjson")
        self.end_headers()
        for view in self.server.stream:
            self.wfile.write(json.dumps(view).encode() + b"\n")
            self.wfile.flush()
        if self.server.hold_open:
            self.server.hold.wait(30)  # released by the fixture's teardown

    def do_POST(self) -> None:
        self._record()
        return self._answer(202, {**JOB, **({"action": "swap", "group": "main"}
                                            if "groups" in self.path else {})})  # fmt: skip

    def do_DELETE(self) -> None:
        self._record()
        return self._answer(*self.server.delete_answer)


@pytest.fixture
def api():
    server = StandIn()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.hold.set()
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_download_follows_the_job_to_done(api, capsys):
    code = main(["download", REPO, "--nodes", "mac1,mac2", "--url", api.url, "--admin-key", "k"])
    out, err = capsys.readouterr()
    assert code == 0
    assert (
        out.strip() == f"supervisor: download {REPO}: done on mac1, mac2; 1.0 GiB moved in 1m 02s"
    )
    assert "mac1 download via hub 286.1 MiB/572.2 MiB 45.0 MB/s ETA 6s" in err.splitlines()
    post = api.seen[0]
    assert post == ("POST", "/api/cluster/models", {"model": REPO, "nodes": ["mac1", "mac2"]},
                    "Bearer k")  # fmt: skip
    assert api.seen[1][1] == "/api/cluster/models/jobs/j1/follow"


def test_a_failed_job_is_exit_1_and_its_error_in_one_line(api, capsys):
    api.stream = [JOB, ended("failed", error="node mac2: needs 2.4 GiB, 7 free in /m")]
    code = main(["download", REPO, "--group", "main", "--url", api.url, "--admin-key", "k"])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.splitlines()[-1] == (
        f"supervisor: download {REPO} failed: node mac2: needs 2.4 GiB, 7 free in /m"
    )
    assert api.seen[0][2] == {"model": REPO, "group": "main"}


def test_json_prints_the_final_job_view_only(api, capsys):
    assert main(["swap", "main", REPO, "--json", "--url", api.url, "--admin-key", "k"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == api.stream[-1]
    assert api.seen[0][:3] == ("POST", "/api/cluster/groups/main/model", {"model": REPO})


def test_no_wait_returns_the_started_job(api, capsys):
    assert main(["download", REPO, "--no-wait", "--url", api.url, "--admin-key", "k"]) == 0
    assert capsys.readouterr().out.strip() == "supervisor: started job j1"
    assert [s[0] for s in api.seen] == ["POST"]


def test_a_quiet_stream_is_read_again_not_taken_for_a_lost_server(api, capsys, monkeypatch):
    monkeypatch.setattr(models_cmd, "FOLLOW_READ_TIMEOUT", 0.3)
    api.stream, api.hold_open = [JOB], True  # the stream says "running" then nothing
    assert main(["download", REPO, "--url", api.url, "--admin-key", "k"]) == 0
    assert "done on mac1, mac2" in capsys.readouterr().out
    assert [s[1] for s in api.seen][1:] == [
        "/api/cluster/models/jobs/j1/follow", "/api/cluster/models/jobs/j1"
    ]  # fmt: skip


def test_rm_model_says_what_was_freed_and_a_409_is_exit_1(api, capsys):
    assert main(["rm-model", REPO, "--node", "mac2", "--url", api.url, "--admin-key", "k"]) == 0
    assert (
        capsys.readouterr().out.strip() == f"supervisor: removed {REPO} from mac2 (3.0 GiB freed)"
    )
    assert api.seen[-1][:2] == ("DELETE", f"/api/cluster/models/{REPO}?node=mac2")
    reason = f"group main serves {REPO}; swap it or stop the group first"
    api.delete_answer = (409, {"error": {"message": reason, "type": "conflict"}})
    assert main(["rm-model", REPO, "--url", api.url, "--admin-key", "k"]) == 1
    assert capsys.readouterr().err.strip() == f"supervisor: rm-model refused: {reason}"
    api.delete_answer = (404, {"error": {"message": f"no model {REPO} on any node"}})
    assert main(["rm-model", REPO, "--url", api.url, "--admin-key", "k"]) == 2


def test_models_draws_the_listing_or_prints_it_raw(api, capsys):
    assert main(["models", "--url", api.url, "--admin-key", "k"]) == 0
    assert "✅ 2/2" in capsys.readouterr().out
    assert main(["models", "--json", "--url", api.url, "--admin-key", "k"]) == 0
    assert json.loads(capsys.readouterr().out) == BODY


def test_a_delete_says_where_and_how_much():
    answer = {"model": REPO, "deleted": {"mac2": GIB, "mac1": 2 * GIB}}
    assert draw.deleted_line(REPO, answer) == f"removed {REPO} from mac1, mac2 (3.0 GiB freed)"
    assert draw.deleted_line(REPO, {"model": REPO, "deleted": {}}) == f"removed {REPO} from no node"
