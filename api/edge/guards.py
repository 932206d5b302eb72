"""Who may call what: the inference key, the admin key and the join token, as Litestar guards,
and the ``Host`` check that keeps web pages (DNS rebinding) off a loopback API.

Keys are compared as SHA-256 digests with ``hmac.compare_digest``: the time taken tells
nothing about the key, not even its length.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.types import ASGIApp, Guard, Receive, Scope, Send

from api.edge.error_shape import error_body

INFERENCE_DENIED = "missing or wrong API key; send the header 'Authorization: Bearer <key>'"
ADMIN_MISSING = (
    "this route changes the cluster and needs the admin key: send 'Authorization: Bearer "
    "<admin key>' (the CLI on the supervisor's machine finds it by itself; elsewhere pass "
    "--admin-key or set MLXS_ADMIN_KEY)"
)
ADMIN_WRONG = "wrong admin key; this route changes the cluster and needs the admin key"
JOIN_ONLY = "the join token only adds hosts; this route needs the admin key"
JOIN_MISSING = (
    "adding a host needs the join token or the admin key: send 'Authorization: Bearer "
    "<token>' (`supervisor join-token` on the supervisor's machine prints the command)"
)
JOIN_WRONG = "wrong join token or admin key"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})


@dataclass(frozen=True)
class Keys:
    """The credentials a running API checks; ``api`` None: inference is open."""

    admin: str
    join: str | None = None
    api: str | None = None


def bearer(connection: ASGIConnection) -> str | None:
    """The token of ``Authorization: Bearer <token>``, or None."""
    scheme, _sep, token = connection.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def same_key(given: str, expected: str) -> bool:
    digest = hashlib.sha256
    return hmac.compare_digest(digest(given.encode()).digest(), digest(expected.encode()).digest())


def is_admin(connection: ASGIConnection, keys: Keys) -> bool:
    token = bearer(connection)
    return token is not None and same_key(token, keys.admin)


def require_api_key(api_key: str, admin_key: str | None = None) -> Guard:
    """Inference: ``Bearer <api_key>``, or the admin key (an admin may do everything)."""
    accepted = [k for k in (api_key, admin_key) if k]

    def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        token = bearer(connection)
        # Every key is compared, so which one matched does not show in the time taken.
        if token is None or not sum(same_key(token, k) for k in accepted):
            raise NotAuthorizedException(INFERENCE_DENIED)

    return guard


def inference_guards(keys: Keys) -> list[Guard]:
    return [require_api_key(keys.api, keys.admin)] if keys.api else []


def require_admin(keys: Keys) -> Guard:
    """Routes that change the cluster: the admin key only. Missing: 401; any other: 403."""
    return _require_bearer(keys, join_admitted=False)


def require_join(keys: Keys) -> Guard:
    """Adding a host: the join token or the admin key."""
    return _require_bearer(keys, join_admitted=True)


def _require_bearer(keys: Keys, *, join_admitted: bool) -> Guard:
    missing = JOIN_MISSING if join_admitted else ADMIN_MISSING

    def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        token = bearer(connection)
        if token is None:
            raise NotAuthorizedException(missing)
        admin = same_key(token, keys.admin)
        joining = keys.join is not None and same_key(token, keys.join)
        if admin or (joining and join_admitted):
            return
        if join_admitted:
            raise PermissionDeniedException(JOIN_WRONG)
        raise PermissionDeniedException(JOIN_ONLY if joining else ADMIN_WRONG)

    return guard


def json_body_only(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """A body must say ``application/json``: a web page cannot send that cross-origin
    without a CORS preflight, where ``text/plain`` and forms go out with no question asked."""
    headers = connection.headers
    has_body = headers.get("content-length", "0").strip() not in ("", "0") or bool(
        headers.get("transfer-encoding")
    )
    media = headers.get("content-type", "").split(";")[0].strip().lower()
    if has_body and media != "application/json":
        raise HTTPException(
            status_code=415,
            detail=f"this route takes only 'content-type: application/json' bodies, "
            f"not {media or 'none'!r}",
        )


# -- the Host header ----------------------------------------------------------------------------


def host_name(header: str) -> str:
    """The name part of a ``Host`` header, lower-cased: ``[::1]:8080`` -> ``[::1]``."""
    host = header.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host if end < 0 else host[: end + 1]
    return host.partition(":")[0].removesuffix(".")


class HostCheck:
    """ASGI wrapper: a request whose ``Host`` names none of ``allowed`` gets 403.

    It wraps the whole application, so it covers every route, 404s and CORS preflights.
    A page on ``evil.example`` whose name is rebound to 127.0.0.1 still sends
    ``Host: evil.example``; only a name the operator listed gets through.
    """

    def __init__(self, app: ASGIApp, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = frozenset(LOOPBACK_HOSTS | {h.lower() for h in allowed})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._admits(scope):
            await self._refuse(scope, send)
            return
        await self.app(scope, receive, send)

    def _admits(self, scope: Scope) -> bool:
        if "*" in self.allowed:
            return True
        header = next((v for k, v in scope["headers"] if k == b"host"), None)
        return header is not None and host_name(header.decode("latin-1")) in self.allowed

    async def _refuse(self, scope: Scope, send: Send) -> None:
        message = (
            "the Host header names no host this API answers to; it listens on loopback and "
            'answers to localhost, 127.0.0.1 and [::1] (the hostfile\'s "allowed_hosts" '
            "adds names)"
        )
        path = scope.get("path", "")
        ollama = path.startswith("/api/") and not path.startswith("/api/cluster/")
        content = {"error": message} if ollama else error_body(403, message, code="bad_host")
        body = msgspec.json.encode(content)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": body})
