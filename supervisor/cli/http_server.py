"""The HTTP server: uvicorn, plus the limits it lacks, from the hostfile's ``api`` section.

uvicorn (0.54) bounds neither how long a request head may take nor its body: a client
that connects and sends half a head holds a connection forever. Nor does it bound a
response waiting on a client that reads nothing. ``GuardedHttpProtocol`` (uvicorn's
httptools protocol; httptools is a declared dependency, so uvicorn's h11 fallback is
never used) adds, per connection, one timer for the phase it is in:

- head: from the connection (or the end of the previous response) to the end of the
  next request head, ``header_timeout``; a partial head is answered 408, an idle
  connection just closed;
- body: from the end of the head to the end of the body, ``body_timeout``; 408 if no
  response has begun, else the connection is closed;
- a response the client takes no bytes of (the transport paused writing) for
  ``body_timeout`` is aborted.

Past ``max_connections`` open connections a new one is answered 503 with Retry-After
at once, so a flood cannot take the file descriptors the control port and spawns need;
past ``max_connections`` requests in progress a new request gets the same 503. Body
size is the app's (Litestar's ``request_max_body_size``: 413).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import Callable

import msgspec
import structlog
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = structlog.get_logger()

ErrorJson = Callable[[int, str], bytes]  # (status, message) -> the API's error body
RETRY_AFTER = 1  # seconds a client refused at max_connections should wait
# A refused or timed-out connection: its answer is sent with a FIN, what the client
# still sends is read and dropped for this long, then it is closed (no reset that
# could destroy the answer before the client reads it).
LINGER = 1.0
FD_RESERVE = 256  # descriptors kept for the control port, actors' pipes, SSH, files
MACOS_OPEN_MAX = 10240  # what macOS accepts as a soft limit when the hard one is "unlimited"


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (macOS starts at 256); the new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (hard, min(hard, MACOS_OPEN_MAX) if hard > 0 else MACOS_OPEN_MAX):
        if soft == resource.RLIM_INFINITY or (target != resource.RLIM_INFINITY and soft >= target):
            return soft
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            continue  # macOS refuses an infinite soft limit: try OPEN_MAX
    return soft


class GuardedConfig(uvicorn.Config):
    """uvicorn's Config carrying our limits to each connection's protocol."""

    def __init__(self, app, *, limits, error_json: ErrorJson, **kwargs):
        super().__init__(app, http=GuardedHttpProtocol, **kwargs)
        self.limits = limits  # an ApiSpec: header_timeout, body_timeout, max_connections
        self.error_json = error_json


class GuardedHttpProtocol(HttpToolsProtocol):
    """One HTTP/1.1 connection, with read and write timeouts and a connection cap."""

    def __init__(self, config: GuardedConfig, server_state, app_state, _loop=None):
        super().__init__(config, server_state, app_state, _loop)
        self._limits = config.limits
        self._error_json = config.error_json
        self._app = self.app
        self.limit_concurrency = None  # checked below, to answer with Retry-After
        self._read_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._head_begun = False
        self._answered = False  # we answered and half-closed: the rest is dropped

    # --------------------------------------------------------------- timers

    def _arm(self, seconds: float, phase: str) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(seconds, self._read_expired, phase)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_expired(self, phase: str) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if phase == "head" and not self._head_begun:
            self.transport.close()  # idle between requests: nothing to answer
            return
        limit = self._limits.header_timeout if phase == "head" else self._limits.body_timeout
        log.info("http_read_timeout", phase=phase, client=_client(self.client), timeout=limit)
        if phase == "body" and self.cycle is not None and self.cycle.response_started:
            self.transport.abort()
            return
        # A body's app, waiting for the rest, sees the disconnect; what it sends is dropped.
        self._answer(408, f"request {phase} not received within {limit:g} s")

    def _answer(self, status: int, message: str, extra: bytes = b"") -> None:
        """Answer outside the app, half-close, and close after LINGER."""
        self._answered = True
        self.flow.resume_reading()  # to drop what the client still sends
        self.transport.write(_response(status, self._error_json(status, message), extra))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._disarm()
        self._read_timer = self.loop.call_later(LINGER, self.transport.close)

    # --------------------------------------------------------- uvicorn hooks

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._limits.max_connections:
            _refused_connections.note(open=len(self.connections))
            self._answer(503, _BUSY, b"retry-after: %d\r\n" % RETRY_AFTER)
            return
        self._arm(self._limits.header_timeout, "head")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._answered:
            super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True

    def on_headers_complete(self) -> None:
        self._head_begun = False
        self._arm(self._limits.body_timeout, "body")
        busy = len(self.tasks) >= self._limits.max_connections
        self.app = self._busy if busy else self._app
        if busy:
            _refused_requests.note(in_progress=len(self.tasks))
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._arm(self._limits.header_timeout, "head")  # for the next request's head

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self._limits.body_timeout, self._write_expired)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_expired(self) -> None:
        self._write_timer = None
        log.info("http_client_not_reading", client=_client(self.client))
        self.transport.abort()

    async def _busy(self, scope, receive, send) -> None:
        """The ASGI app of a request refused at max_connections requests in progress."""
        body = self._error_json(503, _BUSY)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(RETRY_AFTER).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


class _Tally:
    """Refusals in a flood: one log line a second, with how many since the last."""

    def __init__(self, event: str):
        self._event = event
        self._count = 0
        self._logged_at = 0.0

    def note(self, **fields) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._logged_at >= 1.0:
            log.warning(self._event, refused=self._count, **fields)
            self._count, self._logged_at = 0, now


_refused_connections = _Tally("http_connection_refused")
_refused_requests = _Tally("http_request_refused")
_BUSY = "the server is at its connection limit (api.max_connections); retry shortly"


def _response(status: int, body: bytes, extra: bytes = b"") -> bytes:
    phrase = {408: b"Request Timeout", 503: b"Service Unavailable"}[status]
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (status, phrase),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            extra,
            b"connection: close\r\n\r\n",
            body,
        ]
    )


def _client(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"


class Server(uvicorn.Server):
    """uvicorn's Server without its signal capture: the supervisor owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def make_server(app, limits, error_json: ErrorJson) -> Server:
    """The API's server over ``app`` with ``limits`` (the hostfile's ApiSpec).

    The soft open-file limit is raised to the hard one first; if it still cannot hold
    ``max_connections`` plus FD_RESERVE, the connection cap is lowered to fit (logged).
    """
    soft = raise_open_file_limit()
    reserve = min(FD_RESERVE, soft // 2)
    if soft != resource.RLIM_INFINITY and soft < limits.max_connections + reserve:
        cap = soft - reserve
        log.warning(
            "open_file_limit_low",
            soft_limit=soft,
            max_connections=limits.max_connections,
            lowered_to=cap,
        )
        limits = msgspec.structs.replace(limits, max_connections=cap)
    config = GuardedConfig(
        app,
        limits=limits,
        error_json=error_json,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    return Server(config)
