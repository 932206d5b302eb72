"""The ``sync`` actor driven directly (no process) against the fake hub and temp caches."""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub import constants, scan_cache_dir
from huggingface_hub.utils import filter_repo_objects

from actors.models.resolve import MLX_MODEL_PATTERNS, resolve_model
from actors.protocol.messages import Ready
from actors.protocol.model_messages import (
    FAKE_FREE_BYTES_ENV,
    SYNC_TERMINAL,
    ModelFile,
    SyncCommit,
    SyncDelete,
    SyncDownload,
    SyncManifestAsk,
    SyncProgress,
    SyncScan,
    SyncVerify,
)
from actors.protocol.model_spec import ModelUnavailable
from actors.sync.actor import SyncActor
from actors.sync.progress import REPORTS_PER_SECOND
from tests.fake_hub import DEMO_REPO, fake_hub_fixture  # noqa: F401

NODE = "n1"
ASK_TIMEOUT = 60.0


@pytest.fixture(autouse=True)
def online(monkeypatch):
    # huggingface_hub froze HF_HUB_OFFLINE at import; these tests talk to the local fake hub.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


class FakeRuntime:
    """What the actor sees of ``ActorRuntime``: a config with the node name and ``send``."""

    def __init__(self) -> None:
        self.config = SimpleNamespace(node=NODE, options={})
        self.sent: list = []
        self._changed = threading.Condition()

    def send(self, msg) -> bool:
        with self._changed:
            self.sent.append(msg)
            self._changed.notify_all()
        return True

    def replies(self, request_id: str) -> list:
        with self._changed:
            return [m for m in self.sent if getattr(m, "request_id", None) == request_id]

    def wait_terminal(self, request_id: str, timeout: float = ASK_TIMEOUT):
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for msg in self.sent:
                    if getattr(msg, "request_id", None) == request_id and (
                        type(msg).__name__ in SYNC_TERMINAL
                    ):
                        return msg
                left = deadline - time.monotonic()
                assert left > 0, f"no terminal reply to {request_id} in {timeout}s"
                self._changed.wait(left)


class Node:
    """A started SyncActor over its own cache dir, and a way to ask it things."""

    def __init__(self, cache: Path, hub, **env: str) -> None:
        self.cache = cache
        environ = {"HF_HUB_CACHE": str(cache), "HF_ENDPOINT": hub.url, **env}
        self.actor = SyncActor(environ)
        self.runtime = FakeRuntime()
        self.actor.start(self.runtime)

    def ask(self, make, **fields):
        request_id = uuid.uuid4().hex
        self.actor.handle(make(request_id=request_id, **fields))
        terminal = self.runtime.wait_terminal(request_id)
        progress = [m for m in self.runtime.replies(request_id) if isinstance(m, SyncProgress)]
        return terminal, progress

    def close(self) -> None:
        self.actor.stop()


@pytest.fixture
def nodes(fake_hub, tmp_path):
    made: list[Node] = []

    def make(name: str, **env: str) -> Node:
        node = Node(tmp_path / name, fake_hub, **env)
        made.append(node)
        return node

    yield make
    for node in made:
        node.close()


def wanted(hub) -> list[str]:
    return sorted(
        filter_repo_objects(hub.repos[DEMO_REPO].files, allow_patterns=MLX_MODEL_PATTERNS)
    )


def stage_from(manifest, needs, corrupt: str = "") -> None:
    """Do what the supervisor's transfer does: copy each needed blob to where it is staged."""
    by_blob = {f.blob: f for f in manifest.files}
    for need in needs.missing:
        shutil.copyfile(by_blob[need.blob].location, need.location)
        if need.path == corrupt:
            with open(need.location, "r+b") as staged:
                staged.write(b"X")


def test_ready_says_where_models_live_and_the_free_disk(nodes, tmp_path):
    node = nodes("a", **{FAKE_FREE_BYTES_ENV: "123456"})
    ready = node.runtime.sent[0]
    assert isinstance(ready, Ready)
    assert ready.info == {"models_dir": str((tmp_path / "a").resolve()), "free_bytes": "123456"}
    assert (tmp_path / "a").is_dir()


