"""`supervisor rdma-test HOSTFILE`: prove each multi-rank group's links, no model loaded.

For each group of two or more ranks (or the one ``--group`` names), one after another:
probe ranks spawned as the group's own would be (``supervisor.cli.links.probe_run``) check an
all_sum element by element, time a 1 KiB all_sum (latency), sweep the bandwidth over
``--sizes`` and, with ``--stress``, check 100 rounds of the largest size. A table like the
seed's ``make rdma-test`` (or ``--json``); exit 0 when every check of every group passed,
1 otherwise (a group down included), 2 for bad input.
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
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from supervisor.cli.arguments import seconds
from supervisor.cli.links.probe_run import ProbeOptions, ProbeOutcome, probe_group
from supervisor.config.load import HostfileError, load_hostfile
from supervisor.config.spec import ClusterSpec, GroupSpec

COMMAND = "rdma-test"
EXIT_FAILED = 1
EXIT_USAGE = 2
DEFAULT_SIZES = "4K,256K,4M,64M"
DEFAULT_DEADLINE = 120.0  # s per group; with --stress, STRESS_DEADLINE
STRESS_DEADLINE = 600.0
_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1 << 20, "MB": 1 << 20}
_UNITS |= {"MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30}
MAX_SIZE = 1 << 30  # one all_sum of more than 1 GiB is a typo, not a probe


def parse_size(text: str) -> int:
    """``4K`` → 4096, ``64M`` → 67108864 (binary units, as the seed's sizes), ``100`` → 100."""
    raw = text.strip().upper()
    digits = raw.rstrip("KMGIB")
    unit = raw[len(digits) :]
    if not digits.isdigit() or unit not in _UNITS:
        raise argparse.ArgumentTypeError(
            f"size {text.strip()!r} is not a byte count like 4096, 4K, 256K, 4M or 64M"
        )
    value = int(digits) * _UNITS[unit]
    if not 4 <= value <= MAX_SIZE:
        raise argparse.ArgumentTypeError(f"size {text.strip()!r} is outside 4 bytes .. 1G")
    return value


def parse_sizes(text: str) -> tuple[int, ...]:
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("expected sizes like 4K,256K,4M,64M")
    return tuple(parse_size(p) for p in parts)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def add_parser(sub) -> None:
    p = sub.add_parser(COMMAND, help="check each multi-host group's links: correctness, GB/s")
    p.add_argument("hostfile", help="hostfile JSON (the one `supervisor start` takes)")
    p.add_argument("--group", help="probe only this group (default: every multi-rank group)")
    p.add_argument(
        "--sizes",
        type=parse_sizes,
        default=parse_sizes(DEFAULT_SIZES),
        help=f"bandwidth sweep sizes (default {DEFAULT_SIZES})",
    )
    p.add_argument("--rounds", type=_positive_int, default=20, help="timed rounds per figure")
    p.add_argument(
        "--stress", action="store_true", help="also 100 checked rounds of the largest size"
    )
    p.add_argument(
        "--deadline",
        type=seconds("deadline"),
        help=f"seconds per group before its ranks are killed and its links reported down "
        f"(default {DEFAULT_DEADLINE:g}, {STRESS_DEADLINE:g} with --stress)",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--verbose", action="store_true", help="log lines (JSON) on stderr")


def select_groups(spec: ClusterSpec, name: str | None) -> list[GroupSpec]:
    """The groups to probe; a ValueError (one line) when there is none or the name is wrong."""
    if name is not None:
        named = [g for g in spec.groups if g.name == name]
        if not named:
            known = ", ".join(g.name for g in spec.groups)
            raise ValueError(f'{spec.source}: no group named "{name}" (groups: {known})')
        if named[0].world_size < 2:
            raise ValueError(
                f'{spec.source}: group "{name}" has one rank: there is no link to test'
            )
        return named
    groups = [g for g in spec.groups if g.world_size >= 2]
    if not groups:
        raise ValueError(f"{spec.source}: no group has two or more ranks: no link to test")
    return groups


def run(args: argparse.Namespace) -> int:
    try:
        spec = load_hostfile(args.hostfile)
        groups = select_groups(spec, args.group)
    except (HostfileError, ValueError) as exc:
        print(f"supervisor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _configure_logging(args.verbose)
    deadline = args.deadline or (STRESS_DEADLINE if args.stress else DEFAULT_DEADLINE)
    options = ProbeOptions(args.sizes, args.rounds, args.stress, deadline)
    err = Console(stderr=True)
    outcomes = asyncio.run(_probe_all(spec, groups, options, err))
    if args.json:
        print(json.dumps(as_json(outcomes, options), indent=2))
    else:
        out = Console()
        if not out.is_terminal:
            out = Console(width=120)  # a file or a pipe: no wrapped lines for greps
        for outcome in outcomes:
            out.print(render(outcome, options))
    return 0 if all(o.status == "passed" for o in outcomes) else EXIT_FAILED


async def _probe_all(
    spec: ClusterSpec, groups: list[GroupSpec], options: ProbeOptions, console: Console
) -> list[ProbeOutcome]:
    """One group after another: groups may share machines, and each must have its link to
    itself while measured."""
    outcomes = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[stage]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        for group in groups:
            task = bar.add_task(f"group {group.name}", total=1.0, stage="spawning ranks")

            def moved(stage: str, fraction: float, detail: str, task=task) -> None:
                bar.update(task, completed=fraction, stage=f"{stage}: {detail}"[:60])

            outcomes.append(await probe_group(spec, group, options, moved))
            bar.update(task, completed=1.0, stage=outcomes[-1].status)
    return outcomes


def _configure_logging(verbose: bool) -> None:
    """Logs go to stderr (stdout is the table or the JSON): warnings, or everything."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.INFO if verbose else logging.ERROR
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def human_size(nbytes: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if nbytes >= scale and nbytes % scale == 0:
            return f"{nbytes // scale} {unit}"
    return f"{nbytes} B"


def as_json(outcomes: list[ProbeOutcome], options: ProbeOptions) -> dict:
    """The results for scripts: ``passed`` and one entry per group (figures null when down)."""
    return {
        "passed": all(o.status == "passed" for o in outcomes),
        "rounds": options.rounds,
        "groups": [_group_json(o) for o in outcomes],
    }


def _group_json(o: ProbeOutcome) -> dict:
    r = o.report
    return {
        "group": o.group,
        "backend": o.backend,
        "nodes": o.nodes,
        "links": [{"a": a, "b": b, "up": o.status != "down"} for a, b in o.links],
        "status": o.status,
        "reason": o.reason,
        "seconds": round(o.seconds, 3),
        "correct": r.correct if r else None,
        "correctness": r.correctness if r else None,
        "latency_us": r.latency_us if r else None,
        "bandwidth": [
            {"bytes": b.nbytes, "avg_gbps": b.avg_gbps, "peak_gbps": b.peak_gbps}
            for b in (r.bandwidth if r else [])
        ],
        "stress": (
            {"rounds": r.stress_rounds, "failed": r.stress_failed, "detail": r.stress_detail}
            if r and r.stress_rounds
            else None
        ),
    }


STATUS_STYLE = {"passed": "green", "failed": "red", "down": "red"}


def render(o: ProbeOutcome, options: ProbeOptions) -> Table:
    """One group: its links and status in the title, a row per check (the seed's table)."""
    links = ", ".join(f"{a} ↔ {b}" for a, b in o.links)
    title = Text.assemble(
        (f"group {o.group}", "bold"),
        f" · {o.backend} · {links} · ",
        (o.status if o.status != "down" else "links down", STATUS_STYLE[o.status]),
    )
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for column in ("check", "size", "result", "avg", "peak"):
        left = column in ("check", "result")
        table.add_column(column, justify="left" if left else "right", no_wrap=not left)
    r = o.report
    if r is None:
        table.add_row("links", "", Text(f"✗ down: {o.reason}", style="red"), "", "")
        return table
    mark = Text("✓", style="green") if r.correct else Text("✗", style="red")
    table.add_row("correctness", "", Text.assemble(mark, " ", r.correctness), "", "")
    table.add_row("latency", "1 KB", f"median of {options.rounds}", f"{r.latency_us:.1f} µs", "")
    for b in r.bandwidth:
        table.add_row(
            "bandwidth",
            human_size(b.nbytes),
            "",
            f"{b.avg_gbps:.2f} GB/s",
            f"{b.peak_gbps:.2f} GB/s",
        )
    if r.stress_rounds:
        ok = r.stress_failed == 0
        said = f"{r.stress_rounds - r.stress_failed}/{r.stress_rounds} rounds exact" + (
            "" if ok else f"; {r.stress_detail}"
        )
        mark = Text("✓ ", style="green") if ok else Text("✗ ", style="red")
        table.add_row("stress", human_size(max(options.sizes)), Text.assemble(mark, said), "", "")
    return table
