"""The control port before authentication: bounded frames, bounded pending peers, nonces.

Real sockets against a real ControlServer; a real actor process where it matters.
"""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import sys
import time

import pytest
import structlog

from actors.protocol.messages import ActorConfig, Hello, Ready, Refused, Welcome
from actors.protocol.transport import frame, read_message, write_message
from supervisor.control.handle import ActorHandle
from supervisor.control.server import ControlServer
from supervisor.supervision.spawner import ActorLaunch, actor_environment
from tests.conftest import until

TOKEN = "control-test-token"
GiB = 1 << 30


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True if the server closes (or resets) the connection within ``seconds``."""
    try:
        data = await asyncio.wait_for(reader.read(1), seconds)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return data == b""


async def say_hello(port: int, actor_id: str, nonce: str, token: str = TOKEN):
    """Dial, say Hello, return the reply and the open connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    hello = Hello(actor_id=actor_id, kind="memory", node="n", pid=1, token=token, nonce=nonce)
    write_message(writer, hello)
    await writer.drain()
    return await asyncio.wait_for(read_message(reader), 5), writer


async def test_an_oversized_first_frame_closes_the_connection_before_its_body_is_read():
    control = ControlServer(TOKEN, max_hello_bytes=4096, hello_timeout=30)
    _, port = await control.start()
    try:
        with structlog.testing.capture_logs() as logs:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(struct.pack(">I", GiB) + b"x" * 100)  # 1 GiB announced, 100 B sent
            started = time.monotonic()
            # Reading the body would wait for the other 1 GiB until the 30 s Hello timeout.
            assert await closed_within(reader, 3), "the connection stayed open"
            assert time.monotonic() - started < 3
            writer.close()
        dropped = [e for e in logs if e["event"] == "control_connection_dropped"]
        assert dropped[0]["reason"] == "frame of 1073741824 bytes exceeds the 4096 byte limit"
        await until(lambda: control.pending == 0, 5, "the peer to be forgotten")
        assert control.refused == 0  # no Hello was ever read
    finally:
        await control.close()


async def test_a_first_frame_within_the_limit_is_waited_for():
    """The limit, not any announced length, is what closes: 4096 bytes are awaited."""
    control = ControlServer(TOKEN, max_hello_bytes=4096, hello_timeout=30)
    _, port = await control.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(struct.pack(">I", 4096) + b"x" * 100)
        assert not await closed_within(reader, 1.0), "a frame within the limit was refused"
        assert control.pending == 1
        writer.close()
    finally:
        await control.close()


@pytest.mark.e2e  # starts real processes without a fixture
async def test_pending_connections_are_capped_and_an_actor_still_gets_in():
    control = ControlServer(TOKEN, max_pending=3, hello_timeout=3.0)
    _, port = await control.start()
    idle = []
    try:
        for _ in range(2):
            idle.append(await asyncio.open_connection("127.0.0.1", port))
        await until(lambda: control.pending == 2, 5, "two silent peers pending")

        # Within the cap, an announced actor is accepted beside the silent peers.
        first = control.expect("a.memory")
        reply, writer = await say_hello(port, "a.memory", first.nonce)
        assert isinstance(reply, Welcome)
        handle = await asyncio.wait_for(first.handle, 5)
        assert control.pending == 2, "an accepted actor is no longer pending"

        idle.append(await asyncio.open_connection("127.0.0.1", port))
        await until(lambda: control.pending == 3, 5, "the cap reached")
        with structlog.testing.capture_logs() as logs:
            reader, extra = await asyncio.open_connection("127.0.0.1", port)
            started = time.monotonic()
            assert await closed_within(reader, 2), "a peer beyond the cap was held"
            assert time.monotonic() - started < 2  # at once, not after the 3 s Hello timeout
            extra.close()
        assert control.over_capacity == 1
        refused = [e for e in logs if e["event"] == "control_connection_refused"]
        assert refused and refused[0]["max_pending"] == 3

        # The silent peers are dropped at the Hello timeout; then a real actor dials in.
        for peer, w in idle:
            assert await closed_within(peer, 6), "a silent peer outlived the Hello timeout"
            w.close()
        await until(lambda: control.pending == 0, 5, "the silent peers to be dropped")
        second = control.expect("b.memory")
        proc = await spawn_actor("b.memory", port, second.nonce)
        try:
            actor = await asyncio.wait_for(second.handle, 20)
            assert actor.pid == proc.pid
            await actor.close()
        finally:
            await end(proc)
        await handle.close()
        writer.close()
        assert control.over_capacity == 1 and control.refused == 0
    finally:
        await control.close()


