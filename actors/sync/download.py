"""Hub downloads into the node's cache, and the manifest (sha256 of every file) of a snapshot."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from actors.models.resolve import MLX_MODEL_PATTERNS, short_reason
from actors.protocol.model_messages import ModelFile
from actors.sync.cache import (
    SyncError,
    check_commit,
    free_bytes,
    repo_dir,
    resolve_commit,
    snapshot_entries,
    write_ref,
)
from actors.sync.progress import ByteCounter, ProgressReporter, byte_tqdm, sha256_file
from actors.sync.scan import missing_files


def hub_access(environ: Mapping[str, str]) -> dict:
    """Endpoint and token from this process's environment (the hostfile's ``env``).

    Passed on every call: huggingface_hub reads HF_ENDPOINT once at import."""
    endpoint = environ.get("HF_ENDPOINT") or None
    return {"endpoint": endpoint, "token": environ.get("HF_TOKEN") or None}


def plan_download(repo: str, revision: str, patterns: list[str], access: dict):
    """The commit ``revision`` is at on the hub and the files of it that ``patterns`` select."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    api = HfApi(endpoint=access["endpoint"], token=access["token"])
    commit = api.model_info(repo, revision=revision).sha
    if not commit:
        raise SyncError(f"the hub gave no commit for {repo}@{revision}")
    entries = [
        entry
        for entry in api.list_repo_tree(repo, revision=commit, recursive=True)
        if isinstance(entry, RepoFile)
    ]
    wanted = set(filter_repo_objects([e.path for e in entries], allow_patterns=patterns))
    return commit, [entry for entry in entries if entry.path in wanted]


def bytes_missing(repo_path: Path, commit: str, entries) -> int:
    """Bytes of ``entries`` neither in the snapshot nor in the blobs (a shared blob is here)."""
    missing = 0
    for entry in entries:
        etag = _etag(entry)
        linked = (repo_path / "snapshots" / commit / entry.path).exists()
        if not linked and not (repo_path / "blobs" / etag).is_file():
            missing += entry.size
    return missing


def download(
    models_dir: Path,
    environ: Mapping[str, str],
    reporter: ProgressReporter,
    repo: str,
    revision: str,
    allow_patterns: list[str],
    *,
    dry_run: bool = False,
) -> tuple[str, list[ModelFile], int]:
    """Fetch what is missing of ``repo``@``revision``; the commit, its manifest, bytes fetched.

    Refuses before any byte moves when the missing files do not fit the free disk.
    ``dry_run``: fetch nothing, answer the hub's listing (sizes, ETag names, no sha256)."""
    from huggingface_hub import snapshot_download

    patterns = allow_patterns or MLX_MODEL_PATTERNS
    access = hub_access(environ)
    repo_path = repo_dir(models_dir, repo)
    try:
        commit, entries = plan_download(repo, revision, patterns, access)
    except SyncError:
        raise
    except Exception as error:  # every hub failure becomes one line
        raise SyncError(f"{repo}@{revision}: {short_reason(error)}") from error
    if dry_run:
        return commit, [ModelFile(e.path, e.size, blob=_etag(e)) for e in entries], 0
    needed = bytes_missing(repo_path, commit, entries)
    free = free_bytes(models_dir, environ)
    if needed > free:
        raise SyncError(f"needs {needed} bytes for {repo}, {free} free in {models_dir}")
    counter = ByteCounter(reporter, "download", needed)
    counter.start()
    try:
        snapshot_download(
            repo,
            revision=commit,  # the commit sized above, even if the branch moves meanwhile
            allow_patterns=patterns,
            cache_dir=models_dir,
            tqdm_class=byte_tqdm(counter),
            **access,
        )
    except Exception as error:
        raise SyncError(f"downloading {repo}@{revision}: {short_reason(error)}") from error
    counter.finish()
    write_ref(repo_path, revision, commit)
    return commit, manifest(repo_path, commit, reporter), max(0, counter.done)


def local_manifest(
    models_dir: Path, reporter: ProgressReporter, repo: str, revision: str
) -> tuple[str, list[ModelFile]]:
    """The commit and manifest of a complete snapshot already here, or ``SyncError``."""
    repo_path = repo_dir(models_dir, repo)
    commit = resolve_commit(repo_path, revision)
    if commit is None:
        raise SyncError(f"{repo}@{revision} is not in {models_dir}")
    snapshot = repo_path / "snapshots" / check_commit(commit)
    present = {path for path, blob in snapshot_entries(snapshot) if blob.is_file()}
    lacking = missing_files(snapshot, present)
    if lacking:
        raise SyncError(f"{repo}@{revision} is incomplete here: missing {', '.join(lacking)}")
    return commit, manifest(repo_path, commit, reporter)


def manifest(repo_path: Path, commit: str, reporter: ProgressReporter) -> list[ModelFile]:
    """Every file of the snapshot with its size, sha256 and blob (progress phase "hash")."""
    snapshot = repo_path / "snapshots" / check_commit(commit)
    entries = snapshot_entries(snapshot)
    for path, blob in entries:
        if not blob.is_file():
            raise SyncError(f"{repo_path.name}/{commit[:12]}/{path}: its blob is gone")
    sizes = {path: blob.stat().st_size for path, blob in entries}
    counter = ByteCounter(reporter, "hash", sum(sizes.values()))
    counter.start()
    files = []
    for path, blob in entries:
        counter.detail = path
        sha256 = sha256_file(blob, counter)
        # A file stored in place (no blob link) is sent as an LFS blob would be: named by sha256.
        name = blob.name if blob.parent.name == "blobs" else sha256
        files.append(ModelFile(path, sizes[path], sha256, name, location=os.path.abspath(blob)))
    counter.finish()
    return files


def _etag(entry) -> str:
    """The blob name huggingface_hub stores a hub file under: sha256 (LFS) or git's sha1."""
    return entry.lfs.sha256 if entry.lfs is not None else entry.blob_id
