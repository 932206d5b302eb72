"""Spawners execute; they never decide. Local actors are asyncio subprocesses."""

from __future__ import annotations

import asyncio
import glob
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Protocol

import msgspec
import structlog

from actors.protocol.messages import CONFIG_ENV, NONCE_ENV, TOKEN_ENV, ActorConfig
from supervisor.logs.setup import relay_actor_line

log = structlog.get_logger()

OPENBLAS_GLOB = "/usr/lib/*-linux-gnu/openblas-pthread/libblas.so.3"


@dataclass(frozen=True)
class ActorLaunch:
    """Everything needed to start one actor process somewhere."""

    config: ActorConfig
    token: str
    env: dict[str, str] = field(default_factory=dict)
    python: str | None = None
    nonce: str = ""  # one-time, from ControlServer.expect: the Hello must carry it back


class HostUnreachable(Exception):
    """The spawner could not reach the host at all (refused, no route, no answer, no such
    name). The host may come back, so the supervisor waits for it: not a child failure."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message  # the short why, without the node's address


class ActorProcess(Protocol):
    pid: int
    node: str

    async def wait(self) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    async def kill(self) -> None: ...


class Spawner(Protocol):
    async def spawn(self, launch: ActorLaunch) -> ActorProcess: ...


def openblas_path() -> str | None:
    """Debian's OpenBLAS, which MLX's Linux wheel runs ~2x faster with (MLX-NOTES)."""
    if not sys.platform.startswith("linux"):
        return None
    found = sorted(glob.glob(OPENBLAS_GLOB))
    return found[0] if found else None


def actor_environment(launch: ActorLaunch, base: dict[str, str]) -> dict[str, str]:
    """The child's environment: config, token and nonce travel here, never on a command line."""
    env = dict(base)
    env.update(launch.env)
    env[CONFIG_ENV] = msgspec.json.encode(launch.config).decode()
    env[TOKEN_ENV] = launch.token
    env[NONCE_ENV] = launch.nonce
    env.setdefault("PYTHONUNBUFFERED", "1")
    if launch.config.kind == "generation":
        blas = openblas_path()
        if blas and "openblas" not in env.get("LD_PRELOAD", ""):
            env["LD_PRELOAD"] = ":".join(p for p in (blas, env.get("LD_PRELOAD")) if p)
    return env


class LocalProcess:
    def __init__(self, proc: asyncio.subprocess.Process, launch: ActorLaunch):
        self._proc = proc
        self.pid = proc.pid
        self.node = launch.config.node
        cfg = launch.config
        self._relays = [
            asyncio.create_task(_relay(proc.stdout, cfg.actor_id, cfg.node, "stdout")),
            asyncio.create_task(_relay(proc.stderr, cfg.actor_id, cfg.node, "stderr")),
        ]

    async def wait(self) -> int:
        code = await self._proc.wait()
        await asyncio.gather(*self._relays, return_exceptions=True)
        return code

    def send_signal(self, sig: int) -> None:
        if self._proc.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    async def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
        await self.wait()


class LocalSpawner:
    async def spawn(self, launch: ActorLaunch) -> LocalProcess:
        env = actor_environment(launch, dict(os.environ))
        proc = await asyncio.create_subprocess_exec(
            launch.python or sys.executable,
            "-m",
            "actors",
            launch.config.kind,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=1 << 20,
        )
        log.info(
            "actor_spawned",
            actor_id=launch.config.actor_id,
            node=launch.config.node,
            pid=proc.pid,
            kind=launch.config.kind,
            blas=env.get("LD_PRELOAD", "builtin"),
        )
        return LocalProcess(proc, launch)


async def _relay(stream: asyncio.StreamReader | None, actor_id: str, node: str, name: str):
    if stream is None:
        return
    while True:
        line = await stream.readline()
        if not line:
            return
        relay_actor_line(line.decode(errors="replace"), actor_id=actor_id, node=node, stream=name)
