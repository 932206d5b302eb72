"""`supervisor logs`: the supervisor's recent log lines (its own and its actors'), read from
``GET /api/cluster/logs``; with ``-f``, followed live over Server-Sent Events until Ctrl-C.

Lines print as ``time level event key=value ...`` (coloured on a terminal), or with ``--json``
one JSON object per line, as the supervisor wrote them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime

from supervisor.cli import admin as cli_admin
from supervisor.cli.credentials import API_KEY_ENV
from supervisor.logs.ring import LEVELS

COMMAND = "logs"
EXIT_USAGE = 2
DEFAULT_LINES, DEFAULT_FOLLOW_LINES = 100, 10
MAX_LINES = 1_000_000
# The server sends a comment after 10 s of quiet; three missed mean it is gone.
FOLLOW_SILENCE = 35.0
_STYLES = {"debug": "dim", "info": "green", "warning": "yellow", "error": "red"}
_FIRST = ("actor_id", "node", "request_id")  # shown right after the event
_HIDDEN = {"timestamp", "level", "event"}


def _lines(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of lines, got {text!r}") from None
    if not 1 <= value <= MAX_LINES:
        raise argparse.ArgumentTypeError(f"{value} is outside 1..{MAX_LINES}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser(COMMAND, help="the supervisor's recent log lines, or follow them (-f)")
    p.add_argument(
        "-n",
        "--lines",
        type=_lines,
        default=None,
        help=f"how many of the newest lines (default {DEFAULT_LINES}; "
        f"with -f, {DEFAULT_FOLLOW_LINES} before following)",
    )
    p.add_argument("-f", "--follow", action="store_true", help="print new lines until Ctrl-C")
    p.add_argument("--actor", help="only the lines of this actor id")
    p.add_argument("--node", help="only the lines of this node")
    p.add_argument("--request", help="only the lines of this request id")
    p.add_argument("--level", type=str.lower, choices=LEVELS, help="this level and above")
    p.add_argument("--url", default=cli_admin.DEFAULT_URL, help="the supervisor's API URL")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--api-key", default=None, help=f"inference key (default: ${API_KEY_ENV})")
    cli_admin.add_admin_key(p)  # with it (found by itself on this machine): names and paths


def run(args: argparse.Namespace) -> int:
    url = cli_admin.base(args.url)
    key = cli_admin.admin_key(args, url) or args.api_key or os.environ.get(API_KEY_ENV)
    limit = args.lines or (DEFAULT_FOLLOW_LINES if args.follow else DEFAULT_LINES)
    query = {"n": limit, "actor": args.actor, "node": args.node, "request": args.request}
    query |= {"level": args.level, "follow": "true" if args.follow else None}
    address = f"{url}/api/cluster/logs?" + urllib.parse.urlencode(
        {k: v for k, v in query.items() if v is not None}
    )
    show = _printer(args.json)
    try:
        if args.follow:
            return _follow(url, address, key, show)
        try:
            code, answer = cli_admin.send("GET", address, None, key, 10)
        except (urllib.error.URLError, OSError) as exc:
            return cli_admin.unreachable(url, exc)
        if code >= 400:
            print(
                f"supervisor: {COMMAND} refused: {cli_admin.message(code, answer)}", file=sys.stderr
            )
            return EXIT_USAGE if code < 500 else 1
        for line in answer:
            show(line)
        return 0
    except KeyboardInterrupt:  # Ctrl-C is how -f ends
        return 0
    except BrokenPipeError:  # `supervisor logs | head`
        sys.stderr.close()  # nothing more to say, and nothing to flush at exit
        return 0


def _follow(url: str, address: str, key: str | None, show) -> int:
    request = urllib.request.Request(address, headers={"Accept": "text/event-stream"})
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=FOLLOW_SILENCE) as response:
            for line in _events(response):
                show(line)
    except urllib.error.HTTPError as exc:
        try:
            answer = json.loads(exc.read() or b"{}")
        except ValueError:
            answer = {}
        reason = cli_admin.message(exc.code, answer)
        print(f"supervisor: {COMMAND} refused: {reason}", file=sys.stderr)
        return EXIT_USAGE if exc.code < 500 else 1
    except TimeoutError:
        print(
            f"supervisor: nothing from {url} for {FOLLOW_SILENCE:.0f} s, "
            "not even a heartbeat; it may have stopped",
            file=sys.stderr,
        )
        return 1
    except (urllib.error.URLError, OSError) as exc:
        return cli_admin.unreachable(url, exc)
    print("supervisor: the log stream ended (the supervisor stopped?)", file=sys.stderr)
    return 1


def _events(response) -> Iterator[dict]:
    """The ``log`` events of an SSE body, as dicts; comments (heartbeats) skipped."""
    kind, data = "message", []
    for raw in response:
        text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not text:
            if data and kind == "log":
                try:
                    yield json.loads("\n".join(data))
                except ValueError:
                    pass
            kind, data = "message", []
        elif text.startswith(":"):
            continue
        else:
            name, _, value = text.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                kind = value
            elif name == "data":
                data.append(value)


def _printer(as_json: bool):
    if as_json:
        return lambda line: print(json.dumps(line, ensure_ascii=False), flush=True)
    if sys.stdout.isatty():
        from rich.console import Console

        console = Console(highlight=False, soft_wrap=True)
        return lambda line: console.print(styled(line))
    return lambda line: print(human(line), flush=True)


def human(line: dict) -> str:
    """``time level event key=value ...`` in plain text."""
    return " ".join(text for text, _style in _parts(line))


def styled(line: dict):
    """The same words, coloured for a terminal (a rich ``Text``)."""
    from rich.text import Text

    out = Text()
    for i, (text, style) in enumerate(_parts(line)):
        out.append(" " if i else "")
        out.append(text, style=style)
    return out


def _parts(line: dict) -> list[tuple[str, str]]:
    level = str(line.get("level", "info"))
    parts = [
        (_clock(line.get("timestamp")), "dim"),
        (f"{level:<7}", _STYLES.get(level, "bold red")),
        (str(line.get("event", "")), "bold"),
    ]
    keys = [k for k in _FIRST if k in line] + [
        k for k in line if k not in _HIDDEN and k not in _FIRST
    ]
    for key in keys:
        if key == "source" and line.get(key) == "actor" and "actor_id" in line:
            continue  # said by actor_id already
        parts.append((f"{key}={_value(line[key])}", ""))
    return parts


def _clock(stamp: object) -> str:
    """Local wall-clock time with milliseconds; anything unreadable as it came."""
    try:
        return datetime.fromisoformat(str(stamp)).astimezone().strftime("%H:%M:%S.%f")[:-3]
    except ValueError:
        return str(stamp)


def _value(value: object) -> str:
    if isinstance(value, str):
        plain = value and not any(c.isspace() or c in "\"'=" for c in value)
        return value if plain else json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
