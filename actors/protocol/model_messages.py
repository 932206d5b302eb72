"""What the supervisor and a node's ``sync`` actor say to each other about models on disk.

Every ask carries a ``request_id`` the supervisor picks; every reply and progress message
carries it back, so the supervisor's ``ActorHandle.exchange`` routes them to the asker like a
generation stream. One ask ends with exactly one terminal reply (``SYNC_TERMINAL``), or
``SyncFailed``.

A model on a node is a repo in that node's huggingface_hub cache (``models_dir``): blobs named
by the hub's ETag under ``models--org--name/blobs/``, a snapshot of symlinks per commit, and
``refs/<revision>`` holding the commit. Files move between nodes as blobs: a receiving node is
told where to stage each one (``SyncNeeds``) and checks its sha256 before renaming it into
place (``SyncCommit``).
"""

from __future__ import annotations

from typing import Literal

import msgspec


class _SyncMsg(msgspec.Struct, frozen=True, tag=True, tag_field="t", omit_defaults=True):
    pass


class ModelFile(msgspec.Struct, frozen=True, omit_defaults=True):
    """One file of a model snapshot.

    ``path``: relative to the snapshot, "/"-separated. ``blob``: its blob's name in the cache
    (the hub's ETag: sha256 for LFS files, git's blob sha1 otherwise). ``location``: an
    absolute path on the node that sent this entry (the source's blob; in ``SyncNeeds``,
    where the receiver wants the bytes staged).
    """

    path: str
    size: int
    sha256: str = ""
    blob: str = ""
    location: str = ""


class LocalModel(msgspec.Struct, frozen=True, omit_defaults=True):
    """A model repo found in a node's cache, as that node's disk says it is."""

    repo: str  # "org/name"
    commit: str  # the snapshot's commit hash
    path: str  # the snapshot directory (what mlx_lm.load gets)
    size: int  # bytes of the snapshot's files (blobs shared by two commits count once)
    files: int
    complete: bool  # config.json, tokenizer and every weight file the index names are here
    missing: list[str] = []  # what a partial model lacks
    refs: list[str] = []  # the revisions pointing at this commit ("main", ...)
    modified: float = 0.0  # unix seconds, the newest file
    quantization: str = ""  # e.g. "4bit" (config.json "quantization"), "" when not quantized
    architecture: str = ""  # config.json "architectures"[0] or "model_type"
    model_type: str = ""
    context_length: int = 0


# ----------------------------------------------------------------- supervisor -> sync actor


class SyncScan(_SyncMsg, frozen=True):
    """List the models on this node's disk: answered by ``SyncInventory``."""

    request_id: str


class SyncDownload(_SyncMsg, frozen=True):
    """Download ``repo`` at ``revision`` from the hub into this node's cache.

    Progress is ``SyncProgress`` (phase "download", then "hash"); the answer is the snapshot's
    ``SyncManifest``. Fails before any byte moves when the files do not fit the free disk.
    """

    request_id: str
    repo: str
    revision: str = "main"
    allow_patterns: list[str] = []  # [] : what MLX needs (actors.models.resolve)
    # True: download nothing; answer at once with the hub's file list (sizes, blob = ETag
    # name, no sha256) and commit, for the supervisor's pre-flight of the other nodes.
    dry_run: bool = False


class SyncManifestAsk(_SyncMsg, frozen=True):
    """Hash the files of ``repo``@``revision`` already on this node: ``SyncManifest``."""

    request_id: str
    repo: str
    revision: str = "main"  # a ref name or a commit hash


class SyncVerify(_SyncMsg, frozen=True):
    """Which of ``files`` (the source's manifest) does this node lack or hold corrupted?

    Answered by ``SyncNeeds``: the files to send, each with the path to stage it at.
    """

    request_id: str
    repo: str
    commit: str
    files: list[ModelFile]


class SyncCommit(_SyncMsg, frozen=True):
    """The staged ``files`` (``location``: where each was staged) are complete: check their
    sha256, rename them into the cache, link the snapshot and point ``refs/<revision>`` at
    ``commit``. Answered by ``SyncCommitted``; the files that failed their check are named
    there and removed."""

    request_id: str
    repo: str
    commit: str
    revision: str
    files: list[ModelFile]  # every file of the snapshot; staged ones have a location


class SyncDelete(_SyncMsg, frozen=True):
    """Remove ``repo`` (every revision) from this node's cache: ``SyncDeleted``."""

    request_id: str
    repo: str


# ----------------------------------------------------------------- sync actor -> supervisor


class SyncProgress(_SyncMsg, frozen=True):
    """Long work moving along: bytes ``done`` of ``total`` in ``phase``."""

    request_id: str
    phase: Literal["download", "hash", "verify", "commit", "receive"]
    done: int
    total: int
    detail: str = ""


class SyncInventory(_SyncMsg, frozen=True):
    request_id: str
    models_dir: str
    free_bytes: int
    models: list[LocalModel] = []


class SyncManifest(_SyncMsg, frozen=True):
    """A complete snapshot on this node: its commit and every file with its sha256."""

    request_id: str
    repo: str
    commit: str
    files: list[ModelFile]
    downloaded_bytes: int = 0  # what this download fetched from the hub (0: all present)


class SyncNeeds(_SyncMsg, frozen=True):
    """The files this node must be sent (``location``: where to stage each), and its disk."""

    request_id: str
    models_dir: str
    free_bytes: int
    missing: list[ModelFile] = []


class SyncCommitted(_SyncMsg, frozen=True):
    request_id: str
    bad: list[str] = []  # paths whose staged bytes did not match their sha256


class SyncDeleted(_SyncMsg, frozen=True):
    request_id: str
    freed_bytes: int


class SyncFailed(_SyncMsg, frozen=True):
    """The ask could not be done; ``message`` is one line for the user."""

    request_id: str
    message: str


class ShareDone(_SyncMsg, frozen=True):
    """One rank of a model share over ``mx.distributed`` (``python -m actors share``) moved
    every file: ``nbytes`` sent (the source) or received, in ``seconds``. Not a reply to an
    ask: a share rank is a transient actor the supervisor spawned for this one transfer."""

    nbytes: int
    seconds: float


SyncAsk = SyncScan | SyncDownload | SyncManifestAsk | SyncVerify | SyncCommit | SyncDelete
SyncReply = (
    SyncProgress
    | SyncInventory
    | SyncManifest
    | SyncNeeds
    | SyncCommitted
    | SyncDeleted
    | SyncFailed
)
SYNC_REPLIES = frozenset(
    {
        "SyncProgress",
        "SyncInventory",
        "SyncManifest",
        "SyncNeeds",
        "SyncCommitted",
        "SyncDeleted",
        "SyncFailed",
    }
)
SYNC_TERMINAL = SYNC_REPLIES - {"SyncProgress"}

# A test switch: a node whose environment sets this reports this many free bytes.
FAKE_FREE_BYTES_ENV = "MLXS_FAKE_FREE_BYTES"
