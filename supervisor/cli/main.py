"""`supervisor` command line. This module is the composition root: the one place in
supervisor/ that imports api/, to serve the app it builds over the cluster."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import structlog

from supervisor.cli import admin as cli_admin
from supervisor.cli.host import bootstrap as cli_bootstrap
from supervisor.cli.host import doctor as cli_doctor
from supervisor.cli.host import membership as cli_membership
from supervisor.cli.links import rdma_test as cli_rdma_test
from supervisor.cli.models import commands as cli_models
from supervisor.cli.observe import commands as cli_observe
from supervisor.cli.observe import logs as cli_logs
from supervisor.config.load import HostfileError, apply_overrides, load_hostfile
from supervisor.logs.setup import configure_logging

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"supervisor: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is outside 0..65535")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="supervisor", description="Serve LLMs from a cluster of Macs with MLX.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    start = sub.add_parser("start", help="bring the cluster up and serve HTTP")
    start.add_argument("hostfile", help="hostfile JSON (an mlx.launch hostfile works)")
    start.add_argument("--host", help="API listen address (overrides the hostfile)")
    start.add_argument("--port", type=_port, help="API port (overrides the hostfile)")
    start.add_argument("--model", help="model spec: demo:tiny, a HF repo id or a local path")
    start.add_argument("--log-format", choices=("json", "console"), default=None)
    start.add_argument(
        "--drain-timeout", type=float, default=30.0, help="seconds to finish in-flight work on stop"
    )
    start.add_argument(
        "--pidfile", help="where to write the PID (default: the cache dir, by API port)"
    )
    stop = sub.add_parser(
        "stop", help="drain and stop a supervisor (this machine's, or another's with its admin key)"
    )
    stop.add_argument("--url", default="http://127.0.0.1:8080", help="the supervisor's API URL")
    stop.add_argument("--pidfile", help="the pidfile `start` wrote (default: from --url's port)")
    stop.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for it to exit")
    cli_admin.add_admin_key(stop)
    cli_observe.add_parsers(sub)  # status, nodes, monitor
    cli_logs.add_parser(sub)
    cli_membership.add_parsers(sub)
    cli_rdma_test.add_parser(sub)
    cli_doctor.add_parser(sub)
    cli_bootstrap.add_parser(sub)
    cli_models.add_parsers(sub)  # download, models, rm-model, swap
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "start":
        return _start(args)
    try:
        return _dispatch(args)
    except cli_admin.Refused as exc:  # no usable key for what the command must send
        print(f"supervisor: {exc}", file=sys.stderr)
        return cli_admin.EXIT_REFUSED


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in cli_membership.COMMANDS:
        return cli_membership.run(args)
    if args.command == "stop":
        return _stop(args)
    if args.command in cli_observe.COMMANDS:
        return cli_observe.run(args)
    if args.command == cli_logs.COMMAND:
        return cli_logs.run(args)
    if args.command == cli_rdma_test.COMMAND:
        return cli_rdma_test.run(args)
    if args.command == cli_doctor.COMMAND:
        return cli_doctor.run(args)
    if args.command == cli_bootstrap.COMMAND:
        return cli_bootstrap.run(args)
    if args.command in cli_models.COMMANDS:
        return cli_models.run(args)
    raise AssertionError(f"no handler for command {args.command!r}")  # argparse allows none


def _stop(args: argparse.Namespace) -> int:
    """A supervisor on this machine gets SIGTERM by its pidfile; one elsewhere (or one with
    no pidfile here, given a key) gets ``POST /api/cluster/stop`` with the admin key."""
    from supervisor.cli.credentials import ADMIN_KEY_ENV, is_loopback_url
    from supervisor.cli.pidfile import StopError, default_pidfile, port_of, stop_supervisor

    try:
        path = Path(args.pidfile) if args.pidfile else default_pidfile(port_of(args.url))
        keyed = args.admin_key is not None or ADMIN_KEY_ENV in os.environ
        if not args.pidfile and (not is_loopback_url(args.url) or keyed and not path.exists()):
            return cli_admin.stop_over_http(args)
        pid = stop_supervisor(path, args.timeout)
    except StopError as exc:
        print(f"supervisor: {exc}", file=sys.stderr)
        return 1
    print(f"supervisor: stopped (pid {pid})")
    return 0


def _start(args: argparse.Namespace) -> int:
    try:
        spec = apply_overrides(
            load_hostfile(args.hostfile), host=args.host, port=args.port, model=args.model
        )
    except HostfileError as exc:
        print(f"supervisor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from supervisor.config.groups import GroupConfigError, validate_groups

    try:
        validate_groups(spec)  # a group that cannot split its model: refused before anything
    except GroupConfigError as exc:
        print(f"supervisor: {spec.source}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from supervisor.doctor.preflight import preflight_problems

    problems = preflight_problems(spec)  # the doctor's checks that cost no SSH round trip
    for line in problems:
        print(f"supervisor: {spec.source}: {line}", file=sys.stderr)
    if problems:
        return EXIT_USAGE
    from supervisor.cli.credentials import CredentialError, credentials_for

    try:
        credentials = credentials_for(spec, os.environ)
    except CredentialError as exc:
        print(f"supervisor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from supervisor.logs.ring import LogRing

    ring = LogRing(spec.logs.lines, spec.logs.follow_buffer, spec.logs.followers)
    configure_logging(args.log_format or spec.log_format, ring=ring)
    try:
        sock = _bind(spec.api.host, spec.api.port)
    except OSError as exc:
        print(
            f"supervisor: cannot listen on {spec.api.host}:{spec.api.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    from supervisor.cli.credentials import (
        admin_key_file,
        join_token_file,
        remove_secret,
        write_secret,
    )
    from supervisor.cli.pidfile import default_pidfile, remove_pidfile, write_pidfile

    pidfile = Path(args.pidfile) if args.pidfile else default_pidfile(sock.getsockname()[1])
    write_pidfile(pidfile)
    key_files = [
        (admin_key_file(pidfile), credentials.admin_key),
        (join_token_file(pidfile), credentials.join_token),
    ]
    try:
        for path, value in key_files:
            write_secret(path, value)  # mode 0600: where the local CLI finds them
        structlog.get_logger().info(
            "credentials_written",
            admin_key_file=str(key_files[0][0]),
            join_token_file=str(key_files[1][0]),
            admin_key="generated" if credentials.admin_key_generated else "configured",
        )
        return asyncio.run(_serve(spec, sock, args.drain_timeout, credentials, ring))
    finally:
        for path, value in key_files:
            remove_secret(path, value)
        remove_pidfile(pidfile)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.set_inheritable(True)
    return sock


async def _serve(spec, sock: socket.socket, drain_timeout: float, credentials, ring) -> int:
    from api.app import create_app
    from api.cluster_routes import cluster_router
    from api.edge.error_shape import error_body
    from api.edge.error_shape import json_encoder as encoder
    from api.edge.guards import Keys
    from supervisor.cli.credentials import exposure_warnings, is_loopback, join_address
    from supervisor.cli.http_server import make_server
    from supervisor.cluster.cluster import Cluster
    from supervisor.cluster.membership import ClusterMembership
    from supervisor.models.manager import ModelManager
    from supervisor.observe.observer import ClusterObserver

    log = structlog.get_logger()
    cluster = Cluster(spec)
    await cluster.start()
    membership = ClusterMembership(cluster, unreachable_grace=spec.membership.unreachable_grace)
    models = ModelManager(cluster, spec.models, drain_timeout)
    models.start()
    watch = asyncio.create_task(membership.watch_unreachable())
    stop, now = asyncio.Event(), asyncio.Event()  # first signal: drain; second: stop now
    received: list[str] = []
    keys = Keys(credentials.admin_key, credentials.join_token, credentials.api_key)
    warnings = exposure_warnings(spec.api.host, credentials.api_key)
    app = create_app(
        cluster.service,
        status=cluster.state.snapshot,
        health=cluster.state.health,
        keys=keys,
        allowed_hosts=spec.allowed_hosts if is_loopback(spec.api.host) else None,
        cors_origins=spec.cors_origins,
        warnings=warnings,
        admin_route_handlers=[
            cluster_router(
                membership,
                keys,
                stop=lambda: (received.append("POST /api/cluster/stop"), stop.set()),
                join_address=join_address(spec.api.host, sock.getsockname()[1]),
            )
        ],
        max_body_bytes=spec.api.max_body_bytes,
        observer=ClusterObserver(cluster.state, log_ring=ring),
        model_admin=models,
        pull_with_inference_key=spec.models.pull_with_inference_key,
    )
    server = make_server(app, spec.api, lambda code, text: encoder.encode(error_body(code, text)))
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        if stop.is_set() and not now.is_set():
            log.warning("stopping_now", reason=f"second {sig.name}: no more draining")
            now.set()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    host, port = sock.getsockname()[:2]
    log.info("api_listening", host=host, port=port, url=f"http://{host}:{port}")
    for warning in warnings:
        log.warning("api_exposed", message=warning)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    await asyncio.wait(
        [serving, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED
    )
    why = received[0] if received else f"the HTTP server ended ({_outcome(serving)})"
    log.info("stopping", drain_timeout=drain_timeout, reason=why)
    await _unless(now, cluster.drain(drain_timeout))
    ring.end_followers()  # open live streams end; the SSE feed ends on the drain itself
    server.should_exit = True
    await _unless(now, serving)
    watch.cancel()
    await _unless(now, membership.close())  # removals of unreachable joined nodes under way
    await _unless(now, models.close())  # model jobs under way end (reported failed)
    await _unless(now, cluster.stop())
    if now.is_set():
        await cluster.stop(grace=0)  # what is left is killed by PID, without the grace
    return 0


async def _unless(now: asyncio.Event, work) -> None:
    """Await ``work`` unless ``now`` is set first (a second signal): then cancel it."""
    task = asyncio.ensure_future(work)
    interrupt = asyncio.ensure_future(now.wait())
    await asyncio.wait([task, interrupt], return_when=asyncio.FIRST_COMPLETED)
    interrupt.cancel()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)  # its outcome was logged, if any


def _outcome(task: asyncio.Task) -> str:
    if not task.done():
        return "still running"
    if task.cancelled():
        return "cancelled"
    error = task.exception()
    return "returned" if error is None else f"{type(error).__name__}: {error}"


if __name__ == "__main__":
    sys.exit(main())
