"""Copying model files between machines: this one, or a node over SFTP, either side.

The supervisor relays node-to-node copies (nodes do not hold each other's SSH keys), so a
copy reads from one endpoint and writes to another in the same thread, 1 MiB at a time.
paramiko blocks, so each file in flight runs on a thread of a pool bounded by ``in_flight``
with its own SFTP channel; every read and write on a channel is bounded by ``timeout``.
The receiver stages what lands here and checks sha256 before renaming: this module writes
``dst`` exactly and removes it when the copy fails.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import paramiko
import structlog

from supervisor.ssh.connection import SSHConnector
from supervisor.ssh.target import SSHError

log = structlog.get_logger()

CHUNK = 1 << 20
# Read-ahead per SFTP file: requests for this many bytes are on the wire at once, so a
# round trip stalls the pipe once per window, not once per 32 KiB request.
READ_WINDOW = 8 * CHUNK
# SSH flow control for what a node sends us (reads): it may send this much unacknowledged.
# Above paramiko's 2 MiB default reads gained ~25% on loopback; more gained nothing. Writes
# are paced by the node's own window (OpenSSH's), small enough that a hung node stalls the
# channel (a timeout) before it stalls the socket (which paramiko would retry forever).
CHANNEL_WINDOW = 4 * CHUNK


class TransferError(Exception):
    """A copy failed; the message is one line naming the file and the node."""


class _Aborted(Exception):
    """Another file failed or the caller gave up: this copy stops quietly."""


@dataclass(frozen=True)
class Copy:
    """One file: absolute ``src`` on the source endpoint, absolute ``dst`` on the target."""

    src: str
    dst: str
    size: int


@dataclass(frozen=True)
class LocalEndpoint:
    """This machine's files (the supervisor's)."""

    @property
    def where(self) -> str:
        return "the supervisor's machine"


@dataclass(frozen=True)
class SSHEndpoint:
    """A node's files, reached over SFTP on its shared SSH connection."""

    connector: SSHConnector

    @property
    def where(self) -> str:
        return self.connector.where


Endpoint = LocalEndpoint | SSHEndpoint


async def copy_files(
    pairs: list[Copy],
    source: Endpoint,
    target: Endpoint,
    *,
    in_flight: int,
    timeout: float,
    progress: Callable[[int], None],
) -> int:
    """Copy every pair, ``in_flight`` files at a time; return the bytes moved.

    ``progress(n)`` is called on the event loop as each chunk of ``n`` bytes lands. The
    first failure stops the other copies and raises TransferError; no partial ``dst`` stays.
    """
    if in_flight < 1:
        raise ValueError(f"in_flight must be at least 1, got {in_flight}")
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    if not pairs:
        return 0
    loop = asyncio.get_running_loop()
    src_client = await _ssh_client(source)
    dst_client = await _ssh_client(target)
    abort = threading.Event()

    def landed(n: int) -> None:
        try:
            loop.call_soon_threadsafe(progress, n)
        except RuntimeError:  # the loop is gone: the caller stopped listening
            pass

    def copy_one(copy: Copy) -> int:
        reader = _reader(source, src_client, copy, timeout)
        writer = _writer(target, dst_client, copy, timeout)
        return _relay(copy, reader, writer, abort, landed)

    queue = list(reversed(pairs))
    moved = 0
    pool = ThreadPoolExecutor(max_workers=min(in_flight, len(pairs)), thread_name_prefix="sftp")

    async def worker() -> None:
        nonlocal moved
        while queue and not abort.is_set():
            copy = queue.pop()
            try:
                done = await loop.run_in_executor(pool, copy_one, copy)
            except BaseException:
                abort.set()
                raise
            moved += done  # not `moved += await`: that reads `moved` before the wait

    try:
        results = await asyncio.gather(
            *(worker() for _ in range(min(in_flight, len(pairs)))), return_exceptions=True
        )
    finally:
        abort.set()  # cancelled: the threads stop at their next chunk and clean up
        pool.shutdown(wait=False)
    failures = [r for r in results if isinstance(r, BaseException) and not isinstance(r, _Aborted)]
    if failures:
        raise failures[0]
    return moved


async def _ssh_client(endpoint: Endpoint) -> paramiko.SSHClient | None:
    if isinstance(endpoint, LocalEndpoint):
        return None
    try:
        return await endpoint.connector.client()
    except SSHError as exc:
        raise TransferError(str(exc)) from None


def _relay(copy: Copy, reader: _Reader, writer: _Writer, abort: threading.Event, landed) -> int:
    """Copy one file (in a pool thread); on failure remove ``dst`` and raise TransferError."""
    side, moved = reader, 0
    try:
        if abort.is_set():
            raise _Aborted
        reader.open()
        side = writer
        writer.open()
        side = reader
        for data in reader.chunks():
            if abort.is_set():
                raise _Aborted
            side = writer
            writer.write(data)
            side = reader
            moved += len(data)
            landed(len(data))
        side = writer
        writer.finish()
        reader.close()
        return moved
    except BaseException as exc:
        writer.discard(healthy=side is not writer)
        reader.close()
        if isinstance(exc, _Aborted):
            raise
        why = _reason(exc, reader.timeout)
        log.warning("transfer_failed", src=copy.src, dst=copy.dst, node=side.where, reason=why)
        raise TransferError(
            f"copying {copy.src} to {writer.where}:{copy.dst}: {side.where}: {why}"
        ) from None


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"no progress for {timeout:g} s"
    if isinstance(exc, EOFError) or (
        isinstance(exc, paramiko.SSHException) and "dropped" in str(exc)
    ):
        return "connection lost"
    if isinstance(exc, paramiko.ChannelException):  # sshd's MaxSessions (10) per connection
        return (
            "the SSH server refused another session (sshd's MaxSessions, 10 by default, "
            "bounds the actors plus the hostfile's models.files_in_flight per host)"
        )
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


