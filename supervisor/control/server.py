"""The control port: actors dial in, prove the cluster token, and get a handle.

The supervisor announces which actor ids it is about to start (``expect``), each
with a one-time nonce that travels to that spawn only; a connection is accepted
only for an expected id with the right token and that incarnation's nonce.

Before its Hello a peer is nobody: its first frame is bounded (``max_hello_bytes``,
checked on the declared length, before the body is read), it has ``hello_timeout`` to
send it, and at most ``max_pending`` such peers are held; more are closed at once.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from actors.protocol.messages import Hello, Message, Refused, Welcome
from actors.protocol.transport import FrameError, read_message, write_message
from supervisor.control.handle import STREAM_BUFFER_BYTES, ActorHandle

log = structlog.get_logger()

HELLO_TIMEOUT = 10.0
MAX_PENDING = 64  # ControlSpec.max_pending
MAX_HELLO_BYTES = 4096  # ControlSpec.max_hello_bytes
OVER_CAPACITY_LOG_EVERY = 1.0  # s: a flood of connections is one log line a second


@dataclass(frozen=True)
class Expected:
    """An announced incarnation: the nonce its spawn carries, the handle once it said Hello,
    and who hears its messages (attached before the handle reads its first one)."""

    nonce: str
    handle: asyncio.Future[ActorHandle]
    on_message: Callable[[ActorHandle, Message], None] | None = None


class ControlServer:
    def __init__(
        self,
        token: str,
        host: str | None = "127.0.0.1",
        port: int = 0,
        heartbeat_interval: float = 1.0,
        stream_buffer_bytes: int = STREAM_BUFFER_BYTES,
        max_pending: int = MAX_PENDING,
        max_hello_bytes: int = MAX_HELLO_BYTES,
        hello_timeout: float = HELLO_TIMEOUT,
    ):
        self._token = token
        self._stream_buffer_bytes = stream_buffer_bytes  # each handle's per-request bound
        self._host = host
        self._port = port
        self._heartbeat_interval = heartbeat_interval
        self._max_pending = max_pending
        self._max_hello_bytes = max_hello_bytes
        self._hello_timeout = hello_timeout
        self._expected: dict[str, Expected] = {}
        self._server: asyncio.Server | None = None
        self.refused = 0  # Hellos refused (token, id, nonce)
        self.pending = 0  # connections not yet past Hello
        self.over_capacity = 0  # connections closed at once: max_pending were waiting
        self._over_capacity_logged = (0.0, 0)  # when, and the count then

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def start(self) -> tuple[str, int]:
        """Listen on ``host`` (None: every interface, IPv4 and IPv6 on one port)."""
        if self._host is None:
            sock = _every_interface(self._port)
            self._server = await asyncio.start_server(self._on_connect, sock=sock)
        else:
            self._server = await asyncio.start_server(self._on_connect, self._host, self._port)
        return self.address

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def expect(
        self, actor_id: str, on_message: Callable[[ActorHandle, Message], None] | None = None
    ) -> Expected:
        """Announce one incarnation of ``actor_id``: a fresh nonce for its spawn, and a
        future resolved with its handle once it has said a valid Hello. Any earlier
        announcement of the id (and its nonce) is void from now on.

        ``on_message`` hears every message after the Hello, the first included: set on the
        handle once the future resolves, it would miss what the actor said meanwhile."""
        self.forget(actor_id)
        fut: asyncio.Future[ActorHandle] = asyncio.get_running_loop().create_future()
        expected = Expected(secrets.token_urlsafe(24), fut, on_message)
        self._expected[actor_id] = expected
        return expected

    def forget(self, actor_id: str) -> None:
        old = self._expected.pop(actor_id, None)
        if old is not None and not old.handle.done():
            old.handle.cancel()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        if self.pending >= self._max_pending:
            self._refuse_over_capacity(writer)
            return
        self.pending += 1
        try:
            await self._greet(reader, writer)
        finally:
            self.pending -= 1

    def _refuse_over_capacity(self, writer: asyncio.StreamWriter) -> None:
        self.over_capacity += 1
        writer.transport.abort()  # nothing to say to nobody: no buffer, no wait
        when, count = self._over_capacity_logged
        now = time.monotonic()
        if now - when >= OVER_CAPACITY_LOG_EVERY:
            log.warning(
                "control_connection_refused",
                reason=f"{self._max_pending} connections are waiting to say Hello",
                refused=self.over_capacity - count,
                max_pending=self._max_pending,
            )
            self._over_capacity_logged = (now, self.over_capacity)

    async def _greet(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read and check the Hello; on success the connection becomes the actor's handle."""
        peer = writer.get_extra_info("peername")
        try:
            hello = await asyncio.wait_for(
                read_message(reader, max_length=self._max_hello_bytes), self._hello_timeout
            )
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            FrameError,
            ValueError,
            ConnectionError,
        ) as exc:
            reason = str(exc) if isinstance(exc, FrameError) else type(exc).__name__
            log.warning("control_connection_dropped", peer=str(peer), reason=reason)
            writer.transport.abort()  # an oversized frame's body stays unread
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
        expected = self._expected.pop(hello.actor_id)  # its nonce is spent
        fut = expected.handle
        handle = ActorHandle(
            hello, reader, writer, self._stream_buffer_bytes, on_message=expected.on_message
        )
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
        expected = self._expected.get(hello.actor_id)
        if expected is None:
            return f"unexpected actor id {hello.actor_id!r}"
        # The announcement stays: a wrong guess must not cost the real actor its start.
        if not hmac.compare_digest(hello.nonce.encode(), expected.nonce.encode()):
            return f"wrong nonce for {hello.actor_id!r}: not the incarnation being started"
        return None


def _every_interface(port: int) -> socket.socket:
    """One listening socket for IPv4 and IPv6 alike (asyncio would bind a socket per family,
    each on its own ephemeral port when ``port`` is 0); IPv4 only where IPv6 is off."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address: tuple = ("::", port)
    except OSError:
        sock, address = socket.socket(socket.AF_INET, socket.SOCK_STREAM), ("0.0.0.0", port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    return sock


async def _drain_and_close(writer: asyncio.StreamWriter) -> None:
    try:
        await asyncio.wait_for(writer.drain(), HELLO_TIMEOUT)
    except (ConnectionError, TimeoutError):
        writer.transport.abort()  # a peer that does not read gets no more of our time
        return
    writer.close()
