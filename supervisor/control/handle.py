"""Actor handles, Ray style: callers ``tell`` and ``stream``; they never see sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import structlog

from actors.protocol.messages import (
    STREAM_EVENTS,
    Cancel,
    Finished,
    Generate,
    GenerationEvent,
    GenerationFailed,
    GenerationRequest,
    Hello,
    Message,
    decode,
    route,
)
from actors.protocol.model_messages import SYNC_TERMINAL, SyncAsk, SyncFailed, SyncReply
from actors.protocol.transport import FrameError, read_body, write_message

log = structlog.get_logger()

STREAM_BUFFER_BYTES = 1024 * 1024  # the hostfile's stream_buffer_bytes default
# An actor that takes no bytes for this long has stopped reading its socket: it is lost.
SEND_TIMEOUT = 10.0
# A request whose client is not reading is failed with this status (the client's fault).
CLIENT_TOO_SLOW = 408


class ActorGone(Exception):
    """The actor's control connection is closed."""


class _Inbox:
    """One request's events not yet taken by its consumer, held as their encoded bytes.

    Held undecoded, an event costs what it weighed on the wire (decoded, a TokenDelta with
    top_logprobs takes ~3.6 times that), so the bound on ``bytes`` bounds the memory: a
    consumer that stops taking events (its HTTP client stopped reading) would otherwise
    hold every event the actor goes on generating.
    """

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | GenerationEvent] = asyncio.Queue()
        self.bytes = 0
        self.overflowed = False  # cancelled at the actor; its failure is queued

    def put(self, item: bytes | GenerationEvent) -> None:
        if isinstance(item, bytes):
            self.bytes += len(item)
        self.queue.put_nowait(item)

    async def get(self) -> GenerationEvent:
        item = await self.queue.get()
        if not isinstance(item, bytes):
            return item
        self.bytes -= len(item)
        return decode(item)  # type: ignore[return-value]  # routed as a stream event

    def replace_with(self, event: GenerationEvent) -> None:
        """Drop what is queued (freeing it) and leave only ``event``."""
        while not self.queue.empty():  # in place: a consumer may be waiting on this queue
            self.queue.get_nowait()
        self.bytes = 0
        self.queue.put_nowait(event)


