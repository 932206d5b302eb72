"""A fake Hugging Face Hub on 127.0.0.1 that the real ``huggingface_hub`` client downloads from.

It serves repos from local directories the way the Hub does for ``snapshot_download``
(checked against huggingface_hub 2.4: its ``_snapshot_download.py`` and ``file_download.py``):

- ``GET /api/models/{repo}[/revision/{rev}]``: the repo info, whose ``sha`` pins the commit;
- ``GET /api/models/{repo}/tree/{rev}?recursive=…``: the file listing, ``lfs`` for LFS files;
- ``HEAD`` and ``GET /{repo}/resolve/{rev}/{path}``: ``ETag`` (sha256 for LFS files, the git blob
  sha1 otherwise, quoted), ``X-Repo-Commit``, ``Content-Length``, and ``Range`` (206), which
  the client sends to resume a download that broke off;
- 404s with the Hub's ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``,
  ``EntryNotFound``) so the client raises its own typed errors.

Files are served directly (no redirect to a CDN, no Xet headers), so the client takes its
plain HTTP path. The server counts body fetches per file and can cut one connection mid-file.

A test gets the ``fake_hub`` fixture with ``from tests.fake_hub import fake_hub_fixture  # noqa:
F401``; it serves the demo:tiny model as ``DEMO_REPO``. ``huggingface_hub`` reads ``HF_ENDPOINT``
once at import: in-process, pass ``endpoint=hub.url``; a subprocess gets ``HF_ENDPOINT``.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections import Counter
from dataclasses import dataclass
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

DEMO_REPO = "fake-org/demo-tiny"
DEFAULT_REVISION = "main"
# What the Hub stores in LFS for a model repo (its default .gitattributes, trimmed).
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "*.npz", "*.model")
CHUNK = 64 * 1024
# An idle keep-alive connection's handler thread ends after this long.
IDLE_TIMEOUT_S = 30


@dataclass(frozen=True)
class HubFile:
    path: str  # as in the repo, "/"-separated
    local: Path
    size: int
    blob_sha1: str  # git's blob id: sha1 of "blob <size>\0" + content
    sha256: str
    lfs: bool

    @property
    def etag(self) -> str:
        return f'"{self.sha256 if self.lfs else self.blob_sha1}"'

    def tree_entry(self) -> dict:
        entry = {"type": "file", "oid": self.blob_sha1, "size": self.size, "path": self.path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": 134}
        return entry


@dataclass(frozen=True)
class HubRepo:
    repo_id: str
    revision: str
    commit: str
    files: dict[str, HubFile]


def _hash_file(local: Path) -> tuple[str, str]:
    data = local.read_bytes()
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    return blob, hashlib.sha256(data).hexdigest()


def load_repo(repo_id: str, directory: Path, revision: str = DEFAULT_REVISION) -> HubRepo:
    """Snapshot every file under ``directory`` as one commit of ``repo_id``."""
    files = {}
    for local in sorted(p for p in directory.rglob("*") if p.is_file()):
        path = local.relative_to(directory).as_posix()
        blob, sha256 = _hash_file(local)
        lfs = any(fnmatch(path.rsplit("/", 1)[-1], pattern) for pattern in LFS_PATTERNS)
        files[path] = HubFile(path, local, local.stat().st_size, blob, sha256, lfs)
    # A deterministic commit id: the same directory content is the same commit.
    listing = "".join(f"{f.path}\0{f.blob_sha1}\n" for f in files.values())
    commit = hashlib.sha1(f"{repo_id}\n{listing}".encode()).hexdigest()
    return HubRepo(repo_id, revision, commit, files)


class FakeHub:
    """The server, its repos, its per-file fetch counter and its one-shot connection cut."""

    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.fetches: Counter[tuple[str, str]] = Counter()  # (repo, path) -> body GETs
        self.heads: Counter[tuple[str, str]] = Counter()  # (repo, path) -> HEADs
        self.requests: list[tuple[str, str, str | None]] = []  # (method, url path, Range)
        self._cuts: dict[tuple[str, str], int] = {}
        self._holds: dict[tuple[str, str], threading.Event] = {}
        self.held = threading.Event()  # set once a held file's body is being waited for
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def add_repo(self, repo_id: str, directory: Path, revision: str = DEFAULT_REVISION) -> HubRepo:
        repo = load_repo(repo_id, Path(directory), revision)
        with self._lock:
            self.repos[repo_id] = repo
        return repo

    def cut_after(self, repo_id: str, path: str, nbytes: int) -> None:
        """The next GET of ``path`` sends full headers, then ``nbytes`` of body, then hangs up."""
        with self._lock:
            self._cuts[(repo_id, path)] = nbytes

    def hold(self, repo_id: str, path: str) -> threading.Event:
        """GETs of ``path`` send their headers, then wait (at most IDLE_TIMEOUT_S) until the
        returned event is set: a download stays in flight for as long as a test needs."""
        release = threading.Event()
        with self._lock:
            self._holds[(repo_id, path)] = release
        return release

    def fetch_count(self, repo_id: str, path: str) -> int:
        with self._lock:
            return self.fetches[(repo_id, path)]

    def body_fetches(self) -> int:
        with self._lock:
            return sum(self.fetches.values())

    @property
    def url(self) -> str:
        assert self._server is not None, "FakeHub is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_HubHandler):
            fake_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fake-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            for release in self._holds.values():
                release.set()  # no handler thread is left waiting
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # The handler's view: routing decisions made under the lock.
    def _take_cut(self, key: tuple[str, str]) -> int | None:
        with self._lock:
            return self._cuts.pop(key, None)

    def _record(self, method: str, path: str, range_header: str | None) -> None:
        with self._lock:
            self.requests.append((method, path, range_header))


class _HubHandler(BaseHTTPRequestHandler):
    fake_hub: FakeHub
    protocol_version = "HTTP/1.1"  # keep-alive like the Hub; every response sets Content-Length
    timeout = IDLE_TIMEOUT_S

    def log_message(self, format, *args):  # noqa: A002 - quiet: pytest shows failures, not traffic
        pass

    def do_HEAD(self):
        self._dispatch(send_body=False)

    def do_GET(self):
        self._dispatch(send_body=True)

    def _dispatch(self, send_body: bool) -> None:
        hub = self.fake_hub
        url = urlsplit(self.path)
        path = unquote(url.path)
        hub._record(self.command, path, self.headers.get("Range"))
        if path.startswith("/api/models/"):
            if not send_body:
                return self._error(405, "MethodNotAllowed", "HEAD is not served on /api")
            return self._api(path.removeprefix("/api/models/"), parse_qs(url.query))
        repo, rest = self._split_repo(path.lstrip("/"))
        if repo is None or not rest.startswith("resolve/"):
            return self._error(404, "RepoNotFound", f"Repository not found: {path}")
        revision, _, filename = rest.removeprefix("resolve/").partition("/")
        if not self._revision_ok(repo, revision):
            return None
        file = repo.files.get(filename)
        if file is None:
            headers = {"X-Repo-Commit": repo.commit}
            return self._error(404, "EntryNotFound", f"Entry not found: {filename}", headers)
        self._resolve(repo, file, send_body)

    def _split_repo(self, path: str) -> tuple[HubRepo | None, str]:
        """The longest registered repo id ``path`` starts with, and what follows it."""
        for repo_id in sorted(self.fake_hub.repos, key=len, reverse=True):
            if path == repo_id or path.startswith(repo_id + "/"):
                return self.fake_hub.repos[repo_id], path[len(repo_id) + 1 :]
        return None, ""

    def _revision_ok(self, repo: HubRepo, revision: str) -> bool:
        if revision in (repo.revision, repo.commit):
            return True
        self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return False

    def _api(self, rest: str, query: dict) -> None:
        repo, tail = self._split_repo(rest)
        if repo is None:
            return self._error(404, "RepoNotFound", f"Repository not found: {rest}")
        if tail == "" or tail.startswith("revision/"):
            revision = tail.removeprefix("revision/") or repo.revision
            if self._revision_ok(repo, revision):
                self._json(200, _model_info(repo))
            return None
        if tail.startswith("tree/"):
            revision, _, prefix = tail.removeprefix("tree/").partition("/")
            if self._revision_ok(repo, revision):
                recursive = query.get("recursive", ["False"])[0].lower() == "true"
                self._json(200, _tree(repo, prefix, recursive))
            return None
        return self._error(404, "EntryNotFound", f"Not served by the fake hub: {tail}")

    def _resolve(self, repo: HubRepo, file: HubFile, send_body: bool) -> None:
        hub, key = self.fake_hub, (repo.repo_id, file.path)
        start = _range_start(self.headers.get("Range"), file.size)
        status = 206 if start else 200
        self.send_response(status)
        self.send_header("ETag", file.etag)
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(file.size - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{file.size - 1}/{file.size}")
        self.end_headers()
        if not send_body:
            with hub._lock:
                hub.heads[key] += 1
            return
        with hub._lock:
            hub.fetches[key] += 1
        cut = hub._take_cut(key)
        with hub._lock:
            release = hub._holds.get(key)
        if release is not None:
            hub.held.set()
            release.wait(IDLE_TIMEOUT_S)
        with file.local.open("rb") as source:
            source.seek(start)
            left = file.size - start if cut is None else min(cut, file.size - start)
            while left > 0:
                chunk = source.read(min(CHUNK, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)
        if cut is not None:
            # Hang up with the body short of its Content-Length, as a dropped link does.
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    def _json(self, status: int, payload, headers: dict | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, headers: dict | None = None) -> None:
        self._json(status, {"error": message}, {"X-Error-Code": code, **(headers or {})})


def _range_start(header: str | None, size: int) -> int:
    """The first byte of an open ``bytes=N-`` range, the only form huggingface_hub sends."""
    if not header or not header.startswith("bytes="):
        return 0
    first = header.removeprefix("bytes=").split("-", 1)[0]
    return min(int(first), size) if first.isdigit() else 0


def _model_info(repo: HubRepo) -> dict:
    return {
        "_id": repo.commit[:24],
        "id": repo.repo_id,
        "modelId": repo.repo_id,
        "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
        "sha": repo.commit,
        "private": False,
        "gated": False,
        "disabled": False,
        "library_name": "mlx",
        "tags": ["mlx"],
        "siblings": [{"rfilename": path} for path in repo.files],
    }


def _tree(repo: HubRepo, prefix: str, recursive: bool) -> list[dict]:
    """The Hub's tree listing under ``prefix``: folders, then files, one level or all."""
    base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    folders, files = set(), []
    for path, file in repo.files.items():
        if not path.startswith(base):
            continue
        parts = path[len(base) :].split("/")
        for depth in range(1, len(parts) if recursive else min(2, len(parts))):
            folders.add(base + "/".join(parts[:depth]))
        if recursive or len(parts) == 1:
            files.append(file.tree_entry())
    listing = [
        {"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f}
        for f in sorted(folders)
    ]
    return listing + files


@pytest.fixture(name="fake_hub")
def fake_hub_fixture():
    """A started ``FakeHub`` serving the demo:tiny model as ``DEMO_REPO``; stopped after."""
    from actors.models.resolve import resolve_model

    hub = FakeHub()
    hub.add_repo(DEMO_REPO, resolve_model("demo:tiny"))
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()
