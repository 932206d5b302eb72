"""The house error shape, ``{"error": {"message", "type", "param", "code"}}``: OpenAI's.

Every route answers failures in it (the Ollama routes re-cast it as ``{"error": "..."}``),
and so does the HTTP server for what it refuses before any route runs.
"""

from __future__ import annotations

import msgspec
from litestar.openapi import ResponseSpec
from msgspec import Struct


class ErrorDetail(Struct):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


class ErrorResponse(Struct):
    error: ErrorDetail


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> ErrorResponse:
    """The error shape for an HTTP status."""
    kind = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return ErrorResponse(ErrorDetail(message=message, type=kind, param=param, code=code))


def error_response(description: str) -> ResponseSpec:
    """An error response in the house shape, for an OpenAPI ``responses`` table."""
    return ResponseSpec(ErrorResponse, description=description, generate_examples=False)


_ERRORS = {
    400: "Invalid request; error.param names the field",
    401: "Missing or wrong API key",
    404: "Unknown model",
    429: "Queue full; retry after the Retry-After header's seconds",
    503: "No replica can serve the model now; see Retry-After",
}
ERROR_RESPONSES = {code: error_response(text) for code, text in _ERRORS.items()}

# For bodies written outside Litestar's response encoding: stream lines, the server's refusals.
json_encoder = msgspec.json.Encoder()