def test_download_answers_the_hubs_sha256_and_a_second_download_fetches_nothing(nodes, fake_hub):
    node = nodes("a")
    started = time.monotonic()
    manifest, progress = node.ask(SyncDownload, repo=DEMO_REPO)
    elapsed = time.monotonic() - started
    hub_files = fake_hub.repos[DEMO_REPO].files
    assert manifest.repo == DEMO_REPO and manifest.commit == fake_hub.repos[DEMO_REPO].commit
    assert sorted(f.path for f in manifest.files) == wanted(fake_hub)
    for file in manifest.files:
        assert file.sha256 == hub_files[file.path].sha256, file.path
        assert file.size == hub_files[file.path].size
        assert Path(file.location).read_bytes() == hub_files[file.path].local.read_bytes()
        assert file.blob == hub_files[file.path].etag.strip('"')
    assert manifest.downloaded_bytes == sum(f.size for f in manifest.files)
    phases = [p.phase for p in progress]
    assert phases[0] == "download" and phases[-1] == "hash"
    assert phases.index("hash") > max(i for i, p in enumerate(phases) if p == "download")
    last_download = [p for p in progress if p.phase == "download"][-1]
    assert last_download.done == last_download.total == manifest.downloaded_bytes
    # Throttled: the forced first/last figure of each phase, plus <= 4 a second in between.
    assert len(progress) <= 4 + REPORTS_PER_SECOND * elapsed + 1

    fetched = fake_hub.body_fetches()
    again, _ = node.ask(SyncDownload, repo=DEMO_REPO)
    assert fake_hub.body_fetches() == fetched
    assert again.downloaded_bytes == 0
    assert [f.sha256 for f in again.files] == [f.sha256 for f in manifest.files]


def test_scan_lists_the_downloaded_model_with_its_config_facts(nodes, fake_hub):
    node = nodes("a", **{FAKE_FREE_BYTES_ENV: "9999999999"})
    empty, _ = node.ask(SyncScan)
    assert empty.models == [] and empty.free_bytes == 9999999999
    node.ask(SyncDownload, repo=DEMO_REPO)
    inventory, _ = node.ask(SyncScan)
    (model,) = inventory.models
    assert model.repo == DEMO_REPO and model.complete and model.missing == []
    assert model.commit == fake_hub.repos[DEMO_REPO].commit and model.refs == ["main"]
    assert model.architecture == "Qwen2ForCausalLM" and model.model_type == "qwen2"
    assert model.context_length == 4096 and model.quantization == ""
    assert model.files == len(wanted(fake_hub)) and model.size > 1_000_000
    assert inventory.models_dir == str(node.cache.resolve())

    # A weight file gone from the snapshot: listed, partial, naming what is missing.
    (Path(model.path) / "model.safetensors").unlink()
    partial, _ = node.ask(SyncScan)
    assert not partial.models[0].complete
    assert partial.models[0].missing == ["model.safetensors"]


def test_verify_and_commit_copy_a_snapshot_between_two_caches(nodes, fake_hub):
    source, target = nodes("a"), nodes("b")
    manifest, _ = source.ask(SyncDownload, repo=DEMO_REPO)
    fetched = fake_hub.body_fetches()
    needs, _ = target.ask(SyncVerify, repo=DEMO_REPO, commit=manifest.commit, files=manifest.files)
    assert sorted(f.path for f in needs.missing) == sorted(f.path for f in manifest.files)
    assert all(Path(f.location).parent.is_dir() for f in needs.missing)
    assert needs.models_dir == str(target.cache.resolve())
    stage_from(manifest, needs)
    committed, progress = target.ask(
        SyncCommit,
        repo=DEMO_REPO,
        commit=manifest.commit,
        revision="main",
        files=[_with_location(f, needs) for f in manifest.files],
    )
    assert committed.bad == []
    assert {p.phase for p in progress} == {"commit"}
    assert fake_hub.body_fetches() == fetched  # nothing came from the hub

    copied, _ = target.ask(SyncManifestAsk, repo=DEMO_REPO, revision="main")
    assert [(f.path, f.sha256, f.blob) for f in copied.files] == [
        (f.path, f.sha256, f.blob) for f in manifest.files
    ]
    source_snapshot = Path(manifest.files[0].location).parents[1] / "snapshots" / manifest.commit
    target_snapshot = Path(copied.files[0].location).parents[1] / "snapshots" / manifest.commit
    for file in manifest.files:
        assert os.readlink(target_snapshot / file.path) == os.readlink(source_snapshot / file.path)
    (repo,) = scan_cache_dir(target.cache).repos
    (revision,) = repo.revisions
    assert repo.repo_id == DEMO_REPO and revision.refs == frozenset({"main"})
    assert not (target.cache / ".mlxs-staging").exists()
    again, _ = target.ask(SyncVerify, repo=DEMO_REPO, commit=manifest.commit, files=manifest.files)
    assert again.missing == []
    assert resolve_model_in(target.cache, DEMO_REPO) == target_snapshot


