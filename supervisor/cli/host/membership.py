"""`supervisor add-host | join | remove-host | join-token`: change a running cluster's
members over HTTP. Adding and removing need the admin key; `join` sends the join token."""

from __future__ import annotations

import argparse
import getpass
import socket
import sys
import urllib.parse

from supervisor.cli import admin as cli_admin
from supervisor.cli.admin import DEFAULT_URL, add_admin_key, admin_key, base, call

COMMANDS = ("add-host", "join", "remove-host", "join-token")


def add_parsers(sub) -> None:
    add = sub.add_parser(
        "add-host", help="add a host to the running cluster (run on the supervisor)"
    )
    add.add_argument("ssh", help="how the supervisor reaches it: alias, user@host, host:port")
    _host_options(add)
    add.add_argument("--url", default=DEFAULT_URL, help="the supervisor's API URL")
    join = sub.add_parser("join", help="join this machine to a running cluster")
    join.add_argument("address", help="the supervisor's API URL or host:port")
    join.add_argument("--token", help="the join token `supervisor join-token` printed")
    join.add_argument(
        "--ssh",
        default=None,
        help="how the supervisor reaches this machine (default: USER@HOSTNAME)",
    )
    _host_options(join)
    remove = sub.add_parser("remove-host", help="drain a host's groups and stop its actors")
    remove.add_argument("name", help="the node's name, as `supervisor nodes` shows it")
    remove.add_argument("--drain-timeout", type=float, default=30.0)
    remove.add_argument("--url", default=DEFAULT_URL, help="the supervisor's API URL")
    token = sub.add_parser("join-token", help="print the command that joins another machine")
    token.add_argument("--url", default=DEFAULT_URL, help="the supervisor's API URL")
    for p in (add, remove, token):
        add_admin_key(p)


def _host_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="node name (default: the ssh target's host)")
    p.add_argument("--model", help="model its group serves (default: the cluster's model)")
    p.add_argument("--group", help="group name (default: the node name)")
    p.add_argument("--python", help="Python interpreter on that host")
    p.add_argument("--workdir", help="directory to start actors in on that host")


def run(args: argparse.Namespace) -> int:
    if args.command == "join-token":
        return cli_admin.join_token(args)
    url = base(args.address if args.command == "join" else args.url)
    key = args.token if args.command == "join" else admin_key(args, url)
    if args.command == "join" and not key:
        print(
            "supervisor: join needs --token; run `supervisor join-token` on the supervisor's "
            "machine to print the whole command",
            file=sys.stderr,
        )
        return cli_admin.EXIT_REFUSED
    if args.command == "remove-host":
        path = "/api/cluster/hosts/" + urllib.parse.quote(args.name, safe="")
        query = urllib.parse.urlencode({"drain_timeout": args.drain_timeout})
        return call(
            args.command, "DELETE", f"{url}{path}?{query}", None, key, args.drain_timeout + 30
        )
    ssh = args.ssh if args.command == "add-host" else (args.ssh or _this_machine())
    body = {"ssh": ssh}
    for field in ("name", "model", "group", "python", "workdir"):
        if getattr(args, field):
            body[field] = getattr(args, field)
    return call(args.command, "POST", url + "/api/cluster/hosts", body, key, 30)


def _this_machine() -> str:
    return f"{getpass.getuser()}@{socket.getfqdn()}"
