"""The supervisor's recent log lines, kept in memory for ``supervisor logs`` and
``GET /api/cluster/logs``: a bounded ring of the structured lines (the supervisor's own and the
actor lines it relays), and followers that get each new line as it is written.

A structlog processor (``LogRing.processor``) feeds it, so the ring holds exactly what was
printed, as dicts. Log calls may come from any thread (SSH reader threads, executors): the
ring takes a lock, and a follower's queue is only touched on its own event loop.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from supervisor.serving.contract import LogFilter

LEVELS = ("debug", "info", "warning", "error", "critical")
_RANK = {name: i for i, name in enumerate(LEVELS)} | {"warn": 2, "exception": 3, "fatal": 4}
MAX_TEXT = 8192  # characters of one string value kept in the ring (the printed line keeps all)
_MAX_DEPTH = 6
EVERY = LogFilter()


def level_rank(level: str) -> int:
    """debug 0 < info 1 < warning 2 < error 3 < critical 4; ValueError for any other name."""
    try:
        return _RANK[level.lower()]
    except KeyError:
        raise ValueError(f"unknown level {level!r}; expected one of {', '.join(LEVELS)}") from None


def matches(line: Mapping[str, Any], where: LogFilter, min_rank: int = 0) -> bool:
    """Every field of ``where`` holds for ``line`` (``min_rank``: ``where.level``'s rank)."""
    if where.actor is not None and where.actor not in (line.get("actor_id"), line.get("actor")):
        return False
    if where.node is not None and line.get("node") != where.node:
        return False
    if where.request_id is not None and not _same_request(line.get("request_id"), where.request_id):
        return False
    return min_rank == 0 or _RANK.get(str(line.get("level", "info")), 1) >= min_rank


def _same_request(value: object, wanted: str) -> bool:
    # A request of n choices runs as ``<id>-0``, ``<id>-1``...: its id finds them all.
    if not isinstance(value, str):
        return False
    return value == wanted or (
        value.startswith(wanted + "-") and value[len(wanted) + 1 :].isdigit()
    )


def _plain(value: Any, depth: int = 0) -> Any:
    """A JSON-ready copy: long strings cut, anything else as its ``str``."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + "…"
    if depth < _MAX_DEPTH and isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if depth < _MAX_DEPTH and isinstance(value, list | tuple | set | frozenset):
        return [_plain(v, depth + 1) for v in value]
    return _plain(str(value), depth)


@dataclass(eq=False)
class _Follower:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[dict]
    where: LogFilter
    min_rank: int
    dropped: bool = False
    ended: bool = False  # the supervisor stops: what is queued, then the end


_END: dict = {}  # queued after the last line of a follower the supervisor ends


class TooManyFollowers(Exception):
    """Every follower slot is taken, in one line."""


class LogRing:
    """The newest ``lines`` log lines, and up to ``followers`` live followers, each with a
    queue of ``follow_buffer`` lines: a follower that falls that far behind is dropped (it
    gets a ``logs_follow_dropped`` line last) so that it never holds the others back."""

    def __init__(self, lines: int = 5000, follow_buffer: int = 1000, followers: int = 32) -> None:
        self._lines: deque[dict] = deque(maxlen=lines)
        self._lock = threading.Lock()
        self._followers: list[_Follower] = []
        self.size = lines
        self.follow_buffer = follow_buffer
        self.max_followers = followers

    # ---------------------------------------------------------------- writing

    def processor(self, _logger: Any, _method: str, event_dict: dict) -> dict:
        """structlog processor: keep a copy of the line, pass it on unchanged."""
        self.append(event_dict)
        return event_dict

    def append(self, event_dict: Mapping[str, Any]) -> None:
        line = _plain(event_dict)
        line.setdefault("timestamp", datetime.now(UTC).isoformat().replace("+00:00", "Z"))
        line.setdefault("level", "info")
        with self._lock:
            self._lines.append(line)
            followers = list(self._followers)
        for follower in followers:
            if matches(line, follower.where, follower.min_rank):
                _post(follower, line)

    # ---------------------------------------------------------------- reading

    def tail(self, limit: int, where: LogFilter = EVERY) -> list[dict]:
        """The newest ``limit`` lines that match ``where``, oldest first."""
        min_rank = level_rank(where.level) if where.level else 0
        found: list[dict] = []
        with self._lock:  # newest first, so a small limit reads few lines
            for line in reversed(self._lines):
                if len(found) >= limit:
                    break
                if matches(line, where, min_rank):
                    found.append(line)
        found.reverse()
        return found

    @property
    def follower_count(self) -> int:
        with self._lock:
            return len(self._followers)

    def follow(self, where: LogFilter = EVERY) -> AsyncIterator[dict]:
        """Lines that match ``where`` from now on, until the reader stops or is dropped.
        Registered at once (not at the first ``anext``): nothing written after this call
        is missed. TooManyFollowers when every slot is taken."""
        min_rank = level_rank(where.level) if where.level else 0
        follower = _Follower(
            asyncio.get_running_loop(), asyncio.Queue(self.follow_buffer), where, min_rank
        )
        with self._lock:
            if len(self._followers) >= self.max_followers:
                raise TooManyFollowers(
                    f"{self.max_followers} log followers are connected already, the most the "
                    'hostfile\'s "logs.followers" allows; close one or raise it'
                )
            self._followers.append(follower)
        return Following(self, follower)

    def end_followers(self) -> None:
        """The supervisor stops: every follower gets what is queued, then its end, so an open
        ``logs -f`` does not hold the HTTP server's shutdown."""
        with self._lock:
            followers = list(self._followers)
        for follower in followers:
            follower.ended = True
            try:
                follower.loop.call_soon_threadsafe(follower.queue.put_nowait, _END)
            except (RuntimeError, asyncio.QueueFull):  # closed loop, or full: ended by flag
                pass

    def _forget(self, follower: _Follower) -> None:
        with self._lock:
            if follower in self._followers:
                self._followers.remove(follower)


class Following:
    """One follower's lines (an async iterator). ``aclose()`` lets the slot go even if it
    was never read, and so does dropping the last reference; a cancelled read loses nothing."""

    def __init__(self, ring: LogRing, follower: _Follower) -> None:
        self._follower = follower
        self._closed = False
        self._release = weakref.finalize(self, ring._forget, follower)

    def __aiter__(self) -> Following:
        return self

    async def __anext__(self) -> dict:
        follower = self._follower
        if self._closed:
            raise StopAsyncIteration
        if follower.queue.empty() and follower.dropped:
            await self.aclose()
            return _dropped_line(follower.queue.maxsize)
        if follower.queue.empty() and follower.ended:
            await self.aclose()
            raise StopAsyncIteration
        line = await follower.queue.get()
        if line is _END:
            await self.aclose()
            raise StopAsyncIteration
        return line

    async def aclose(self) -> None:
        self._closed = True
        self._release()


def _post(follower: _Follower, line: dict) -> None:
    """Queue ``line`` on the follower's own loop, whichever thread logged it."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is follower.loop:
        _put(follower, line)
        return
    try:
        follower.loop.call_soon_threadsafe(_put, follower, line)
    except RuntimeError:  # its loop is closed: nobody reads it any more
        pass


def _put(follower: _Follower, line: dict) -> None:
    if follower.dropped:
        return
    try:
        follower.queue.put_nowait(line)
    except asyncio.QueueFull:
        # Too slow: the reader gets what is queued, then the marker, and is let go.
        follower.dropped = True


def _dropped_line(behind: int) -> dict:
    return {
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "level": "warning",
        "event": "logs_follow_dropped",
        "message": f"this follower fell {behind} lines behind and was let go; lines written "
        "since are not shown (follow again, or read them with -n)",
    }
