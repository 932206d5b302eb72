"""`supervisor doctor HOSTFILE`: a pre-flight check that starts nothing.

Every host is probed at once (``supervisor.doctor.gather``), judged by pure checks
(``supervisor.doctor.checks``) and drawn here: one table, hosts side by side with this
machine first (the versions to match), problems in red with a one-line fix each below.
Exit 0 when nothing is a problem (warnings allowed), 1 otherwise, 2 for a bad hostfile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

import structlog
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from supervisor.doctor.checks import ROWS
from supervisor.doctor.report import Report

COMMAND = "doctor"
EXIT_USAGE = 2
STYLE = {"ok": "green", "warn": "yellow", "problem": "bold red", "info": "", "skip": "dim"}
PIPED_WIDTH = 240
MARK = {"ok": "✓ ", "warn": "! ", "problem": "✗ ", "info": "", "skip": ""}


def add_parser(sub) -> None:
    p = sub.add_parser(
        COMMAND, help="check every host before start (SSH, python, versions, model, ports...)"
    )
    p.add_argument("hostfile", help="hostfile JSON (as for start)")
    p.add_argument("--model", help="model spec to check instead of the hostfile's")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from supervisor.config.groups import GroupConfigError, validate_groups
    from supervisor.config.load import HostfileError, apply_overrides, load_hostfile

    try:
        spec = apply_overrides(load_hostfile(args.hostfile), model=args.model)
        validate_groups(spec)
    except HostfileError as exc:
        print(f"supervisor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except GroupConfigError as exc:
        print(f"supervisor: {spec.source}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # The report says every failure itself; the SSH layer's log lines would only repeat it.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    report = _gather(spec, show_progress=not args.json and sys.stderr.isatty())
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        # Piped (a file, grep, CI log): as wide as the table needs, not a guessed 80 columns.
        console = Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)
        for part in render(report):  # fix lines unwrapped: one line each, for grep too
            console.print(part, soft_wrap=not isinstance(part, Table))
    return 0 if report.clean else 1


def _gather(spec, *, show_progress: bool) -> Report:
    from supervisor.doctor.gather import gather_all
    from supervisor.doctor.report import build_report
    from supervisor.ssh.connection import close_connections

    async def probe() -> Report:
        reference, hosts = await gather_all(spec)
        return build_report(spec, reference, hosts)

    try:
        if not show_progress:
            return asyncio.run(probe())
        with Console(stderr=True).status(f"probing {len(spec.nodes)} host(s)…"):
            return asyncio.run(probe())
    finally:
        close_connections()


def render(report: Report) -> list[Table | Text]:
    """The table, then one line per problem or warning with its fix, then the verdict."""
    table = Table(box=box.SIMPLE_HEAD, show_lines=False, title="supervisor doctor")
    table.add_column("check", style="bold")
    for column in report.columns:
        table.add_column(f"{column.name}\n[dim]{column.where}[/dim]", overflow="fold")
    for row in ROWS:
        cells = [_cell(column.verdicts[row]) for column in report.columns]
        table.add_row(row, *cells)
    lines: list[Table | Text] = [table]
    for finding in report.findings:
        v = finding.verdict
        line = Text(f"{MARK[v.status]}{finding.node} {finding.row}: ", style=STYLE[v.status])
        line.append(v.detail or v.text)
        lines.append(line)
        lines.append(Text(f"    fix: {v.fix}"))
    warnings = len(report.findings) - report.problems
    if report.clean:
        summary = Text("all checks passed", style="green")
        if warnings:
            summary.append(f" ({warnings} warning(s))", style="yellow")
    else:
        summary = Text(f"{report.problems} problem(s)", style="bold red")
        if warnings:
            summary.append(f", {warnings} warning(s)", style="yellow")
    lines.append(summary)
    return lines


def _cell(verdict) -> Text:
    return Text(MARK[verdict.status] + verdict.text, style=STYLE[verdict.status])
