"""Receiving a snapshot from another node (verify what is lacking, commit what was staged),
and removing a model."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from actors.protocol.model_messages import ModelFile
from actors.sync.cache import (
    STAGING_DIR,
    SyncError,
    check_blob,
    check_commit,
    check_relative,
    link_snapshot_file,
    repo_dir,
    staging_dir,
    tree_bytes,
    write_ref,
)
from actors.sync.progress import ByteCounter, ProgressReporter, sha256_file


def _checked(files: list[ModelFile]) -> list[ModelFile]:
    for file in files:
        check_relative(file.path)
        check_blob(file.blob, file.path)
        if len(file.sha256) != 64:
            raise SyncError(f"{file.path}: no sha256 in the manifest")
    return files


def verify(
    models_dir: Path, reporter: ProgressReporter, repo: str, commit: str, files: list[ModelFile]
) -> list[ModelFile]:
    """The files this node lacks or holds corrupted, each with where to stage it.

    A blob shared by two paths is asked for once. Blobs already here are hashed (phase
    "verify"): a bad one is sent again rather than trusted."""
    repo_path = repo_dir(models_dir, repo)
    stage = staging_dir(models_dir, repo, check_commit(commit))
    blobs = repo_path / "blobs"
    counter = ByteCounter(reporter, "verify", sum(f.size for f in _checked(files)))
    counter.start()
    missing: list[ModelFile] = []
    asked: set[str] = set()
    good: dict[str, bool] = {}
    for file in files:
        blob = blobs / file.blob
        if file.blob not in good:
            counter.detail = file.path
            good[file.blob] = (
                blob.is_file()
                and blob.stat().st_size == file.size
                and sha256_file(blob, counter) == file.sha256
            )
        if good[file.blob] or file.blob in asked:
            continue
        asked.add(file.blob)
        missing.append(
            ModelFile(file.path, file.size, file.sha256, file.blob, str(stage / file.blob))
        )
    counter.finish()
    if missing:
        stage.mkdir(parents=True, exist_ok=True)
    return missing


def commit_files(
    models_dir: Path,
    reporter: ProgressReporter,
    repo: str,
    commit: str,
    revision: str,
    files: list[ModelFile],
) -> list[str]:
    """Check and move staged blobs into the cache, link the snapshot, set the ref; the paths
    whose bytes were bad or absent (the snapshot is then left without them, the ref unset)."""
    repo_path = repo_dir(models_dir, repo)
    stage = staging_dir(models_dir, repo, check_commit(commit))
    blobs = repo_path / "blobs"
    staged = [f for f in _checked(files) if f.location]
    counter = ByteCounter(reporter, "commit", sum(f.size for f in staged))
    counter.start()
    bad: list[str] = []
    blobs.mkdir(parents=True, exist_ok=True)
    for file in staged:
        source = Path(file.location)
        if source.parent != stage:
            raise SyncError(f"{file.path}: staged at {file.location}, outside {stage}")
        counter.detail = file.path
        if source.is_file() and sha256_file(source, counter) == file.sha256:
            os.replace(source, blobs / file.blob)
        elif not (blobs / file.blob).is_file():  # the same blob may be staged for two paths
            source.unlink(missing_ok=True)
            bad.append(file.path)
    counter.finish()
    for file in files:
        if file.path in bad:
            continue
        if not (blobs / file.blob).is_file():
            bad.append(file.path)
            continue
        link_snapshot_file(repo_path, commit, file.path, file.blob)
    if not bad:
        write_ref(repo_path, revision, commit)
    shutil.rmtree(stage, ignore_errors=True)
    _drop_empty(models_dir / STAGING_DIR)
    return bad


def delete_repo(models_dir: Path, repo: str) -> int:
    """Remove every revision of ``repo``; the bytes freed."""
    repo_path = repo_dir(models_dir, repo)
    if not repo_path.is_dir():
        raise SyncError(f"{repo} is not in {models_dir}")
    freed = tree_bytes(repo_path)
    shutil.rmtree(repo_path)
    return freed


def _drop_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:  # not empty (another snapshot is staging) or already gone
        pass