def test_a_corrupted_staged_file_is_bad_and_asked_for_again(nodes):
    source, target = nodes("a"), nodes("b")
    manifest, _ = source.ask(SyncDownload, repo=DEMO_REPO)
    needs, _ = target.ask(SyncVerify, repo=DEMO_REPO, commit=manifest.commit, files=manifest.files)
    stage_from(manifest, needs, corrupt="model.safetensors")
    files = [_with_location(f, needs) for f in manifest.files]
    committed, _ = target.ask(
        SyncCommit, repo=DEMO_REPO, commit=manifest.commit, revision="main", files=files
    )
    assert committed.bad == ["model.safetensors"]
    assert not any(Path(f.location).exists() for f in needs.missing)
    # No ref to a snapshot that lacks a file; the next verify asks for that file only.
    assert not (target.cache / f"models--{DEMO_REPO.replace('/', '--')}" / "refs/main").exists()
    retry, _ = target.ask(SyncVerify, repo=DEMO_REPO, commit=manifest.commit, files=manifest.files)
    assert [f.path for f in retry.missing] == ["model.safetensors"]


def test_a_download_that_does_not_fit_is_refused_before_any_byte_moves(nodes, fake_hub):
    node = nodes("a", **{FAKE_FREE_BYTES_ENV: "1000"})
    failed, progress = node.ask(SyncDownload, repo=DEMO_REPO)
    needed = sum(fake_hub.repos[DEMO_REPO].files[p].size for p in wanted(fake_hub))
    assert failed.message == (
        f"node {NODE}: needs {needed} bytes for {DEMO_REPO}, 1000 free in {node.cache.resolve()}"
    )
    assert progress == [] and fake_hub.body_fetches() == 0
    assert not any(node.cache.glob("models--*/blobs/*"))


def test_delete_frees_the_repo_and_an_unknown_repo_fails(nodes):
    node = nodes("a")
    manifest, _ = node.ask(SyncDownload, repo=DEMO_REPO)
    deleted, _ = node.ask(SyncDelete, repo=DEMO_REPO)
    assert deleted.freed_bytes >= sum(f.size for f in manifest.files)
    assert not any(node.cache.glob("models--*"))
    failed, _ = node.ask(SyncDelete, repo=DEMO_REPO)
    assert failed.message == f"node {NODE}: {DEMO_REPO} is not in {node.cache.resolve()}"


def test_a_cut_connection_still_ends_complete(nodes, fake_hub):
    node = nodes("a")
    fake_hub.cut_after(DEMO_REPO, "model.safetensors", 100_000)
    manifest, _ = node.ask(SyncDownload, repo=DEMO_REPO)
    hub_files = fake_hub.repos[DEMO_REPO].files
    assert {f.path: f.sha256 for f in manifest.files} == {
        p: hub_files[p].sha256 for p in wanted(fake_hub)
    }
    assert fake_hub.fetch_count(DEMO_REPO, "model.safetensors") == 2  # resumed once


