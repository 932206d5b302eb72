"""The actor side of the control connection: dial back, say Hello, heartbeat, dispatch.

Actors are threads around a blocking socket: heartbeats run in their own
thread so that MLX compute (which releases the GIL) never silences them.
If the supervisor goes away the actor exits: no orphan outlives its supervisor.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Protocol

import msgspec
import psutil
import structlog

from actors.protocol.messages import (
    CONFIG_ENV,
    NONCE_ENV,
    TOKEN_ENV,
    ActorConfig,
    ActorError,
    Heartbeat,
    Hello,
    Message,
    Refused,
    Shutdown,
    Vitals,
    Welcome,
)
from actors.protocol.transport import SocketChannel

log = structlog.get_logger()

EXIT_REFUSED = 3
EXIT_START_FAILED = 4
PERMANENT_FAILURE_LINGER = 30.0


class PermanentFailure(Exception):
    """A start-up failure no restart can fix (a configuration error); the message is for users."""


class Actor(Protocol):
    """One concern of one node. ``start`` may be slow; heartbeats flow meanwhile."""

    def start(self, runtime: ActorRuntime) -> None: ...

    def handle(self, msg: Message) -> None: ...

    def vitals(self) -> dict[str, int | float]: ...

    def stop(self) -> None: ...


def ssh_client_address(environ) -> str:
    """The supervisor's address as this machine sees it: the client of our SSH session."""
    client = environ.get("SSH_CONNECTION", "").split()
    if not client:
        raise SystemExit(
            "actors: no control host in the config and no $SSH_CONNECTION to take it from; "
            'set "control": {"host": ...} in the hostfile to the supervisor\'s address'
        )
    return client[0]


def load_config() -> tuple[ActorConfig, str, str]:
    """The config, the cluster token and this spawn's one-time nonce, from the environment."""
    raw = os.environ.get(CONFIG_ENV)
    token = os.environ.get(TOKEN_ENV)
    if not raw or not token:
        raise SystemExit(f"actors: ${CONFIG_ENV} and ${TOKEN_ENV} must be set by the supervisor")
    return msgspec.json.decode(raw, type=ActorConfig), token, os.environ.get(NONCE_ENV, "")


class ActorRuntime:
    def __init__(self, config: ActorConfig, token: str, actor: Actor, nonce: str = ""):
        self.config = config
        self._token = token
        self._nonce = nonce
        self._actor = actor
        self._channel: SocketChannel | None = None
        self._stopping = threading.Event()
        self._process = psutil.Process()
        self._process.cpu_percent()  # first call primes the counter

    def send(self, msg: Message) -> bool:
        assert self._channel is not None
        return self._channel.send(msg)

    def run(self) -> int:
        """Connect, greet, serve until Shutdown or the supervisor is gone; return an exit code."""
        cfg = self.config
        self._channel = SocketChannel.connect(
            cfg.control_host or ssh_client_address(os.environ), cfg.control_port
        )
        hello = Hello(
            actor_id=cfg.actor_id,
            kind=cfg.kind,
            node=cfg.node,
            pid=os.getpid(),
            token=self._token,
            rank=cfg.rank,
            nonce=self._nonce,
        )
        self._channel.send(hello)
        reply = self._channel.recv()
        if isinstance(reply, Refused) or not isinstance(reply, Welcome):
            reason = reply.reason if isinstance(reply, Refused) else "no welcome"
            log.error("actor_refused", reason=reason)
            return EXIT_REFUSED
        threading.Thread(
            target=self._heartbeat_loop, args=(reply.heartbeat_interval,), daemon=True
        ).start()
        reader = threading.Thread(target=self._read_loop, daemon=True)
        reader.start()
        try:
            self._actor.start(self)
        except PermanentFailure as exc:
            log.error("actor_start_failed", error=str(exc), permanent=True)
            self.send(ActorError(message=str(exc), permanent=True))
            # Stay until the supervisor hangs up, so it reads the reason before the exit.
            self._stopping.wait(PERMANENT_FAILURE_LINGER)
            return EXIT_START_FAILED
        except Exception as exc:  # a start-up failure is reported, then the actor exits
            log.exception("actor_start_failed")
            self.send(ActorError(message=f"{type(exc).__name__}: {exc}"))
            return EXIT_START_FAILED
        self._stopping.wait()
        self._actor.stop()
        self._channel.close()
        return 0

    def _read_loop(self) -> None:
        assert self._channel is not None
        while True:
            msg = self._channel.recv()
            if msg is None:
                try:
                    log.warning("supervisor_gone", actor_id=self.config.actor_id)
                finally:
                    os._exit(1)  # the supervisor is gone: never linger as an orphan
            if isinstance(msg, Shutdown):
                self._stopping.set()
                return
            try:
                self._actor.handle(msg)
            except Exception:
                log.exception("actor_handle_failed", message=type(msg).__name__)

    def _vitals(self) -> Vitals:
        figures = dict(self._actor.vitals())
        try:
            figures["rss_bytes"] = self._process.memory_info().rss
            figures["cpu_percent"] = self._process.cpu_percent()
        except psutil.Error:
            pass
        return msgspec.convert(figures, Vitals)

    def _heartbeat_loop(self, interval: float) -> None:
        seq = 0
        while not self._stopping.is_set():
            seq += 1
            beat = Heartbeat(actor_id=self.config.actor_id, seq=seq, vitals=self._vitals())
            if not self.send(beat):
                return
            self._stopping.wait(interval)


def configure_logging() -> None:
    """JSON lines on stderr; the supervisor relays them into its own log."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


def serve(actor: Actor) -> int:
    config, token, nonce = load_config()
    structlog.contextvars.bind_contextvars(actor_id=config.actor_id, node=config.node)
    return ActorRuntime(config, token, actor, nonce).run()
