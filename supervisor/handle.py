"""Actor handles, Ray style: callers ``tell``, ``ask`` and ``stream``; they never see sockets."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable

import structlog

from actors.protocol import (
    Cancel,
    Finished,
    Generate,
    GenerationEvent,
    GenerationFailed,
    GenerationRequest,
    Hello,
    Message,
    Ping,
    Pong,
    TokenDelta,
)
from actors.transport import FrameError, read_message, write_message

log = structlog.get_logger()

_corr_ids = itertools.count(1)


class ActorGone(Exception):
    """The actor's control connection is closed."""


class ActorHandle:
    """One incarnation of one actor, as seen from the supervisor."""

    def __init__(self, hello: Hello, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.hello = hello
        self.actor_id = hello.actor_id
        self.pid = hello.pid
        self._reader = reader
        self._writer = writer
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._streams: dict[str, asyncio.Queue[GenerationEvent]] = {}
        self._task: asyncio.Task | None = None
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.on_message: Callable[[ActorHandle, Message], None] = lambda h, m: None

    def start(self) -> None:
        self._task = asyncio.create_task(self._read_loop(), name=f"actor-{self.actor_id}")

    @property
    def is_open(self) -> bool:
        return not self.closed.done()

    async def tell(self, msg: Message) -> None:
        if not self.is_open:
            raise ActorGone(self.actor_id)
        write_message(self._writer, msg)
        try:
            await self._writer.drain()
        except ConnectionError as exc:
            raise ActorGone(self.actor_id) from exc

    async def ask(self, timeout: float = 5.0) -> Pong:
        """Round-trip a Ping; the Pong carries the actor's vitals."""
        corr_id = next(_corr_ids)
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[corr_id] = fut
        try:
            await self.tell(Ping(corr_id=corr_id))
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(corr_id, None)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Run ``request`` on the actor; yields until Finished or GenerationFailed.

        Leaving the iteration early (client gone) cancels the request on the actor.
        """
        rid = request.request_id
        queue: asyncio.Queue[GenerationEvent] = asyncio.Queue()
        self._streams[rid] = queue
        done = False
        try:
            await self.tell(Generate(request=request))
            while True:
                event = await queue.get()
                yield event
                if isinstance(event, (Finished, GenerationFailed)):
                    done = True
                    return
        except ActorGone:
            done = True
            yield _lost(rid, self.actor_id)
        finally:
            self._streams.pop(rid, None)
            if not done and self.is_open:
                try:
                    await self.tell(Cancel(request_id=rid))
                except ActorGone:
                    pass

    @property
    def streams_open(self) -> int:
        return len(self._streams)

    async def close(self, reason: str = "closed") -> None:
        self._fail_all(reason)
        self._writer.close()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    async def _read_loop(self) -> None:
        reason = "connection closed"
        try:
            while True:
                msg = await read_message(self._reader)
                self._dispatch(msg)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except (FrameError, ValueError) as exc:
            reason = f"bad frame: {exc}"
            log.error("actor_bad_frame", actor_id=self.actor_id, error=str(exc))
        except asyncio.CancelledError:
            reason = "closed by supervisor"
        finally:
            self._fail_all(reason)
            self._writer.close()

    def _dispatch(self, msg: Message) -> None:
        if isinstance(msg, (TokenDelta, Finished, GenerationFailed)):
            queue = self._streams.get(msg.request_id)
            if queue is not None:
                queue.put_nowait(msg)
            return
        if isinstance(msg, Pong):
            fut = self._pending.get(msg.corr_id)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        self.on_message(self, msg)

    def _fail_all(self, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result(reason)
        for rid, queue in list(self._streams.items()):
            queue.put_nowait(_lost(rid, self.actor_id, reason))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ActorGone(self.actor_id))


def _lost(request_id: str, actor_id: str, reason: str = "connection closed") -> GenerationFailed:
    return GenerationFailed(
        request_id=request_id,
        message=f"generation actor {actor_id} was lost ({reason})",
        retryable=True,
        status=503,
    )
