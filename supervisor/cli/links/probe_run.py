"""One probe run of one group for `supervisor rdma-test`: spawn, collect, end every rank.

The ranks run ``python -m actors probe``, which loads no model, as a transient group
(``supervisor.supervision.transient``: spawned as the group's generation ranks would be,
every rank ended by PID within the deadline). Rank 0 reports; a rank that hangs or dies
makes the group's links "down", never a hung command.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from actors.protocol.messages import LoadProgress, Message, ProbeReport
from supervisor.config.spec import ClusterSpec, GroupSpec
from supervisor.supervision.transient import Transient, TransientRun, node_name, run_transient

log = structlog.get_logger()

__all__ = ["ProbeOptions", "ProbeOutcome", "node_name", "probe_group", "ring_links", "verdict"]


@dataclass(frozen=True)
class ProbeOptions:
    sizes: tuple[int, ...]
    rounds: int
    stress: bool
    deadline: float  # s from the first spawn to rank 0's report


@dataclass
class ProbeOutcome:
    """What one group's run found: ``status`` passed | failed | down."""

    group: str
    backend: str
    nodes: list[str]
    links: list[tuple[str, str]]
    status: str = "down"
    reason: str = ""
    report: ProbeReport | None = None
    seconds: float = 0.0
    pids: dict[int, int] = field(default_factory=dict)  # rank -> PID on its host


def ring_links(nodes: list[str]) -> list[tuple[str, str]]:
    """The links an all_sum over a ring crosses: each rank to the next (one for two ranks)."""
    if len(nodes) == 2:
        return [(nodes[0], nodes[1])]
    return [(nodes[i], nodes[(i + 1) % len(nodes)]) for i in range(len(nodes))]


def verdict(report: ProbeReport) -> tuple[str, str]:
    """passed, or failed with the first failed check's line."""
    if not report.correct:
        return "failed", f"correctness: {report.correctness}"
    if report.stress_failed:
        return "failed", (
            f"stress: {report.stress_failed} of {report.stress_rounds} rounds wrong; "
            f"{report.stress_detail}"
        )
    return "passed", ""


async def probe_group(
    spec: ClusterSpec,
    group: GroupSpec,
    options: ProbeOptions,
    on_progress: Callable[[str, float, str], None] = lambda stage, fraction, detail: None,
) -> ProbeOutcome:
    """Run the probe on ``group``; never longer than its deadline plus the kill timeout."""
    nodes = [node_name(h) for h in group.hosts]
    outcome = ProbeOutcome(group.name, group.backend, nodes, ring_links(nodes))
    settings = {
        "sizes": ",".join(str(s) for s in options.sizes),
        "rounds": str(options.rounds),
        "stress": "1" if options.stress else "0",
    }
    reports: list[ProbeReport] = []  # rank 0's one report

    def heard(run: TransientRun, rank: int, msg: Message) -> None:
        if isinstance(msg, LoadProgress) and msg.stage == "joined":
            if len(run.joined) == run.size:
                on_progress("joined", 0.0, f"{run.size} ranks joined the group")
        elif isinstance(msg, LoadProgress):
            on_progress(msg.stage, msg.fraction, msg.detail)
        elif isinstance(msg, ProbeReport) and not reports:
            reports.append(msg)

    what = Transient(
        kind="probe",
        options=[settings] * group.world_size,
        deadline=options.deadline,
        starting_port=group.starting_port,  # rdma-test runs when the cluster does not
        close_ssh=True,
    )
    run = await run_transient(spec, group, what, heard, done=lambda: bool(reports))
    outcome.pids, outcome.seconds = run.pids, run.seconds
    if reports:  # a report stands, whatever a rank said after it
        outcome.report = reports[0]
        outcome.status, outcome.reason = verdict(reports[0])
    else:
        outcome.status, outcome.reason = "down", run.error
    log.info("probe_group_done", group=group.name, status=outcome.status, reason=outcome.reason)
    return outcome