def _open_sftp(client: paramiko.SSHClient, timeout: float) -> paramiko.SFTPClient:
    """An SFTP session on its own channel of the shared connection, every wait bounded."""
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise EOFError("connection closed")
    channel = transport.open_session(
        window_size=CHANNEL_WINDOW, max_packet_size=1 << 15, timeout=timeout
    )
    channel.settimeout(timeout)
    # paramiko waits for the subsystem reply without a deadline: a hung host would hold the
    # thread forever, so the channel is closed under it (the wait then raises).
    watchdog = threading.Timer(timeout, channel.close)
    watchdog.start()
    try:
        channel.invoke_subsystem("sftp")
        return paramiko.SFTPClient(channel)
    except BaseException:
        channel.close()
        raise
    finally:
        watchdog.cancel()


class _Reader:
    def __init__(self, where: str, copy: Copy, timeout: float):
        self.where, self.copy, self.timeout = where, copy, timeout

    def _check_size(self, size: int) -> None:
        if size != self.copy.size:
            raise TransferError(f"the file has {size} bytes, expected {self.copy.size}")


class _LocalReader(_Reader):
    def open(self) -> None:
        self.file = open(self.copy.src, "rb")  # noqa: SIM115 - closed in close()
        self._check_size(os.fstat(self.file.fileno()).st_size)

    def chunks(self) -> Iterator[bytes]:
        left = self.copy.size
        while left > 0:
            data = self.file.read(min(CHUNK, left))
            if not data:
                raise TransferError(f"the file ended {left} bytes early")
            left -= len(data)
            yield data

    def close(self) -> None:
        if getattr(self, "file", None) is not None:
            self.file.close()


class _SFTPReader(_Reader):
    def __init__(self, where: str, client: paramiko.SSHClient, copy: Copy, timeout: float):
        super().__init__(where, copy, timeout)
        self.client, self.sftp, self.file = client, None, None

    def open(self) -> None:
        self.sftp = _open_sftp(self.client, self.timeout)
        self.file = self.sftp.open(self.copy.src, "rb")
        self._check_size(self.file.stat().st_size)

    def chunks(self) -> Iterator[bytes]:
        # readv pipelines the 32 KiB requests of one window and its helper thread ends once
        # they are sent; paramiko's prefetch would spin forever after an abort.
        size = self.copy.size
        for start in range(0, size, READ_WINDOW):
            end = min(start + READ_WINDOW, size)
            ranges = [(o, min(CHUNK, end - o)) for o in range(start, end, CHUNK)]
            for (_, length), data in zip(ranges, self.file.readv(ranges), strict=True):
                if len(data) != length:
                    raise TransferError(f"the file ended early at {start} bytes")
                yield data

    def close(self) -> None:
        if self.sftp is not None:
            sftp, self.sftp = self.sftp, None
            _close_quietly(sftp)  # closes the channel; the server drops the open handle


class _Writer:
    def __init__(self, where: str, copy: Copy, timeout: float):
        self.where, self.copy, self.timeout = where, copy, timeout


class _LocalWriter(_Writer):
    def open(self) -> None:
        self.file = open(self.copy.dst, "wb")  # noqa: SIM115 - closed in finish()/discard()

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def finish(self) -> None:
        self.file.close()

    def discard(self, healthy: bool) -> None:
        if getattr(self, "file", None) is None:
            return
        self.file.close()
        try:
            os.unlink(self.copy.dst)
        except FileNotFoundError:
            pass


class _SFTPWriter(_Writer):
    def __init__(self, where: str, client: paramiko.SSHClient, copy: Copy, timeout: float):
        super().__init__(where, copy, timeout)
        self.client, self.sftp, self.file = client, None, None

    def open(self) -> None:
        self.sftp = _open_sftp(self.client, self.timeout)
        self.file = self.sftp.open(self.copy.dst, "wb")
        self.file.set_pipelined(True)  # acknowledgements are collected, not awaited per write

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def finish(self) -> None:
        self.file.close()  # waits for every pipelined acknowledgement: errors surface here
        self.sftp.close()
        self.sftp = None

    def discard(self, healthy: bool) -> None:
        """Remove the partial ``dst`` when the channel still answers; a dead or hung one is
        only closed (waiting on it again would double the timeout; the receiver's staging
        directory is removed at commit anyway)."""
        if self.sftp is None:
            return
        try:
            if healthy and self.file is not None:
                self.sftp.remove(self.copy.dst)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            log.warning("transfer_cleanup_failed", dst=self.copy.dst, node=self.where, error=exc)
        finally:
            _close_quietly(self.sftp)
            self.sftp = None


def _close_quietly(sftp: paramiko.SFTPClient) -> None:
    """Close an SFTP session whose connection may be gone: then nothing is left open."""
    try:
        sftp.close()
    except (OSError, EOFError, paramiko.SSHException):
        pass


def _reader(endpoint: Endpoint, client, copy: Copy, timeout: float) -> _Reader:
    if client is None:
        return _LocalReader(endpoint.where, copy, timeout)
    return _SFTPReader(endpoint.where, client, copy, timeout)


def _writer(endpoint: Endpoint, client, copy: Copy, timeout: float) -> _Writer:
    if client is None:
        return _LocalWriter(endpoint.where, copy, timeout)
    return _SFTPWriter(endpoint.where, client, copy, timeout)
