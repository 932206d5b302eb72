"""Model files copied between this machine and nodes over SFTP, on a real loopback sshd.

Both "nodes" are the same sshd (the supervisor relays node to node, so two connectors to one
server exercise the same code as two servers); files live in separate temp dirs.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import psutil
import pytest

from supervisor.models.transfer import (
    CHUNK,
    Copy,
    LocalEndpoint,
    SSHEndpoint,
    TransferError,
    copy_files,
)
from supervisor.ssh.connection import SSHConnector, close_connections
from supervisor.ssh.target import Endpoint as SSHAddress
from tests.conftest import until
from tests.sshd import Sshd, sshd_fixture  # noqa: F401

SIZES = [0, 1, CHUNK, CHUNK + 12345, 3 * CHUNK + 7, 9 * CHUNK + 1]  # 9 MiB: past one read window
TIMEOUT = 3.0
SLACK = 3.0  # a loaded CI box: the failure must come within the timeout plus this


@pytest.fixture
def node(sshd: Sshd, tmp_path):
    """A factory of connectors named as nodes, all on the loopback sshd."""
    known = sshd.write_known_hosts(tmp_path / "known_hosts")
    address = SSHAddress("127.0.0.1", sshd.port, "root", (str(sshd.client_key),))

    def make(name: str) -> SSHEndpoint:
        return SSHEndpoint(SSHConnector(name, address, known_hosts=str(known), retries=0))

    yield make
    close_connections()


def make_files(folder: Path, sizes: list[int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, size in enumerate(sizes):
        path = folder / f"blob{i}"
        path.write_bytes(os.urandom(size))
        paths.append(path)
    return paths


def plan(sources: list[Path], dst_dir: Path) -> list[Copy]:
    dst_dir.mkdir(parents=True, exist_ok=True)
    return [Copy(str(p), str(dst_dir / p.name), p.stat().st_size) for p in sources]


async def run(pairs, source, target, **kw) -> tuple[int, list[int]]:
    seen: list[int] = []
    kw.setdefault("in_flight", 3)
    kw.setdefault("timeout", TIMEOUT)
    moved = await copy_files(pairs, source, target, progress=seen.append, **kw)
    return moved, seen


@pytest.mark.parametrize("route", ["local->ssh", "ssh->ssh", "ssh->local", "local->local"])
async def test_files_arrive_equal_with_several_in_flight(route, node, tmp_path):
    src_kind, dst_kind = route.split("->")
    endpoints = {"local": LocalEndpoint(), "ssh": None}
    source = endpoints[src_kind] or node("mac1")
    target = endpoints[dst_kind] or node("mac2")
    sources = make_files(tmp_path / "src", SIZES)
    pairs = plan(sources, tmp_path / "staging")

    moved, seen = await run(pairs, source, target)

    assert moved == sum(SIZES) == sum(seen)
    assert max(seen) <= CHUNK
    for pair in pairs:
        assert Path(pair.dst).read_bytes() == Path(pair.src).read_bytes(), pair.dst


async def test_nothing_to_copy_moves_nothing(node):
    assert await run([], node("mac1"), LocalEndpoint()) == (0, [])


async def test_a_missing_source_names_file_and_node_and_leaves_no_dst(node, tmp_path):
    sources = make_files(tmp_path / "src", [CHUNK, 5])
    pairs = plan(sources, tmp_path / "staging")
    gone = Copy(str(tmp_path / "src" / "nope"), str(tmp_path / "staging" / "nope"), 10)

    with pytest.raises(TransferError) as err:
        await run([gone, *pairs], node("mac1"), LocalEndpoint(), in_flight=1)

    message = str(err.value)
    assert "\n" not in message
    assert gone.src in message and "node mac1 (127.0.0.1:" in message, message
    assert "no such file" in message.lower(), message
    assert not Path(gone.dst).exists()
    assert not any(Path(p.dst).exists() for p in pairs)  # the others stopped (in_flight 1)


async def test_a_source_of_another_size_is_refused_and_the_remote_dst_removed(node, tmp_path):
    (source,) = make_files(tmp_path / "src", [2 * CHUNK])
    pair = Copy(str(source), str(tmp_path / "staging" / "blob0"), CHUNK)
    (tmp_path / "staging").mkdir()

    with pytest.raises(TransferError, match=f"{source}.*has {2 * CHUNK} bytes, expected {CHUNK}"):
        await run([pair], LocalEndpoint(), node("mac2"))
    assert not Path(pair.dst).exists()


async def test_a_missing_target_directory_names_the_target_node(node, tmp_path):
    (source,) = make_files(tmp_path / "src", [100])
    pair = Copy(str(source), str(tmp_path / "absent" / "blob0"), 100)

    with pytest.raises(TransferError, match=r"node mac2 \(127\.0\.0\.1:\d+\): no such file"):
        await run([pair], LocalEndpoint(), node("mac2"))


async def test_an_unreachable_node_is_a_transfer_error(node, sshd, tmp_path):
    (source,) = make_files(tmp_path / "src", [100])
    pairs = plan([source], tmp_path / "staging")
    sshd.stop()

    with pytest.raises(TransferError, match=r"node mac2 \(127\.0\.0\.1:\d+\): connection refused"):
        await run(pairs, LocalEndpoint(), node("mac2"))


def sparse(path: Path, size: int) -> Path:
    """A big file that costs no disk: the copy moves its zeros all the same."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


