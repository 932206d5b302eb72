"""The Litestar application: OpenAI and Ollama endpoints, health and cluster status."""

from __future__ import annotations

import getpass
import inspect
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from litestar import Litestar, Request, Response, Router, get
from litestar.config.cors import CORSConfig
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.types import ControllerRouterHandler, LifespanHook

from api.dashboard.routes import dashboard_routes
from api.edge.error_shape import ERROR_RESPONSES
from api.edge.errors import handle_exception
from api.edge.guards import (
    HostCheck,
    Keys,
    inference_guards,
    is_admin,
    json_body_only,
    require_admin,
)
from api.edge.redaction import redact, ssh_users
from api.models.ollama import ollama_model_routes
from api.models.routes import model_admin_routes, model_read_routes
from api.observe.history import history_routes
from api.observe.logs import logs_routes
from api.observe.metrics import metrics_routes
from api.ollama.routes import ollama_root, ollama_root_head, ollama_router
from api.openai.routes import openai_router
from supervisor.serving.contract import GenerationService, ModelAdmin, Observer

StatusSource = Callable[[], Any]  # returns a dict (or an awaitable of one)
HealthSource = Callable[[], Any]  # returns (status code, dict) (or an awaitable of it)


async def _call(source: Callable[[], Any]) -> Any:
    result = source()
    return await result if inspect.isawaitable(result) else result


def create_app(
    service: GenerationService,
    *,
    status: StatusSource,
    health: HealthSource,
    api_key: str | None = None,
    keys: Keys | None = None,
    allowed_hosts: Sequence[str] | None = None,
    cors_origins: Sequence[str] = (),
    warnings: Sequence[str] = (),
    on_startup: Sequence[LifespanHook] = (),
    on_shutdown: Sequence[LifespanHook] = (),
    route_handlers: Sequence[ControllerRouterHandler] = (),
    admin_route_handlers: Sequence[ControllerRouterHandler] = (),
    max_body_bytes: int = 8 * 1024 * 1024,
    observer: Observer | None = None,
    model_admin: ModelAdmin | None = None,
    pull_with_inference_key: bool = False,
) -> Litestar:
    """Build the HTTP app over ``service``.

    ``status`` feeds ``GET /api/cluster/status``; ``health`` returns the status code and
    body of ``GET /health``. With ``api_key`` set, ``/v1/*`` and ``/api/*`` (OpenAI's and
    Ollama's endpoints) require ``Authorization: Bearer <api_key>``; ``/health``, ``/schema``
    and Ollama's ``/`` probe stay open.
    ``keys`` (else ``api_key`` and an admin key nobody knows) are checked by the guards of
    api/edge/guards.py; the admin key is accepted wherever the inference key is. Without it,
    status and health hide user names and paths.
    ``route_handlers`` are mounted at the root as they are; ``admin_route_handlers`` under
    ``/api``, outside the inference key (they carry their own guards).
    ``allowed_hosts`` not None: a ``Host`` header naming neither loopback nor one of these
    gets 403 (set it when the API listens on loopback). ``cors_origins``: the browser
    origins allowed; none, CORS stays off. ``warnings`` are shown in the status.
    ``observer``: metrics (``/metrics``), history, time series, the live feed and logs
    (``/api/cluster/...``), behind the inference key like the status.
    ``model_admin``: models on the nodes' disks (``/api/cluster/models...``, a group's model
    swap, Ollama's ``/api/pull`` and ``/api/delete``, downloaded models in ``/api/tags``);
    changes need the admin key, except a pull with the inference key when
    ``pull_with_inference_key`` (the hostfile's ``models.pull_with_inference_key``).
    """
    keys = keys or Keys(admin=secrets.token_urlsafe(32), api=api_key)  # nobody is admin
    guards = inference_guards(keys)
    me = getpass.getuser()

    @get(
        "/health",
        summary="Liveness and readiness",
        tags=["cluster"],
        responses={503: ResponseSpec(dict, description="Not ready to serve, or draining")},
    )
    async def health_check(request: Request) -> Response[dict]:
        code, body = await _call(health)
        return Response(body if is_admin(request, keys) else redact(body, [me]), status_code=code)

    @get(
        "/cluster/status",
        summary="Cluster state as JSON",
        tags=["cluster"],
        responses={401: ERROR_RESPONSES[401]},
    )
    async def cluster_status(request: Request) -> dict:
        body = {**await _call(status), "warnings": list(warnings)}
        return body if is_admin(request, keys) else redact(body, {me, *ssh_users(body)})

    async def shown_to(request: Request) -> Callable[[Any], Any]:
        """What ``request``'s caller may see of a body: all with the admin key, else as the
        status shows it (user names and paths hidden)."""
        if is_admin(request, keys):
            return lambda body: body
        users = {me, *ssh_users(await _call(status))}
        return lambda body: redact(body, users)

    observed = (
        [*history_routes(observer, keys), *logs_routes(observer, shown_to)] if observer else []
    )
    admin_only = [require_admin(keys), json_body_only]
    models_read, models_admin, ollama_models = [], [], []
    if model_admin is not None:
        models_read = model_read_routes(model_admin, shown_to, guards)
        models_admin = model_admin_routes(model_admin, admin_only)
        pull_guards = [json_body_only] if pull_with_inference_key else admin_only
        ollama_models = ollama_model_routes(
            model_admin, shown_to, pull_guards=pull_guards, delete_guards=admin_only
        )
    api = Router("/api", route_handlers=[cluster_status, *observed], guards=guards)
    scrape = metrics_routes(observer) if observer else []
    scraped = [Router("/", route_handlers=scrape, guards=guards)] if scrape else []
    admin = Router("/api", route_handlers=[*admin_route_handlers, *models_read, *models_admin])
    cors = None
    if cors_origins:
        cors = CORSConfig(
            allow_origins=list(cors_origins),
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["x-served-by", "Retry-After"],
        )
    app = Litestar(
        route_handlers=[
            openai_router(service, guards),
            ollama_router(service, guards, model_admin, ollama_models),
            api,
            admin,
            health_check,
            ollama_root,
            ollama_root_head,
            *dashboard_routes(),  # open: the page asks for the key itself
            *scraped,
            *route_handlers,
        ],
        exception_handlers={Exception: handle_exception},
        on_startup=list(on_startup),
        on_shutdown=list(on_shutdown),
        openapi_config=OpenAPIConfig(title="mlx-supervisor", version="1"),
        # Logging is the supervisor's (structlog); errors are logged by handle_exception.
        logging_config=None,
        debug=False,
        request_max_body_size=max_body_bytes,  # larger: 413, announced or chunked
        cors_config=cors,
    )
    if allowed_hosts is not None:
        # Around Litestar's whole handler (router, CORS, 404s), not a route middleware,
        # so that no answer at all goes to a page that rebound its name to loopback.
        app.asgi_handler = HostCheck(app.asgi_handler, allowed_hosts)
    return app
