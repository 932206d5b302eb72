"""`supervisor download | models | rm-model | swap`: models on the nodes' disks.

`download` and `swap` start a job (``POST /api/cluster/models``, ``POST
/api/cluster/groups/{name}/model``) and follow it (``GET /api/cluster/models/jobs/{id}/follow``,
one job view per line) with a progress bar per node; `models` lists what is on the disks;
`rm-model` deletes. Exit codes: 0 done, 1 the job or the cluster refused (a 409, a failed
job, nobody answering), 2 bad input (a bad flag, a refused key, a 4xx other than 409).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.text import Text

from supervisor.cli import admin as cli_admin
from supervisor.cli.admin import DEFAULT_URL, EXIT_REFUSED
from supervisor.cli.models import render as draw

COMMANDS = ("download", "models", "rm-model", "swap")
REQUEST_TIMEOUT = 30.0  # a listing scans every node's disk (each with its own timeout)
# A follow stream may be quiet for a while (a swap draining its group); when it is, the
# job is read once and followed again, so a long silence is not taken for a lost server.
FOLLOW_READ_TIMEOUT = 60.0
FOLLOW_RECONNECTS = 20  # silent stretches in a row before giving up on the job
EXIT_INTERRUPTED = 130

# A hub repo id (huggingface_hub's rules: letters, digits, "-", "_", "."; no "--" or "..";
# 96 characters at most), then an optional @revision (a branch, tag or commit).
_REPO = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}")
_REVISION = re.compile(r"[\w./-]{1,200}")


def model_id(text: str, with_revision: bool = True) -> str:
    """``org/name[@revision]``, or why not in one line (argparse says it, exit 2)."""
    repo, at, revision = text.partition("@")
    if not _REPO.fullmatch(repo) or "--" in repo or ".." in repo or repo.endswith((".", "-")):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a hub repo id: expected org/name, e.g. mlx-community/Qwen3-4B-4bit"
        )
    if at and not with_revision:
        raise argparse.ArgumentTypeError(
            f"{text!r}: rm-model removes every revision of {repo}; give {repo} alone"
        )
    if at and not _REVISION.fullmatch(revision):
        raise argparse.ArgumentTypeError(f"{text!r}: bad revision {revision!r} after '@'")
    return text


def repo_only(text: str) -> str:
    return model_id(text, with_revision=False)


def node_list(text: str) -> list[str] | str:
    """``all`` (every node) or ``mac1,mac2``. Not None for all: argparse would then not see
    the flag as given (None is its default) and let ``--group`` through with it."""
    if text.strip() == "all":
        return "all"
    names = [n.strip() for n in text.split(",")]
    if not all(names) or any(re.search(r"\s", n) for n in names):
        raise argparse.ArgumentTypeError(
            f"expected 'all' or node names like mac1,mac2, got {text!r}"
        )
    return list(dict.fromkeys(names))


def add_parsers(sub) -> None:
    download = sub.add_parser("download", help="download a model once and sync it to the nodes")
    download.add_argument("model", type=model_id, help="hub repo id: org/name[@revision]")
    where = download.add_mutually_exclusive_group()
    where.add_argument(
        "--nodes", type=node_list, default=None, help="all (default) or node names: mac1,mac2"
    )
    where.add_argument("--group", default=None, help="the nodes of this group")
    download.add_argument("--no-wait", action="store_true", help="start the job and return")
    models = sub.add_parser("models", help="the models on each node's disk")
    models.add_argument("--api-key", default=None)
    rm = sub.add_parser("rm-model", help="delete a model from the nodes' disks")
    rm.add_argument("model", type=repo_only, help="hub repo id: org/name")
    rm.add_argument("--node", default=None, help="this node only (default: every node)")
    swap = sub.add_parser("swap", help="serve another model on a group, live")
    swap.add_argument("group", help="the group's name")
    swap.add_argument("model", type=model_id, help="hub repo id: org/name[@revision]")
    swap.add_argument("--no-wait", action="store_true", help="start the job and return")
    for p in (download, models, rm, swap):
        p.add_argument("--url", default=DEFAULT_URL, help="the supervisor's API URL")
        cli_admin.add_admin_key(p)
    for p in (download, models, swap):
        p.add_argument("--json", action="store_true", help="print JSON for scripts")


def run(args: argparse.Namespace) -> int:
    url = cli_admin.base(args.url)
    key = cli_admin.admin_key(args, url)  # Refused: the CLI's dispatch says why, exit 2
    if args.command == "models":
        return _models(args, url, key or args.api_key)
    if key is None:
        print(
            f"supervisor: {args.command} needs the supervisor's admin key; pass --admin-key "
            "or set MLXS_ADMIN_KEY",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    if args.command == "rm-model":
        return _rm_model(args, url, key)
    if args.command == "download":
        body: dict = {"model": args.model}
        if args.nodes not in (None, "all"):
            body["nodes"] = args.nodes
        if args.group is not None:
            body["group"] = args.group
        path = "/api/cluster/models"
    else:
        body = {"model": args.model}
        path = f"/api/cluster/groups/{urllib.parse.quote(args.group, safe='')}/model"
    job = _send(args.command, "POST", url + path, body, key)
    if isinstance(job, int):
        return job
    if args.no_wait:
        print(json.dumps(job) if args.json else f"supervisor: started job {job['id']}")
        return 0
    return _follow(args, url, key, job)


def _send(command: str, method: str, url: str, body: dict | None, key: str | None):
    """The JSON answer, or the exit code once why not is said in one line: a 409 (the
    cluster's state refuses: a group serves it, it cannot fit) is 1, other 4xx 2."""
    try:
        code, answer = cli_admin.send(method, url, body, key, REQUEST_TIMEOUT)
    except (urllib.error.URLError, OSError) as exc:
        return cli_admin.unreachable(url, exc)
    if code >= 400:
        print(f"supervisor: {command} refused: {cli_admin.message(code, answer)}", file=sys.stderr)
        return 1 if code == 409 or code >= 500 else EXIT_REFUSED
    return answer


def _models(args: argparse.Namespace, url: str, key: str | None) -> int:
    body = _send("models", "GET", url + "/api/cluster/models", None, key)
    if isinstance(body, int):
        return body
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    console = Console(highlight=False)
    for part in draw.models_parts(body):
        console.print(part, soft_wrap=isinstance(part, Text))  # a note greps in one piece
    return 0


def _rm_model(args: argparse.Namespace, url: str, key: str) -> int:
    query = f"?{urllib.parse.urlencode({'node': args.node})}" if args.node else ""
    path = f"/api/cluster/models/{urllib.parse.quote(args.model, safe='/')}{query}"
    answer = _send("rm-model", "DELETE", url + path, None, key)
    if isinstance(answer, int):
        return answer
    print(f"supervisor: {draw.deleted_line(args.model, answer)}")
    return 0


# ------------------------------------------------------------------ following a job


def _follow(args: argparse.Namespace, url: str, key: str, job: dict) -> int:
    show = _Quiet() if args.json else _Bars() if sys.stderr.isatty() else _Lines()
    try:
        with show:
            show.update(job)
            for view in _views(url, key, job["id"]):
                job = view
                show.update(job)
                if job.get("state") != "running":
                    break
    except KeyboardInterrupt:  # the job goes on without us
        print(
            f"\nsupervisor: stopped following job {job['id']}; it goes on "
            "(`supervisor models` shows it)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except _Lost as exc:
        print(f"supervisor: {exc}", file=sys.stderr)
        return 1
    code, line = draw.outcome(job)
    if args.json:
        print(json.dumps(job))
    print(f"supervisor: {line}", file=sys.stdout if code == 0 and not args.json else sys.stderr)
    return code


class _Lost(Exception):
    """The job can no longer be followed, in one line."""


def _views(url: str, key: str, job_id: str) -> Iterator[dict]:
    """The job's views as the server streams them; after a quiet stretch or a stream that
    ended early, the job is read once (a view to show) and followed again."""
    quoted = urllib.parse.quote(job_id, safe="")
    follow = f"{url}/api/cluster/models/jobs/{quoted}/follow"
    for _ in range(FOLLOW_RECONNECTS):
        last = None
        try:
            for last in _ndjson(follow, key):
                yield last
                if last.get("state") != "running":
                    return
        except TimeoutError:
            pass  # quiet: read the job below and follow again
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise _Lost(f"lost job {job_id} at {url} ({getattr(exc, 'reason', exc)})") from None
        view = _job(url, key, job_id)
        yield view
        if view.get("state") != "running":
            return
    raise _Lost(f"job {job_id} sent nothing for {FOLLOW_RECONNECTS} × {FOLLOW_READ_TIMEOUT:g} s")


def _job(url: str, key: str, job_id: str) -> dict:
    path = f"{url}/api/cluster/models/jobs/{urllib.parse.quote(job_id, safe='')}"
    try:
        code, view = cli_admin.send("GET", path, None, key, REQUEST_TIMEOUT)
    except (urllib.error.URLError, OSError) as exc:
        raise _Lost(f"lost job {job_id} at {url} ({getattr(exc, 'reason', exc)})") from None
    if code != 200:
        raise _Lost(f"job {job_id}: {cli_admin.message(code, view)}")
    return view


def _ndjson(url: str, key: str) -> Iterator[dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=FOLLOW_READ_TIMEOUT) as response:
        for raw in response:
            if raw.strip():
                yield json.loads(raw)


class _Quiet:
    """``--json``: nothing until the final view."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, job: dict) -> None:
        return None


class _Lines(_Quiet):
    """Not a terminal: one line per node each time its phase changes."""

    def __init__(self) -> None:
        self.before: dict | None = None

    def update(self, job: dict) -> None:
        for line in draw.phase_changes(self.before, job):
            print(line, file=sys.stderr, flush=True)
        self.before = job


class _Bars(_Quiet):
    """A terminal: a rich progress bar per node, redrawn in place (on stderr, so stdout
    keeps only the outcome)."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.fields[node]}"),
            TextColumn("{task.fields[phase]}"),
            BarColumn(),
            TextColumn("{task.fields[amount]}"),
            TextColumn("{task.fields[speed]}"),
            TextColumn("{task.fields[eta]}"),
            console=Console(stderr=True, highlight=False),
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def update(self, job: dict) -> None:
        for node, p in sorted((job.get("progress") or {}).items()):
            fields = draw.bar_fields(node, p)
            completed, total = fields.pop("completed"), fields.pop("total")
            if node not in self.tasks:
                self.tasks[node] = self.progress.add_task(node, total=total, **fields)
            self.progress.update(self.tasks[node], completed=completed, total=total, **fields)
