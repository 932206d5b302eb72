"""`supervisor add-host | join | remove-host`: change a running cluster's members over HTTP."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request

COMMANDS = ("add-host", "join", "remove-host")


def add_parsers(sub) -> None:
    add = sub.add_parser(
        "add-host", help="add a host to the running cluster (run on the supervisor)"
    )
    add.add_argument("ssh", help="how the supervisor reaches it: alias, user@host, host:port")
    _host_options(add)
    add.add_argument("--url", default="http://127.0.0.1:8080", help="the supervisor's API URL")
    join = sub.add_parser("join", help="join this machine to a running cluster")
    join.add_argument("address", help="the supervisor's API URL or host:port")
    join.add_argument(
        "--ssh",
        default=None,
        help="how the supervisor reaches this machine (default: USER@HOSTNAME)",
    )
    _host_options(join)
    remove = sub.add_parser("remove-host", help="drain a host's groups and stop its actors")
    remove.add_argument("name", help="the node's name, as `supervisor nodes` shows it")
    remove.add_argument("--drain-timeout", type=float, default=30.0)
    remove.add_argument("--url", default="http://127.0.0.1:8080", help="the supervisor's API URL")
    for p in (add, join, remove):
        p.add_argument("--api-key", default=os.environ.get("MLXS_API_KEY"))


def _host_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="node name (default: the ssh target)")
    p.add_argument("--model", help="model its group serves (default: the cluster's model)")
    p.add_argument("--group", help="group name (default: the node name)")
    p.add_argument("--python", help="Python interpreter on that host")
    p.add_argument("--workdir", help="directory to start actors in on that host")


def run(args: argparse.Namespace) -> int:
    if args.command == "remove-host":
        url = _base(args.url) + "/api/cluster/hosts/" + urllib.parse.quote(args.name, safe="")
        query = urllib.parse.urlencode({"drain_timeout": args.drain_timeout})
        return _call("DELETE", f"{url}?{query}", None, args)
    ssh = args.ssh if args.command == "add-host" else (args.ssh or _this_machine())
    body = {"ssh": ssh}
    for key in ("name", "model", "group", "python", "workdir"):
        if getattr(args, key):
            body[key] = getattr(args, key)
    base = args.url if args.command == "add-host" else args.address
    return _call("POST", _base(base) + "/api/cluster/hosts", body, args)


def _this_machine() -> str:
    return f"{getpass.getuser()}@{socket.getfqdn()}"


def _base(address: str) -> str:
    address = address.rstrip("/")
    return address if "://" in address else f"http://{address}"


def _call(method: str, url: str, body: dict | None, args: argparse.Namespace) -> int:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    if args.api_key:
        request.add_header("Authorization", f"Bearer {args.api_key}")
    try:
        with urllib.request.urlopen(
            request, timeout=args.drain_timeout + 30 if args.command == "remove-host" else 30
        ) as response:
            print(json.dumps(json.load(response)))
            return 0
    except urllib.error.HTTPError as exc:
        print(f"supervisor: {args.command} refused: {_message(exc)}", file=sys.stderr)
        return 2 if 400 <= exc.code < 500 else 1
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"supervisor: no supervisor answering at {url} ({reason})", file=sys.stderr)
        return 1


def _message(exc: urllib.error.HTTPError) -> str:
    try:
        error = json.loads(exc.read()).get("error")
    except ValueError:
        return f"HTTP {exc.code}"
    return error.get("message", str(error)) if isinstance(error, dict) else str(error)