async def test_the_right_token_with_a_wrong_nonce_is_refused_and_the_real_actor_still_starts():
    control = ControlServer(TOKEN)
    _, port = await control.start()
    try:
        expected = control.expect("a.memory")
        reply, writer = await say_hello(port, "a.memory", "a-guess")
        assert isinstance(reply, Refused)
        assert reply.reason == "wrong nonce for 'a.memory': not the incarnation being started"
        assert control.refused == 1 and not expected.handle.done()
        writer.close()

        reply, writer = await say_hello(port, "a.memory", expected.nonce)
        assert isinstance(reply, Welcome)
        handle = await asyncio.wait_for(expected.handle, 5)
        assert isinstance(handle, ActorHandle) and handle.is_open
        await handle.close()
        writer.close()
    finally:
        await control.close()


async def test_a_nonce_is_good_for_one_incarnation_and_one_hello():
    control = ControlServer(TOKEN)
    _, port = await control.start()
    try:
        old = control.expect("a.memory")
        new = control.expect("a.memory")  # the next incarnation: the old nonce is void
        assert old.nonce != new.nonce and old.handle.cancelled()

        reply, writer = await say_hello(port, "a.memory", old.nonce)
        assert isinstance(reply, Refused) and "wrong nonce" in reply.reason
        writer.close()
        assert not new.handle.done()

        reply, first = await say_hello(port, "a.memory", new.nonce)
        assert isinstance(reply, Welcome)
        handle = await asyncio.wait_for(new.handle, 5)

        reply, writer = await say_hello(port, "a.memory", new.nonce)  # replayed once used
        assert isinstance(reply, Refused) and "unexpected actor id" in reply.reason
        writer.close()
        assert control.refused == 2 and handle.is_open
        await handle.close()
        first.close()
    finally:
        await control.close()


@pytest.mark.e2e  # starts real processes without a fixture
async def test_an_actor_process_with_a_stale_nonce_is_refused_and_exits():
    control = ControlServer(TOKEN)
    _, port = await control.start()
    try:
        stale = control.expect("a.memory").nonce
        current = control.expect("a.memory")
        proc = await spawn_actor("a.memory", port, stale)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 20)
        finally:
            await end(proc)
        assert proc.returncode == 3  # EXIT_REFUSED
        assert b"actor_refused" in err and b"wrong nonce" in err
        assert control.refused == 1 and not current.handle.done()
    finally:
        await control.close()


async def test_the_listener_hears_what_the_actor_says_straight_after_its_hello():
    """A memory actor sends Ready as soon as it is welcomed; under load it can be read before
    the coroutine awaiting the handle resumes. Here it arrives with the Hello, the worst case:
    a listener attached after the handle resolved would never hear it (the supervisor then
    waited 30 s for a Ready that had come and gone)."""
    control = ControlServer(TOKEN)
    _, port = await control.start()
    heard = []
    try:
        expected = control.expect("a.memory", on_message=lambda h, m: heard.append(m))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        hello = Hello(
            actor_id="a.memory", kind="memory", node="n", pid=1, token=TOKEN, nonce=expected.nonce
        )
        writer.write(frame(hello) + frame(Ready(info={"total_bytes": "1"})))
        await writer.drain()
        handle = await asyncio.wait_for(expected.handle, 5)
        assert isinstance(await asyncio.wait_for(read_message(reader), 5), Welcome)
        await until(lambda: heard, 5, "the Ready sent with the Hello")
        assert [type(m) for m in heard] == [Ready] and heard[0].info == {"total_bytes": "1"}
        await handle.close()
        writer.close()
    finally:
        await control.close()


async def spawn_actor(actor_id: str, port: int, nonce: str) -> asyncio.subprocess.Process:
    """A real memory actor whose environment carries ``nonce`` (as every spawner passes it)."""
    config = ActorConfig(
        actor_id=actor_id, kind="memory", node="n", control_host="127.0.0.1", control_port=port
    )
    env = actor_environment(ActorLaunch(config, token=TOKEN, nonce=nonce), dict(os.environ))
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "actors",
        "memory",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def end(proc: asyncio.subprocess.Process) -> None:
    """End the actor by PID and reap it."""
    if proc.returncode is None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    await proc.wait()
