"""Where things live in a node's huggingface_hub cache, and what the supervisor may name there.

Layout (huggingface_hub's own): ``models--org--name/{blobs/<etag>, snapshots/<commit>/<path>
-> ../../blobs/<etag>, refs/<revision>}``. Names that arrive in asks are checked here before
any path is built from them: a bad one is a ``SyncError``, never a write outside the cache.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from actors.protocol.model_messages import FAKE_FREE_BYTES_ENV

STAGING_DIR = ".mlxs-staging"
_HEX_COMMIT = re.compile(r"[0-9a-f]{40}")
# A blob is named by the hub's ETag: git's sha1 (40 hex) or an LFS sha256 (64 hex).
_BLOB_NAME = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


class SyncError(Exception):
    """An ask that cannot be done; the message is one line for the user."""


def models_dir_from_env(environ) -> Path:
    """HF_HUB_CACHE as the supervisor set it, else huggingface_hub's default (HF_HOME/hub)."""
    configured = environ.get("HF_HUB_CACHE")
    if not configured:
        from huggingface_hub import constants

        configured = constants.HF_HUB_CACHE
    return Path(configured).expanduser().resolve()


def free_bytes(models_dir: Path, environ) -> int:
    """Free disk under ``models_dir``; a test may pin it with ``MLXS_FAKE_FREE_BYTES``."""
    fake = environ.get(FAKE_FREE_BYTES_ENV)
    if fake is not None and fake.strip().isdigit():
        return int(fake)
    return shutil.disk_usage(models_dir).free


def check_repo(repo: str) -> str:
    if not _REPO_ID.fullmatch(repo) or ".." in repo:
        raise SyncError(f'"{repo}" is not a model repo id; expected "org/name"')
    return repo


def check_commit(commit: str) -> str:
    if not _HEX_COMMIT.fullmatch(commit):
        raise SyncError(f'"{commit}" is not a commit hash (40 hex digits)')
    return commit


def check_blob(blob: str, path: str) -> str:
    if not _BLOB_NAME.fullmatch(blob):
        raise SyncError(f'{path}: "{blob}" is not a blob name (a sha1 or sha256 in hex)')
    return blob


def check_relative(path: str) -> str:
    """A snapshot path: relative, "/"-separated, never leaving the snapshot."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise SyncError(f'"{path}" is not a file path inside a snapshot')
    return path


def check_revision(revision: str) -> str:
    if not revision or revision.startswith("/") or ".." in revision.split("/"):
        raise SyncError(f'"{revision}" is not a revision name')
    return revision


def repo_dir(models_dir: Path, repo: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return models_dir / repo_folder_name(repo_id=check_repo(repo), repo_type="model")


def resolve_commit(repo_path: Path, revision: str) -> str | None:
    """The commit ``revision`` (a ref or a commit hash) names in this cache, if any."""
    ref = repo_path / "refs" / check_revision(revision)
    if ref.is_file():
        return ref.read_text().strip()
    if (repo_path / "snapshots" / revision).is_dir():
        return revision
    return None


def snapshot_entries(snapshot: Path) -> list[tuple[str, Path]]:
    """Every file of a snapshot: its "/"-path and the blob it points at (first symlink hop)."""
    entries = []
    for link in sorted(p for p in snapshot.rglob("*") if not p.is_dir()):
        rel = link.relative_to(snapshot).as_posix()
        blob = Path(os.path.abspath(link.parent / os.readlink(link))) if link.is_symlink() else link
        entries.append((rel, blob))
    return entries


def staging_dir(models_dir: Path, repo: str, commit: str) -> Path:
    """Where a receiving node stages the blobs of one snapshot until they are checked."""
    return models_dir / STAGING_DIR / f"{repo_dir(models_dir, repo).name}--{check_commit(commit)}"


def link_snapshot_file(repo_path: Path, commit: str, path: str, blob: str) -> None:
    """Point ``snapshots/<commit>/<path>`` at ``blobs/<blob>`` with a relative link, as
    huggingface_hub does, so a moved cache stays whole."""
    link = repo_path / "snapshots" / commit / check_relative(path)
    link.parent.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(repo_path / "blobs" / blob, link.parent)
    if link.is_symlink() and os.readlink(link) == target:
        return
    temporary = link.with_name(f".{link.name}.mlxs-link")
    temporary.unlink(missing_ok=True)
    os.symlink(target, temporary)
    os.replace(temporary, link)


def write_ref(repo_path: Path, revision: str, commit: str) -> None:
    """``refs/<revision>`` = commit, written atomically (a reader never sees it empty)."""
    if revision == commit:
        return
    ref = repo_path / "refs" / check_revision(revision)
    ref.parent.mkdir(parents=True, exist_ok=True)
    temporary = ref.with_name(f".{ref.name}.mlxs-ref")
    temporary.write_text(commit)
    os.replace(temporary, ref)


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (symlinks not followed: blobs count once)."""
    total = 0
    for entry in path.rglob("*"):
        if entry.is_file() and not entry.is_symlink():
            total += entry.stat().st_size
    return total
