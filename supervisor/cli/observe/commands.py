"""`supervisor status | nodes | monitor`: the cluster for a person at a terminal (rich tables,
memory bars in the health colours) or, with ``--json``, for a script.

All three read ``GET /api/cluster/status``; `monitor` polls it every ``--interval`` seconds
and redraws in place until Ctrl-C. A supervisor on this machine is asked with its admin key
(found as for `stop`), so user names and paths show unredacted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error

from rich.console import Console
from rich.live import Live
from rich.text import Text

from supervisor.cli import admin as cli_admin
from supervisor.cli.admin import DEFAULT_URL, EXIT_REFUSED
from supervisor.cli.observe import render as render

COMMANDS = ("status", "nodes", "monitor")
REQUEST_TIMEOUT = 5.0  # seconds one status request may take before the server counts as lost
MIN_INTERVAL = 0.1


def add_parsers(sub) -> None:
    for name, text in (
        ("status", "cluster status: nodes, memory, groups, actors, links, totals"),
        ("nodes", "nodes and their actors"),
        ("monitor", "the status view, refreshed live until Ctrl-C"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--url", default=DEFAULT_URL, help="the supervisor's API URL")
        p.add_argument(
            "--json",
            action="store_true",
            help="print JSON for scripts (monitor: one status body per line)",
        )
        p.add_argument("--api-key", default=None)
        cli_admin.add_admin_key(p)  # with it, status shows user names and paths
        if name == "monitor":
            p.add_argument(
                "--interval", type=_interval, default=1.0, help="seconds between refreshes"
            )


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not MIN_INTERVAL <= value <= 3600:
        raise argparse.ArgumentTypeError(f"interval {value:g} is outside {MIN_INTERVAL}..3600")
    return value


def run(args: argparse.Namespace) -> int:
    url = cli_admin.base(args.url)
    key = cli_admin.admin_key(args, url) or args.api_key
    if args.command == "monitor":
        return _monitor(args, url, key)
    status = cli_admin.ask(
        args.command, "GET", url + "/api/cluster/status", None, key, REQUEST_TIMEOUT
    )
    if isinstance(status, int):
        return status
    if args.json:
        print(json.dumps(status if args.command == "status" else status["nodes"], indent=2))
        return 0
    console = Console(highlight=False)
    parts = render.status_parts(status) if args.command == "status" else render.nodes_parts(status)
    for part in parts:
        # A note is a whole line even past the terminal's width: grep finds it in one piece.
        console.print(part, soft_wrap=isinstance(part, Text))
    return 0


class _Poll:
    """One status request: the body, or why not in one line (and whether to stop)."""

    def __init__(self, url: str, key: str | None):
        self.url, self.key = url + "/api/cluster/status", key

    def __call__(self) -> tuple[dict | None, str, int | None]:
        try:
            code, body = cli_admin.send("GET", self.url, None, self.key, REQUEST_TIMEOUT)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return None, f"unreachable ({reason}), retrying", None
        if 400 <= code < 500:  # a refused key stays refused: say so once and stop
            return None, f"monitor refused: {cli_admin.message(code, body)}", EXIT_REFUSED
        if code >= 500:
            return None, f"the supervisor answered HTTP {code}, retrying", None
        return body, "", None


def _monitor(args: argparse.Namespace, url: str, key: str | None) -> int:
    poll = _Poll(url, key)
    try:
        if args.json:
            return _monitor_json(poll, args.interval)
        return _monitor_live(poll, url, args.interval)
    except KeyboardInterrupt:  # Ctrl-C is how a monitor ends: no traceback
        return 0


def _monitor_json(poll: _Poll, interval: float) -> int:
    while True:
        status, trouble, stop = poll()
        if stop is not None:
            print(f"supervisor: {trouble}", file=sys.stderr)
            return stop
        line = status if status is not None else {"error": trouble, "time": time.time()}
        print(json.dumps(line), flush=True)
        time.sleep(interval)  # the pace of the refresh, not a wait on anything


def _monitor_live(poll: _Poll, url: str, interval: float) -> int:
    console = Console(highlight=False)
    last: dict | None = None  # the last body seen: kept on screen while the server is lost
    previous: dict | None = None  # the body before it, for tok/s between refreshes
    with Live(console=console, auto_refresh=False, screen=False) as live:
        while True:
            status, trouble, stop = poll()
            if stop is not None:
                live.stop()
                print(f"supervisor: {trouble}", file=sys.stderr)
                return stop
            if status is not None:
                previous, last = last, status
            header = Text(
                f"supervisor monitor · {url} · {time.strftime('%H:%M:%S')} · "
                f"every {interval:g}s · Ctrl-C to quit",
                style="dim",
            )
            trouble = f"{url}: {trouble}" if trouble else ""
            live.update(render.monitor_view(last, previous, header, trouble), refresh=True)
            time.sleep(interval)  # the pace of the refresh, not a wait on anything
