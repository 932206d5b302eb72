"""The sync job's mx.distributed leg: targets that share a multi-host group with the source
get their files over that group's link (``share_path.share_over_group``, mlx_lm.share's
functions), staged where each node asked; the job then checks and renames them as for SFTP.

A share that fails (a rank lost, the deadline passed) is logged and its nodes fall back to
SFTP: the bytes still arrive, over the slower path.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from actors.protocol.model_messages import SyncManifest, SyncNeeds
from supervisor.config.spec import ClusterSpec, GroupSpec
from supervisor.models.asks import JobFailed
from supervisor.models.share_path import ShareFile, can_share, share_over_group
from supervisor.models.sync_job import Meter, Share, SyncPlan
from supervisor.state import ClusterState

log = structlog.get_logger()

SHARE_FLOOR = 20e6  # bytes/s below which a share is taken for stuck (the deadline's basis)


def group_share(
    state: ClusterState,
    spec: ClusterSpec,
    groups: Callable[[], list[GroupSpec]],
    timeout: float,
) -> Share:
    """A ``Share`` over the groups running now; ``timeout`` s plus the bytes at SHARE_FLOOR
    bound each share."""

    async def share(
        plan: SyncPlan, manifest: SyncManifest, needs: dict[str, SyncNeeds]
    ) -> dict[str, int]:
        by_path = {f.path: f for f in manifest.files}
        sent: dict[str, int] = {}
        for group in groups():
            served = [n for n in needs if n not in sent]
            nodes = [n for n in served if can_share(group, plan.source, [n])]
            if not nodes:
                continue
            wanted: dict[str, dict[str, str]] = {}
            for node in nodes:
                for f in needs[node].missing:
                    wanted.setdefault(f.path, {})[node] = f.location
            files = [
                ShareFile(by_path[p].size, {plan.source: by_path[p].location, **where})
                for p, where in wanted.items()
            ]
            meters = {
                n: Meter(
                    state,
                    plan.job_id,
                    n,
                    "transfer",
                    sum(f.size for f in needs[n].missing),
                    "mx.distributed",
                )
                for n in nodes
            }

            def progress(nbytes: int, meters: dict[str, Meter] = meters) -> None:
                for meter in meters.values():  # a broadcast: every rank gets every byte
                    meter.set(min(meter.total, meter.done + nbytes))

            total = sum(f.size for f in files)
            try:
                await share_over_group(
                    spec,
                    group,
                    plan.source,
                    files,
                    deadline=timeout + total / SHARE_FLOOR,
                    progress=progress,
                )
            except JobFailed as exc:
                log.warning("model_share_failed", group=group.name, error=str(exc))
                continue  # these nodes get their files over SFTP
            for node in nodes:
                sent[node] = meters[node].total
                meters[node].set(meters[node].total, force=True)
        return sent

    return share
