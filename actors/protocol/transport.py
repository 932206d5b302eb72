"""Framing of protocol messages: 4-byte big-endian length + msgpack.

Two faces over the same frames: asyncio streams (the supervisor) and a
blocking socket shared by threads (actors, whose MLX work runs in threads).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading

from actors.protocol.messages import Message, decode, encode

MAX_FRAME = 64 * 1024 * 1024
_HEADER = struct.Struct(">I")


class FrameError(Exception):
    """The peer sent something that is not a frame of ours."""


def frame(msg: Message) -> bytes:
    body = encode(msg)
    return _HEADER.pack(len(body)) + body


def _check_length(length: int, limit: int = MAX_FRAME) -> int:
    if length > limit:
        raise FrameError(f"frame of {length} bytes exceeds the {limit} byte limit")
    return length


async def read_message(reader: asyncio.StreamReader, max_length: int = MAX_FRAME) -> Message:
    """Read one message; raises asyncio.IncompleteReadError at end of stream."""
    return decode(await read_body(reader, max_length))


async def read_body(reader: asyncio.StreamReader, max_length: int = MAX_FRAME) -> bytes:
    """Read one frame's body, undecoded (a message held for later costs only its bytes).

    A declared length above ``max_length`` raises FrameError before any of the body is
    read: an unauthenticated peer cannot make us buffer what it announces.
    """
    header = await reader.readexactly(_HEADER.size)
    (length,) = _HEADER.unpack(header)
    return await reader.readexactly(_check_length(length, max_length))


def write_message(writer: asyncio.StreamWriter, msg: Message) -> None:
    writer.write(frame(msg))


class SocketChannel:
    """A blocking, thread-safe message channel over a connected socket."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._send_lock = threading.Lock()
        self._closed = False

    @classmethod
    def connect(cls, host: str, port: int, timeout: float = 10.0) -> SocketChannel:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock)

    def send(self, msg: Message) -> bool:
        """Send one message; False if the channel is closed or broken."""
        data = frame(msg)
        with self._send_lock:
            if self._closed:
                return False
            try:
                self._sock.sendall(data)
                return True
            except OSError:
                self._closed = True
                return False

    def recv(self) -> Message | None:
        """Block for the next message; None at end of stream."""
        header = self._recv_exactly(_HEADER.size)
        if header is None:
            return None
        (length,) = _HEADER.unpack(header)
        body = self._recv_exactly(_check_length(length))
        return None if body is None else decode(body)

    def _recv_exactly(self, n: int) -> bytes | None:
        chunks = bytearray()
        while len(chunks) < n:
            try:
                chunk = self._sock.recv(n - len(chunks))
            except OSError:
                return None
            if not chunk:
                return None
            chunks += chunk
        return bytes(chunks)

    def close(self) -> None:
        with self._send_lock:
            self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
