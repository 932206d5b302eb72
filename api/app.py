"""The Litestar application: OpenAI and Ollama endpoints, health and cluster status."""

from __future__ import annotations

import hmac
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from litestar import Litestar, Response, Router, get
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.types import ControllerRouterHandler, Guard, LifespanHook

from api.errors import handle_exception
from api.routes_ollama import ollama_root, ollama_root_head, ollama_router
from api.routes_openai import ERROR_RESPONSES, openai_router
from supervisor.service import GenerationService

StatusSource = Callable[[], Any]  # returns a dict (or an awaitable of one)
HealthSource = Callable[[], Any]  # returns (status code, dict) (or an awaitable of it)


def require_api_key(api_key: str) -> Guard:
    """A guard that admits only ``Authorization: Bearer <api_key>``."""
    expected = api_key.encode()

    def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        scheme, _sep, token = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            raise NotAuthorizedException(
                "missing or wrong API key; send the header 'Authorization: Bearer <key>'"
            )

    return guard


async def _call(source: Callable[[], Any]) -> Any:
    result = source()
    return await result if inspect.isawaitable(result) else result


def create_app(
    service: GenerationService,
    *,
    status: StatusSource,
    health: HealthSource,
    api_key: str | None = None,
    on_startup: Sequence[LifespanHook] = (),
    on_shutdown: Sequence[LifespanHook] = (),
    route_handlers: Sequence[ControllerRouterHandler] = (),
    api_route_handlers: Sequence[ControllerRouterHandler] = (),
) -> Litestar:
    """Build the HTTP app over ``service``.

    ``status`` feeds ``GET /api/cluster/status``; ``health`` returns the status code and
    body of ``GET /health``. With ``api_key`` set, ``/v1/*`` and ``/api/*`` (OpenAI's and
    Ollama's endpoints) require ``Authorization: Bearer <api_key>``; ``/health``, ``/schema``
    and Ollama's ``/`` probe stay open.
    ``route_handlers`` are mounted at the root as they are; ``api_route_handlers`` under
    ``/api`` behind the same key.
    """
    guards = [require_api_key(api_key)] if api_key else []

    @get(
        "/health",
        summary="Liveness and readiness",
        tags=["cluster"],
        responses={503: ResponseSpec(dict, description="Not ready to serve, or draining")},
    )
    async def health_check() -> Response[dict]:
        code, body = await _call(health)
        return Response(body, status_code=code)

    @get(
        "/cluster/status",
        summary="Cluster state as JSON",
        tags=["cluster"],
        responses={401: ERROR_RESPONSES[401]},
    )
    async def cluster_status() -> dict:
        return await _call(status)

    api = Router("/api", route_handlers=[cluster_status, *api_route_handlers], guards=guards)
    return Litestar(
        route_handlers=[
            openai_router(service, guards),
            ollama_router(service, guards),
            api,
            health_check,
            ollama_root,
            ollama_root_head,
            *route_handlers,
        ],
        exception_handlers={Exception: handle_exception},
        on_startup=list(on_startup),
        on_shutdown=list(on_shutdown),
        openapi_config=OpenAPIConfig(title="mlx-supervisor", version="1"),
        # Logging is the supervisor's (structlog); errors are logged by handle_exception.
        logging_config=None,
        debug=False,
    )
