"""What the CLI sends a running supervisor over HTTP, with which key: `join-token`, `stop`
of a supervisor on another machine, and the requests of `add-host | join | remove-host`.

The admin key is ``--admin-key``, else ``$MLXS_ADMIN_KEY``, else (for a supervisor on this
machine only) the file the supervisor wrote next to its pidfile.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

from supervisor.cli.credentials import CredentialError, find_admin_key

EXIT_REFUSED = 2  # a refused key or request, as a bad flag: the caller must change something
DEFAULT_URL = "http://127.0.0.1:8080"


class Refused(Exception):
    """The CLI cannot send this request (no usable key), in one line."""


def add_admin_key(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--admin-key",
        default=None,
        help="the supervisor's admin key (default: $MLXS_ADMIN_KEY, or the key file of a "
        "supervisor on this machine)",
    )


def admin_key(args: argparse.Namespace, url: str) -> str | None:
    try:
        return find_admin_key(url, args.admin_key, os.environ)
    except CredentialError as exc:
        raise Refused(str(exc)) from None


def base(address: str) -> str:
    address = address.rstrip("/")
    return address if "://" in address else f"http://{address}"


def send(
    method: str, url: str, body: dict | None, key: str | None, timeout: float
) -> tuple[int, dict]:
    """One JSON request; its status and JSON body. Raises URLError/OSError when nobody answers."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("content-type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}


def ask(
    command: str, method: str, url: str, body: dict | None, key: str | None, timeout: float
) -> dict | int:
    """The JSON answer, or the exit code once why not is said in one line on stderr
    (refused: 2, as for a bad flag; the server failed or nobody answered: 1)."""
    try:
        code, answer = send(method, url, body, key, timeout)
    except (urllib.error.URLError, OSError) as exc:
        return unreachable(url, exc)
    if code >= 400:
        print(f"supervisor: {command} refused: {message(code, answer)}", file=sys.stderr)
        return EXIT_REFUSED if code < 500 else 1
    return answer


def call(command: str, method: str, url: str, body: dict | None, key: str | None, timeout: float):
    """Send, print the JSON answer; a refusal is one line on stderr and exit code 2."""
    answer = ask(command, method, url, body, key, timeout)
    if isinstance(answer, int):
        return answer
    print(json.dumps(answer))
    return 0


def unreachable(url: str, exc: BaseException) -> int:
    reason = getattr(exc, "reason", exc)
    print(f"supervisor: no supervisor answering at {url} ({reason})", file=sys.stderr)
    return 1


def message(code: int, answer: dict) -> str:
    error = answer.get("error") if isinstance(answer, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", error))
    return str(error) if error else f"HTTP {code}"


def join_token(args: argparse.Namespace) -> int:
    """Print the `supervisor join ADDRESS --token T` line another machine runs."""
    url = base(args.url)
    key = admin_key(args, url)  # Refused: the CLI's dispatch says why, exit 2
    answer = ask("join-token", "GET", url + "/api/cluster/join-token", None, key, 10)
    if isinstance(answer, int):
        return answer
    print(answer["command"])
    if answer.get("loopback_only"):
        print(
            f"supervisor: the API listens on loopback only ({answer['address']}): other "
            'machines cannot reach it; set "api": {"host": "0.0.0.0"} (or this machine\'s '
            "address) in the hostfile, with an api_key, and restart",
            file=sys.stderr,
        )
    return 0


def stop_over_http(args: argparse.Namespace) -> int:
    """POST /api/cluster/stop, then wait until the API stops answering."""
    url = base(args.url)
    key = admin_key(args, url)  # Refused: the CLI's dispatch says why, exit 2
    if key is None:
        print(
            f"supervisor: stopping the supervisor at {url} needs its admin key; pass "
            "--admin-key or set MLXS_ADMIN_KEY",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    answer = ask("stop", "POST", url + "/api/cluster/stop", None, key, 10)
    if isinstance(answer, int):
        return answer
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            send("GET", url + "/health", None, None, 2)
        except (urllib.error.URLError, OSError) as exc:
            if isinstance(getattr(exc, "reason", exc), ConnectionError):
                print(f"supervisor: stopped ({url})")
                return 0
        time.sleep(0.2)  # polling a remote process we cannot wait on
    print(f"supervisor: {url} still answers {args.timeout:g} s after stop", file=sys.stderr)
    return 1
