"""ActorHandle over a real socket pair: per-request byte bound, and an actor that stops reading."""

from __future__ import annotations

import asyncio
import socket

import pytest
from structlog.testing import capture_logs

from actors.protocol.messages import (
    Cancel,
    Finished,
    Generate,
    GenerationFailed,
    GenerationRequest,
    Hello,
    Shutdown,
    TokenDelta,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from actors.protocol.transport import frame, read_message, write_message
from supervisor.control import handle as handle_module
from supervisor.control.handle import ActorGone, ActorHandle

LIMIT = 64 * 1024


async def _pair(
    limit: int = LIMIT,
) -> tuple[ActorHandle, asyncio.StreamReader, asyncio.StreamWriter]:
    """A started handle, and the actor's end of its connection."""
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    actor_reader, actor_writer = await asyncio.open_connection(sock=theirs)
    hello = Hello(actor_id="g.rank0", kind="generation", node="n", pid=1, token="t")
    handle = ActorHandle(hello, reader, writer, stream_buffer_bytes=limit)
    handle.start()
    return handle, actor_reader, actor_writer


def _delta(rid: str, i: int) -> TokenDelta:
    # top_logprobs-like payload: about 1 KiB on the wire
    top = [TopLogprob(token_id=j, token=f"tok{j:04d}", logprob=-1.0 - j) for j in range(20)]
    lp = TokenLogprob(token_id=i, token=f"t{i}", logprob=-0.5, top=top)
    return TokenDelta(request_id=rid, text=f"t{i}", token_ids=[i], logprobs=[lp])


def _finished(rid: str) -> Finished:
    return Finished(rid, "length", Usage(prompt_tokens=1, completion_tokens=1))


async def _next(reader: asyncio.StreamReader):
    return await asyncio.wait_for(read_message(reader), 5)


async def test_a_stream_read_as_it_comes_is_never_cut():
    handle, actor_reader, actor_writer = await _pair()
    stream = handle.stream(GenerationRequest(request_id="r1", model="m", prompt="x"))
    first = asyncio.ensure_future(anext(stream))
    assert isinstance(await _next(actor_reader), Generate)
    n = 4 * LIMIT // len(frame(_delta("r1", 0)))  # four bounds' worth in all
    got = []
    for i in range(n):
        write_message(actor_writer, _delta("r1", i))
        await actor_writer.drain()
        got.append(await first if i == 0 else await anext(stream))
    write_message(actor_writer, _finished("r1"))
    got.append(await anext(stream))
    assert [type(e) for e in got] == [TokenDelta] * n + [Finished]
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert handle.streams_open == 0
    await handle.close()


async def test_an_unread_stream_is_cancelled_freed_and_failed_at_the_bound():
    handle, actor_reader, actor_writer = await _pair()
    stream = handle.stream(GenerationRequest(request_id="r1", model="m", prompt="x"))
    first = asyncio.ensure_future(anext(stream))
    assert isinstance(await _next(actor_reader), Generate)
    write_message(actor_writer, _delta("r1", 0))
    assert isinstance(await first, TokenDelta)
    size = len(frame(_delta("r1", 1)))
    with capture_logs() as logs:
        for i in range(1, 3 * LIMIT // size):  # the consumer takes none of these
            write_message(actor_writer, _delta("r1", i))
        await actor_writer.drain()
        cancel = await _next(actor_reader)
    # the actor is told to stop, and what was held is dropped: only the failure is left
    assert cancel == Cancel(request_id="r1")
    inbox = handle._streams["r1"]
    assert inbox.queue.qsize() == 1 and inbox.bytes == 0
    slow = [e for e in logs if e["event"] == "client_too_slow"]
    assert len(slow) == 1 and slow[0]["request_id"] == "r1"
    assert LIMIT < slow[0]["bytes"] <= LIMIT + size
    # what the actor still sends before it sees the Cancel is dropped, not held
    for i in range(50):
        write_message(actor_writer, _delta("r1", 10_000 + i))
    write_message(actor_writer, _finished("r1"))
    await actor_writer.drain()
    failed = await asyncio.wait_for(anext(stream), 5)
    assert isinstance(failed, GenerationFailed)
    assert failed.status == 408 and not failed.retryable and "stream_buffer_bytes" in failed.message
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert handle.streams_open == 0
    # no second Cancel: the next frame the actor reads is the Shutdown sent after it
    await handle.tell(Shutdown(reason="done"))
    assert isinstance(await _next(actor_reader), Shutdown)
    await handle.close()


async def test_an_actor_that_stops_reading_is_lost_not_waited_for(monkeypatch):
    monkeypatch.setattr(handle_module, "SEND_TIMEOUT", 0.3)
    handle, _actor_reader, _actor_writer = await _pair()  # the actor never reads
    stream = handle.stream(GenerationRequest(request_id="r1", model="m", prompt="x"))
    waiting = asyncio.ensure_future(anext(stream))
    big = GenerationRequest(request_id="r2", model="m", prompt="x" * (1 << 20))
    with pytest.raises(ActorGone):
        for _ in range(64):  # the socket buffers fill; then drain() times out
            await asyncio.wait_for(handle.tell(Generate(request=big)), 5)
    assert handle.closed.done() and "not reading" in handle.closed.result()
    lost = await asyncio.wait_for(waiting, 5)  # a request in flight is failed over, not hung
    assert isinstance(lost, GenerationFailed) and lost.retryable
    await stream.aclose()
    await handle.close()