async def fail_mid_transfer(pairs, source, target, harm) -> tuple[TransferError, float, int]:
    """Copy; ``harm()`` once the first chunk landed; the error, seconds taken after harm,
    bytes seen."""
    seen: list[int] = []
    harmed: list[float] = []

    def progress(n: int) -> None:
        seen.append(n)
        if not harmed:
            harm()
            harmed.append(time.monotonic())

    with pytest.raises(TransferError) as err:
        await copy_files(pairs, source, target, in_flight=2, timeout=TIMEOUT, progress=progress)
    assert harmed, "the copy failed before the first chunk landed"
    return err.value, time.monotonic() - harmed[0], sum(seen)


# paramiko's readv sends its requests from a helper thread; when the connection dies under it,
# that thread ends on an EOFError it does not catch (the copy itself fails as asserted).
LOST_CONNECTION = "ignore::pytest.PytestUnhandledThreadExceptionWarning"


@pytest.mark.filterwarnings(LOST_CONNECTION)
async def test_a_dead_sshd_mid_transfer_fails_within_the_timeout(node, sshd, tmp_path):
    big = 64 * CHUNK
    sources = [sparse(tmp_path / "src" / f"big{i}", big) for i in range(2)]
    pairs = plan(sources, tmp_path / "staging")

    error, took, moved = await fail_mid_transfer(pairs, node("mac1"), LocalEndpoint(), sshd.stop)

    assert took < TIMEOUT + SLACK, took
    assert moved < 2 * big
    message = str(error)
    assert "node mac1 (127.0.0.1:" in message and str(tmp_path / "src" / "big") in message
    assert not any(Path(p.dst).exists() for p in pairs)  # local partials removed


@pytest.mark.filterwarnings(LOST_CONNECTION)
async def test_a_hung_node_fails_after_the_timeout(node, sshd, tmp_path):
    """The server stops answering but keeps the connection: only the timeout can tell."""
    sources = [sparse(tmp_path / "src" / "big0", 64 * CHUNK)]
    pairs = plan(sources, tmp_path / "staging")
    frozen: list[psutil.Process] = []

    def freeze() -> None:
        for process in sshd.session_processes():
            process.suspend()
            frozen.append(process)

    try:
        error, took, _ = await fail_mid_transfer(pairs, LocalEndpoint(), node("mac2"), freeze)
    finally:
        for process in frozen:
            process.resume()  # the fixture's teardown ends them by PID
    assert frozen
    assert TIMEOUT - 0.5 < took < TIMEOUT + SLACK, took
    assert f"node mac2 (127.0.0.1:{sshd.port}): no progress for {TIMEOUT:g} s" in str(error)


async def test_cancelling_stops_the_copies(node, tmp_path):
    sources = [sparse(tmp_path / "src" / f"big{i}", 256 * CHUNK) for i in range(2)]
    pairs = plan(sources, tmp_path / "staging")
    started = asyncio.Event()
    task = asyncio.create_task(
        copy_files(
            pairs,
            LocalEndpoint(),
            node("mac2"),
            in_flight=2,
            timeout=TIMEOUT,
            progress=lambda n: started.set(),
        )
    )
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The copying threads stop at their next chunk and remove what they wrote.
    await until(lambda: not any(Path(p.dst).exists() for p in pairs), 10, "partials removed")


@pytest.mark.parametrize(
    ("kw", "message"),
    [({"in_flight": 0}, "in_flight must be at least 1"), ({"timeout": 0}, "timeout must be")],
)
async def test_bad_arguments_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        await run([Copy("/a", "/b", 1)], LocalEndpoint(), LocalEndpoint(), **kw)
