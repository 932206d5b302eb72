"""One child of a supervisor: what it is (``ChildSpec``), how long it may take
(``Timeouts``), how it failed (``ChildFailed``) and one incarnation of it (``Child``)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from actors.protocol.messages import ActorConfig, Ready
from supervisor.config.spec import RestartType
from supervisor.control.handle import ActorHandle
from supervisor.supervision.spawner import ActorProcess, Spawner


@dataclass(frozen=True)
class ChildSpec:
    """OTP's child spec: what to start, where, and its restart type."""

    config: ActorConfig
    spawner: Spawner
    restart: RestartType = "permanent"
    env: dict[str, str] = field(default_factory=dict)
    python: str | None = None


@dataclass(frozen=True)
class Timeouts:
    hello: float = 30.0
    load: float = 900.0
    heartbeat: float = 2.0  # the hostfile's restart.heartbeat_timeout
    watchdog: float = 30.0
    stop_grace: float = 5.0
    # mx.distributed.init holds the GIL while a rank waits for its peers (measured): no
    # heartbeats until the last rank dials in, which the ring gives up on after ~31 s.
    connect: float = 45.0


class ChildFailed(Exception):
    """Why a set failed; ``cause`` and ``actor`` (the one at fault, None: the set as a
    whole) go on the kills' ActorStopped events, for the errors log."""

    def __init__(
        self,
        reason: str,
        normal: bool = False,
        permanent: bool = False,
        unreachable: bool = False,
        *,
        cause: str = "",
        actor: str | None = None,
    ):
        super().__init__(reason)
        self.reason = reason
        self.normal = normal
        self.permanent = permanent  # a configuration error: restarting cannot help
        self.unreachable = unreachable  # the host was not reached: the child never started
        self.cause = cause  # exit, heartbeat, watchdog, connection, spawn, error, timeout
        self.actor = actor

    @classmethod
    def of(cls, actor: str, cause: str, reason: str, **flags: bool) -> ChildFailed:
        """A failure of ``actor``'s own: its kill carries ``cause``."""
        return cls(reason, cause=cause, actor=actor, **flags)

    @classmethod
    def exited(cls, actor: str, code: int) -> ChildFailed:
        return cls.of(actor, "exit", f"{actor} exited with code {code}", normal=code == 0)

    @classmethod
    def lost(cls, actor: str, why: str) -> ChildFailed:
        """The control connection closed while the process lives on."""
        return cls.of(actor, "connection", f"{actor} control connection lost ({why})")


class Child:
    """One incarnation of one child: its process, its handle, what it last said."""

    def __init__(self, spec: ChildSpec):
        self.spec = spec
        self.process: ActorProcess | None = None
        self.handle: ActorHandle | None = None
        self.ready: asyncio.Future[Ready] = asyncio.get_running_loop().create_future()
        # Set when the rank reaches mx.distributed.init (or is ready): its peers may start.
        self.connecting: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.stage = ""
        self.last_beat = time.monotonic()
        self.progress = -1
        self.progress_at = time.monotonic()
        self.active = 0

    @property
    def actor_id(self) -> str:
        return self.spec.config.actor_id
