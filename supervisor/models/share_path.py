"""Model files over a group's ``mx.distributed`` link: ``mlx_lm.share`` on a transient group.

When the source node and the nodes that need a model are ranks of one multi-host group
(ring or jaccl), the bytes travel over that group's link (Thunderbolt RDMA: up to 8 GB/s)
instead of SSH. A transient group of ``share`` actors (``actors.sync.share``) is spawned on
the group's hosts, on ports other than the serving ranks' (``ports_after_serving``); each
calls ``mlx_lm.share.share_file`` for every file in one order. A rank that needs a file
writes it to the staging path its sync actor named (the sha256 check and rename stay the
sync actor's ``SyncCommit``); a rank that needs it not reads it into /dev/null, since every
rank takes part in an ``all_sum``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from actors.protocol.messages import LoadProgress, Message
from actors.protocol.model_messages import ShareDone
from supervisor.config.spec import ClusterSpec, GroupSpec
from supervisor.models.asks import JobFailed
from supervisor.supervision.transient import (
    Transient,
    TransientRun,
    node_name,
    ports_after_serving,
    run_transient,
)

log = structlog.get_logger()

BACKENDS = ("ring", "jaccl", "jaccl-ring")


@dataclass(frozen=True)
class ShareFile:
    """One file to share: ``locations`` maps node name -> absolute path on that node (the
    source's blob; each receiving node's staging path). Nodes absent receive and discard."""

    size: int
    locations: dict[str, str]


def can_share(group: GroupSpec, source: str, targets: list[str]) -> bool:
    """Whether ``group`` links ``source`` to every node of ``targets`` over mx.distributed."""
    nodes = {node_name(h) for h in group.hosts}
    return (
        group.world_size > 1
        and group.backend in BACKENDS
        and source in nodes
        and all(t in nodes for t in targets)
    )


def share_options(nodes: list[str], source: str, files: list[ShareFile]) -> list[dict[str, str]]:
    """Each rank's ActorConfig options: the sending rank and its own path of every file."""
    src = str(nodes.index(source))
    return [
        {
            "src": src,
            "files": json.dumps([{"size": f.size, "path": f.locations.get(n, "")} for f in files]),
        }
        for n in nodes
    ]


async def share_over_group(
    spec: ClusterSpec,
    group: GroupSpec,
    source: str,
    files: list[ShareFile],
    *,
    deadline: float,
    progress: Callable[[int], None],
) -> int:
    """Send ``files`` from ``source`` to the nodes their ``locations`` name; bytes sent.

    ``progress(n)`` is called with the bytes moved since its last call (at most ~4 times a
    second). Raises JobFailed (one line naming the group, and the rank when one failed) on
    a failure or after ``deadline`` s; every rank spawned is ended by PID either way.
    """
    nodes = [node_name(h) for h in group.hosts]
    where = f'group "{group.name}"'
    if group.world_size < 2 or group.backend not in BACKENDS:
        raise JobFailed(f"{where}: no mx.distributed link to share over ({group.backend})")
    if source not in nodes:
        raise JobFailed(f"{where}: the source node {source} is not one of its ranks")
    strangers = sorted({n for f in files for n in f.locations} - set(nodes))
    if strangers:
        raise JobFailed(f"{where}: nodes {', '.join(strangers)} are not among its ranks")
    if any(not f.locations.get(source) for f in files):
        raise JobFailed(f"{where}: a file has no path on the source node {source}")
    total = sum(f.size for f in files)
    src = nodes.index(source)
    reported = 0
    done: dict[int, ShareDone] = {}

    def heard(run: TransientRun, rank: int, msg: Message) -> None:
        nonlocal reported
        if isinstance(msg, LoadProgress) and msg.stage == "share" and rank == src:
            now = min(total, round(msg.fraction * total))
            if now > reported:
                progress(now - reported)
                reported = now
        elif isinstance(msg, ShareDone):
            done[rank] = msg

    what = Transient(
        kind="share",
        options=share_options(nodes, source, files),
        deadline=deadline,
        env={"TQDM_DISABLE": "1"},
        starting_port=ports_after_serving(spec, group),
        awaited="end of the share",
    )
    run = await run_transient(spec, group, what, heard, done=lambda: len(done) == len(nodes))
    if run.error:
        raise JobFailed(f"{where}: share from {source} over {group.backend}: {run.error}")
    if total > reported:
        progress(total - reported)
    sent = done[src].nbytes
    seconds = max(d.seconds for d in done.values())  # the ranks' own: no spawn, no end
    log.info(
        "model_share_done",
        group=group.name,
        source=source,
        nbytes=sent,
        seconds=seconds,
        mb_per_s=round(sent / 1e6 / max(seconds, 1e-9), 1),
    )
    return sent