class ActorHandle:
    """One incarnation of one actor, as seen from the supervisor.

    ``stream_buffer_bytes`` bounds what one request's stream may hold here while its
    consumer does not take it; past it the request is cancelled and fails (408).
    """

    def __init__(
        self,
        hello: Hello,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        stream_buffer_bytes: int = STREAM_BUFFER_BYTES,
        on_message: Callable[[ActorHandle, Message], None] | None = None,
    ):
        self.hello = hello
        self.actor_id = hello.actor_id
        self.pid = hello.pid
        self._reader = reader
        self._writer = writer
        self._stream_buffer_bytes = stream_buffer_bytes
        self._streams: dict[str, _Inbox] = {}
        self._task: asyncio.Task | None = None
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        # Given here, before start(): an actor speaks as soon as it is welcomed (a memory
        # actor's Ready follows its Hello at once), and a message read while nobody
        # listens is gone for good.
        self.on_message: Callable[[ActorHandle, Message], None] = on_message or (lambda h, m: None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._read_loop(), name=f"actor-{self.actor_id}")

    @property
    def is_open(self) -> bool:
        return not self.closed.done()

    async def tell(self, msg: Message) -> None:
        """Send ``msg``; an actor that does not take it within SEND_TIMEOUT is lost."""
        if not self.is_open:
            raise ActorGone(self.actor_id)
        write_message(self._writer, msg)
        try:
            await asyncio.wait_for(self._writer.drain(), SEND_TIMEOUT)
        except TimeoutError as exc:
            log.error("actor_not_reading", actor_id=self.actor_id, timeout=SEND_TIMEOUT)
            self._fail_all(f"not reading its socket for {SEND_TIMEOUT:.0f} s")
            self._writer.transport.abort()
            raise ActorGone(self.actor_id) from exc
        except ConnectionError as exc:
            raise ActorGone(self.actor_id) from exc

    async def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Run ``request`` on the actor; yields until Finished or GenerationFailed.

        Leaving the iteration early (client gone) cancels the request on the actor.
        """
        rid = request.request_id
        inbox = _Inbox()
        self._streams[rid] = inbox
        done = False
        try:
            await self.tell(Generate(request=request))
            while True:
                event = await inbox.get()
                yield event
                if isinstance(event, (Finished, GenerationFailed)):
                    done = True
                    return
        except ActorGone:
            done = True
            yield _lost(rid, self.actor_id)
        finally:
            self._streams.pop(rid, None)
            if not done and not inbox.overflowed and self.is_open:
                try:
                    await self.tell(Cancel(request_id=rid))
                except ActorGone:
                    pass

    async def exchange(self, ask: SyncAsk) -> AsyncIterator[SyncReply]:
        """Send a sync actor ``ask``; yield its progress, then its one terminal reply.

        An actor lost meanwhile ends the exchange with a ``SyncFailed`` saying so.
        """
        rid = ask.request_id
        inbox = _Inbox()
        self._streams[rid] = inbox
        try:
            await self.tell(ask)
            while True:
                event: Message = await inbox.get()
                if isinstance(event, GenerationFailed):  # put by _fail_all: the actor is lost
                    yield self._sync_lost(rid)
                    return
                yield event  # type: ignore[misc]  # routed by request_id: a SyncReply
                if type(event).__name__ in SYNC_TERMINAL:
                    return
        except ActorGone:
            yield self._sync_lost(rid)
        finally:
            self._streams.pop(rid, None)

    def _sync_lost(self, rid: str) -> SyncFailed:
        reason = self.closed.result() if self.closed.done() else "connection closed"
        return SyncFailed(rid, f"actor {self.actor_id} was lost ({reason})")

    @property
    def streams_open(self) -> int:
        return len(self._streams)

    async def close(self, reason: str = "closed") -> None:
        self._fail_all(reason)
        self._close_writer()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    def _close_writer(self) -> None:
        # close() would wait, unbounded, for a peer that is not reading to take the
        # buffered bytes; the connection is over, so they are dropped instead.
        if self._writer.transport.get_write_buffer_size():
            self._writer.transport.abort()
        else:
            self._writer.close()

    async def _read_loop(self) -> None:
        reason = "connection closed"
        try:
            while True:
                self._dispatch(await read_body(self._reader))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except (FrameError, ValueError) as exc:
            reason = f"bad frame: {exc}"
            log.error("actor_bad_frame", actor_id=self.actor_id, error=str(exc))
        except asyncio.CancelledError:
            reason = "closed by supervisor"
        finally:
            self._fail_all(reason)
            self._close_writer()

    def _dispatch(self, body: bytes) -> None:
        where = route(body)
        if where.t in STREAM_EVENTS:
            inbox = self._streams.get(where.request_id)
            if inbox is not None and not inbox.overflowed:
                inbox.put(body)
                if inbox.bytes > self._stream_buffer_bytes and where.t == "TokenDelta":
                    self._too_slow(where.request_id, inbox)
            return
        self.on_message(self, decode(body))

    def _too_slow(self, rid: str, inbox: _Inbox) -> None:
        """The request's consumer stopped taking events: cancel it, free them, fail it."""
        held = inbox.bytes
        inbox.overflowed = True
        message = (
            f"the client read too slowly: {held} bytes of this stream were waiting, more than "
            f"stream_buffer_bytes ({self._stream_buffer_bytes}); the request was cancelled"
        )
        failure = GenerationFailed(
            rid, message, retryable=False, status=CLIENT_TOO_SLOW, code="client_too_slow"
        )
        inbox.replace_with(failure)
        log.warning(
            "client_too_slow",
            request_id=rid,
            actor_id=self.actor_id,
            bytes=held,
            limit=self._stream_buffer_bytes,
        )
        if self.is_open and not self._writer.transport.is_closing():
            # No drain: a few bytes, from a callback; tell()'s timeout guards the socket.
            write_message(self._writer, Cancel(request_id=rid))

    def _fail_all(self, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result(reason)
        for rid, inbox in list(self._streams.items()):
            if not inbox.overflowed:
                inbox.put(_lost(rid, self.actor_id, reason))


def _lost(request_id: str, actor_id: str, reason: str = "connection closed") -> GenerationFailed:
    return GenerationFailed(
        request_id=request_id,
        message=f"generation actor {actor_id} was lost ({reason})",
        retryable=True,
        status=503,
    )