@pytest.mark.parametrize(
    ("make", "fields", "expected"),
    [
        (SyncDownload, {"repo": "fake-org/no-such"}, "no such repository, or it is private"),
        (SyncDownload, {"repo": DEMO_REPO, "revision": "nope"}, "no such revision"),
        (SyncManifestAsk, {"repo": DEMO_REPO}, f"{DEMO_REPO}@main is not in"),
        (SyncDownload, {"repo": "../etc"}, "is not a model repo id"),
        (SyncVerify, {"repo": DEMO_REPO, "commit": "main", "files": []}, "is not a commit hash"),
        (
            SyncVerify,
            {
                "repo": DEMO_REPO,
                "commit": "a" * 40,
                "files": [ModelFile(path="../x", size=1, sha256="0" * 64, blob="0" * 64)],
            },
            "is not a file path inside a snapshot",
        ),
    ],
)
def test_bad_asks_fail_in_one_line_naming_the_node(nodes, make, fields, expected):
    failed, _ = nodes("a").ask(make, **fields)
    assert type(failed).__name__ == "SyncFailed"
    assert failed.message.startswith(f"node {NODE}: ") and expected in failed.message
    assert "\n" not in failed.message


def test_resolve_uses_a_complete_cached_snapshot_without_the_hub(nodes, fake_hub, monkeypatch):
    node = nodes("a")
    manifest, _ = node.ask(SyncDownload, repo=DEMO_REPO)
    requests = len(fake_hub.requests)
    snapshot = resolve_model_in(node.cache, DEMO_REPO, monkeypatch)
    assert snapshot.name == manifest.commit and len(fake_hub.requests) == requests
    pinned = resolve_model_in(node.cache, f"{DEMO_REPO}@{manifest.commit}", monkeypatch)
    assert pinned == snapshot and len(fake_hub.requests) == requests  # @commit: that snapshot
    # Without its weights the snapshot is not used: the Hub path runs (offline here: it fails).
    (snapshot / "model.safetensors").unlink()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable):
        resolve_model(DEMO_REPO)


def resolve_model_in(cache: Path, repo: str, monkeypatch=None) -> Path:
    """resolve_model as a node whose HF_HUB_CACHE is ``cache`` runs it."""
    patch = monkeypatch or pytest.MonkeyPatch()
    patch.setattr(constants, "HF_HUB_CACHE", str(cache))
    try:
        return resolve_model(repo)
    finally:
        if monkeypatch is None:
            patch.undo()


def _with_location(file: ModelFile, needs) -> ModelFile:
    staged = {f.blob: f.location for f in needs.missing}
    return ModelFile(file.path, file.size, file.sha256, file.blob, staged.get(file.blob, ""))


def test_progress_is_throttled_but_first_and_last_figures_go_out():
    from actors.sync.progress import ByteCounter, ProgressReporter

    sent: list[SyncProgress] = []
    counter = ByteCounter(ProgressReporter(sent.append, "r1"), "hash", 1000)
    started = time.monotonic()
    counter.start()
    for _ in range(1000):
        counter.add(1)
    counter.finish()
    elapsed = time.monotonic() - started
    # start and finish (forced), and in between at most 4 a second (one at once after start).
    assert 2 <= len(sent) <= 3 + REPORTS_PER_SECOND * elapsed
    assert (sent[0].done, sent[-1].done, sent[-1].total) == (0, 1000, 1000)


def test_a_dry_run_lists_the_hubs_files_and_fetches_none(nodes, fake_hub):
    listing, progress = nodes("a").ask(SyncDownload, repo=DEMO_REPO, dry_run=True)
    assert type(listing).__name__ == "SyncManifest" and listing.downloaded_bytes == 0
    hub = fake_hub.repos[DEMO_REPO]
    assert listing.commit == hub.commit and fake_hub.body_fetches() == 0 and not progress
    files = {f.path: f for f in listing.files}
    assert set(files) <= set(hub.files) and "config.json" in files
    assert all(files[p].size == hub.files[p].size and not files[p].sha256 for p in files)
    assert all(files[p].blob == hub.files[p].etag.strip('"') for p in files)


def test_asks_past_the_queue_bound_are_refused_at_once(nodes):
    """models.sync_queue reaches the actor in its config's options: past it, an ask fails
    in one line instead of waiting behind the others."""
    node = nodes("a")
    actor = node.actor
    actor._limit = 0  # what options {"queue": "0"} would give: nothing may wait
    failed, _ = node.ask(SyncScan)
    assert type(failed).__name__ == "SyncFailed"
    assert failed.message == f"node {NODE}: 0 model tasks already waiting; try later"
