"""Every failure answered in the house error shape, in one line, never with a traceback."""

from __future__ import annotations

import math
import re

import structlog
from litestar import Request, Response
from litestar.exceptions import (
    ClientException,
    HTTPException,
    InternalServerException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    ValidationException,
)
from litestar.utils.scope.state import ScopeState

from actors.protocol.messages import GenerationFailed
from api.edge.error_shape import error_body
from api.edge.limits import MAX_SCHEMA_DEPTH, too_deep_field
from supervisor.serving.contract import ServiceError

log = structlog.get_logger(__name__)

_TYPE_WORDS = {
    "float": "a number",
    "int": "an integer",
    "str": "a string",
    "bool": "a boolean",
    "array": "an array",
    "object": "an object",
    "null": "null",
}
_MISSING = re.compile(r"Object missing required field `([^`]+)`")
_BACKTICKED = re.compile(r"`([^`]+)`")
_ROOT_KEYS = ("", "data", None)
_GONE_MID_BODY = "client disconnected prematurely"  # Litestar's words


def _type_words(match: re.Match) -> str:
    words = [_TYPE_WORDS.get(t.strip(), t.strip()) for t in match.group(1).split("|")]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def describe_validation(message: str, key: str | None) -> tuple[str, str | None]:
    """msgspec's ``Expected `float` <= 2.0`` at ``temperature`` -> one readable line and param."""
    key = key.replace("[...]", "") if key else key  # msgspec's "any dict value"
    if message == "'data'":  # Litestar's KeyError text when there is no body at all
        return "request body is missing; send a JSON object", None
    missing = _MISSING.fullmatch(message)
    if missing:
        field = missing.group(1) if key in _ROOT_KEYS else f"{key}.{missing.group(1)}"
        return f"{field}: required field is missing", field
    text = _BACKTICKED.sub(_type_words, message)
    text = text[:1].lower() + text[1:]
    text = text.replace("invalid enum value", "invalid value")
    if key in _ROOT_KEYS:
        return f"request body: {text.replace('an object', 'a JSON object')}", None
    return f"{key}: {text}", key


def retry_after_seconds(retry_after: float | None) -> str:
    """Retry-After is whole seconds, at least 1 (0 would invite a hot retry loop)."""
    return str(max(1, math.ceil(retry_after or 1)))


def service_error_response(exc: ServiceError) -> Response:
    headers = {}
    if exc.status in (429, 503):
        headers["Retry-After"] = retry_after_seconds(exc.retry_after)
    body = error_body(exc.status, exc.message, param=exc.param, code=exc.code)
    return Response(body, status_code=exc.status, headers=headers)


def failure_error(event: GenerationFailed) -> ServiceError:
    """A generation that failed before anything was sent, as the ServiceError to answer with."""
    error = ServiceError(event.message, retry_after=1 if event.retryable else None)
    error.status = event.status
    error.code = event.code or "generation_failed"
    return error


def _too_deep(request: Request) -> Response:
    body = ScopeState.from_scope(request.scope).body  # read already: decoding it failed
    field = too_deep_field(body) if isinstance(body, bytes) else None
    where = field or "request body"
    message = f"{where}: nested too deeply; schemas may nest at most {MAX_SCHEMA_DEPTH} levels"
    return Response(error_body(400, message, param=field), status_code=400)


def handle_exception(request: Request, exc: Exception) -> Response:
    """Litestar's catch-all handler: map anything raised while serving to an OpenAI error."""
    if isinstance(exc, ServiceError):
        return service_error_response(exc)
    if isinstance(exc, ValidationException):
        first = exc.extra[0] if isinstance(exc.extra, list) and exc.extra else {}
        if isinstance(first, dict) and "message" in first:
            message, param = describe_validation(str(first["message"]), first.get("key"))
        else:
            message, param = str(exc.detail), None
        return Response(error_body(400, message, param=param), status_code=400)
    if isinstance(exc, ClientException) and str(exc.detail).startswith("JSON is malformed"):
        return Response(error_body(400, "request body is not valid JSON"), status_code=400)
    if isinstance(exc, ClientException) and "UTF-8" in str(exc.detail):
        message = "request body is not valid UTF-8; send JSON text encoded as UTF-8"
        return Response(error_body(400, message), status_code=400)
    if isinstance(exc, RecursionError):  # msgspec, decoding a body nested ~1000 levels deep
        return _too_deep(request)
    if isinstance(exc, NotAuthorizedException):
        body = error_body(401, str(exc.detail), code="invalid_api_key")
        return Response(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})
    if isinstance(exc, NotFoundException):
        message = f"no such route: {request.method} {request.url.path}"
        return Response(error_body(404, message, code="not_found"), status_code=404)
    if isinstance(exc, MethodNotAllowedException):
        message = f"method {request.method} is not allowed on {request.url.path}"
        headers = {k: v for k, v in (exc.headers or {}).items() if k.lower() == "allow"}
        body = error_body(405, message, code="method_not_allowed")
        return Response(body, status_code=405, headers=headers)
    if isinstance(exc, HTTPException) and exc.status_code == 413:
        limit = request.route_handler.resolve_request_max_body_size()
        message = f"request body is larger than {limit} bytes (the hostfile's api.max_body_bytes)"
        return Response(error_body(413, message), status_code=413)
    if isinstance(exc, InternalServerException) and exc.detail == _GONE_MID_BODY:
        # The client hung up, or its body timed out (api.body_timeout): nobody to answer.
        log.info("api.client_gone_mid_body", method=request.method, path=request.url.path)
        return Response(error_body(400, "the request body ended early"), status_code=400)
    if isinstance(exc, HTTPException) and exc.status_code < 500:
        return Response(error_body(exc.status_code, str(exc.detail)), status_code=exc.status_code)
    log.exception("api.unhandled_error", method=request.method, path=request.url.path)
    body = error_body(500, "internal error while serving the request; see the supervisor log")
    return Response(body, status_code=500)
