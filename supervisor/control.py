"""The control port: actors dial in, prove the cluster token, and get a handle.

The supervisor announces which actor ids it is about to start (``expect``);
a connection is accepted only for an expected id with the right token.
"""

from __future__ import annotations

import asyncio
import hmac

import structlog

from actors.protocol import Hello, Refused, Welcome
from actors.transport import FrameError, read_message, write_message
from supervisor.handle import ActorHandle

log = structlog.get_logger()

HELLO_TIMEOUT = 10.0


class ControlServer:
    def __init__(
        self, token: str, host: str = "127.0.0.1", port: int = 0, heartbeat_interval: float = 1.0
    ):
        self._token = token
        self._host = host
        self._port = port
        self._heartbeat_interval = heartbeat_interval
        self._expected: dict[str, asyncio.Future[ActorHandle]] = {}
        self._server: asyncio.Server | None = None
        self.refused = 0

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._on_connect, self._host, self._port)
        return self.address

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def expect(self, actor_id: str) -> asyncio.Future[ActorHandle]:
        """A future resolved with the actor's handle once it has said a valid Hello."""
        old = self._expected.pop(actor_id, None)
        if old is not None and not old.done():
            old.cancel()
        fut: asyncio.Future[ActorHandle] = asyncio.get_running_loop().create_future()
        self._expected[actor_id] = fut
        return fut

    def forget(self, actor_id: str) -> None:
        fut = self._expected.pop(actor_id, None)
        if fut is not None and not fut.done():
            fut.cancel()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        peer = writer.get_extra_info("peername")
        try:
            hello = await asyncio.wait_for(read_message(reader), HELLO_TIMEOUT)
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            FrameError,
            ValueError,
            ConnectionError,
        ) as exc:
            log.warning("control_connection_dropped", peer=str(peer), reason=type(exc).__name__)
            writer.close()
            return
        reason = self._refusal(hello)
        if reason is not None:
            self.refused += 1
            log.warning(
                "actor_refused",
                peer=str(peer),
                reason=reason,
                actor_id=getattr(hello, "actor_id", None),
            )
            write_message(writer, Refused(reason=reason))
            await _drain_and_close(writer)
            return
        fut = self._expected.pop(hello.actor_id)
        handle = ActorHandle(hello, reader, writer)
        write_message(writer, Welcome(heartbeat_interval=self._heartbeat_interval))
        if fut.done():  # the supervisor gave up on this start meanwhile
            await handle.close()
            return
        handle.start()
        fut.set_result(handle)

    def _refusal(self, hello) -> str | None:
        if not isinstance(hello, Hello):
            return f"expected Hello, got {type(hello).__name__}"
        if not hmac.compare_digest(hello.token.encode(), self._token.encode()):
            return "wrong cluster token"
        if hello.actor_id not in self._expected:
            return f"unexpected actor id {hello.actor_id!r}"
        return None


async def _drain_and_close(writer: asyncio.StreamWriter) -> None:
    try:
        await writer.drain()
    except ConnectionError:
        pass
    writer.close()
