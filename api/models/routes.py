"""``/api/cluster/models...`` and ``/api/cluster/groups/{name}/model``: models on the nodes'
disks, download-and-sync jobs, deletes and a group's model swap, over ``ModelAdmin``.

Reads (the list, a job, following a job) sit behind the inference key like the status, and
a caller without the admin key sees them redacted the same way (paths, SSH users). Every
change needs the admin key and a JSON body, as the other admin routes (api/cluster_routes).
A job is followed as NDJSON, one job view a line, until it has ended.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from litestar import Request, delete, get, post
from litestar.background_tasks import BackgroundTask
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Stream
from litestar.types import ControllerRouterHandler, Guard

from api.edge.error_shape import ERROR_RESPONSES, error_body, error_response, json_encoder
from api.edge.generation import STREAM_HEADERS
from api.edge.heartbeat import HEARTBEAT, close, with_heartbeat
from api.edge.openapi import NDJSON, also_streamed
from supervisor.serving.contract import (
    GroupModel,
    ModelAdmin,
    ModelDownload,
    NotFound,
    ServiceError,
)

Redactor = Callable[[Request], Awaitable[Callable[[Any], Any]]]
JOB_VIEW = Schema(type=OpenAPIType.OBJECT, description="A job view (ModelJobView)")
Node = Annotated[str | None, QueryParameter(description="only this node (default: every node)")]

_READ_ERRORS = {401: ERROR_RESPONSES[401]}
_JOB_ERRORS = {**_READ_ERRORS, 404: error_response("No job of that id (or it was forgotten)")}
_DENIED = {
    401: error_response("No admin key was sent"),
    403: error_response("Wrong key: this route needs the admin key"),
    415: error_response("The body is not 'content-type: application/json'"),
}
_START_ERRORS = {400: ERROR_RESPONSES[400], **_DENIED, 404: error_response("Unknown node or group")}
_SWAP_ERRORS = {
    **_START_ERRORS,
    409: error_response("The model cannot fit the group's nodes, or a job runs on the group"),
}
_DELETE_ERRORS = {
    **_DENIED,
    404: error_response("The model (or node) is not known"),
    409: error_response("A group serves the model"),
}


def job_missing(job_id: str) -> NotFound:
    return NotFound(
        f"no model job {job_id!r}; GET /api/cluster/models lists the recent ones", param="id"
    )


def model_read_routes(
    admin: ModelAdmin, redactor: Redactor, guards: list[Guard], heartbeat: float = HEARTBEAT
) -> list[ControllerRouterHandler]:
    """Handlers for the ``/api`` admin router; ``guards``: the inference key's.

    Not in the router of the status: Litestar wants one router per path, and the list
    shares its path with the admin's ``POST``.
    """

    @get(
        "/cluster/models",
        summary="Models on every node's disk, per node present/complete, and recent jobs",
        tags=["models"],
        responses=_READ_ERRORS,
        guards=guards,
    )
    async def list_models(request: Request) -> dict:
        shown = await redactor(request)
        return shown(await admin.models())

    @get(
        "/cluster/models/jobs/{job_id:str}",
        summary="One model job's view: state, and bytes done/total, rate and ETA per node",
        tags=["models"],
        responses=_JOB_ERRORS,
        guards=guards,
    )
    async def model_job(request: Request, job_id: FromPath[str]) -> dict:
        view = admin.job(job_id)
        if view is None:
            raise job_missing(job_id)
        return (await redactor(request))(view)

    @get(
        "/cluster/models/jobs/{job_id:str}/follow",
        summary="Follow a model job (NDJSON): its view on each change, until it has ended",
        description=f"After {HEARTBEAT:g} s without a change the last view is sent again.",
        tags=["models"],
        responses=_JOB_ERRORS,
        operation_class=also_streamed(NDJSON, JOB_VIEW),
        guards=guards,
    )
    async def follow_job(request: Request, job_id: FromPath[str]) -> Stream:
        if admin.job(job_id) is None:
            raise job_missing(job_id)
        shown = await redactor(request)
        views = admin.follow(job_id)
        return Stream(
            follow_lines(views, shown, heartbeat),
            media_type=NDJSON,
            headers=STREAM_HEADERS,
            background=BackgroundTask(close, views),  # if the body was abandoned at a yield
        )

    return [list_models, model_job, follow_job]


async def follow_lines(
    views: AsyncIterator[dict], shown: Callable[[Any], Any], heartbeat: float
) -> AsyncGenerator[bytes, None]:
    """One JSON line per view; the last view again on a heartbeat. A failure of the follow
    itself (not of the job, which a view reports) ends the stream with an error line."""
    last: bytes | None = None
    try:
        async for view in with_heartbeat(views, heartbeat):
            if view is not None:
                last = json_encoder.encode(shown(view)) + b"\n"
            if last is not None:
                yield last
    except ServiceError as exc:
        yield json_encoder.encode(error_body(exc.status, exc.message, code=exc.code)) + b"\n"


def model_admin_routes(admin: ModelAdmin, guards: list[Guard]) -> list[ControllerRouterHandler]:
    """Handlers for the ``/api`` admin router; ``guards``: the admin key and a JSON body."""

    @post(
        "/cluster/models",
        summary="Download a model once and sync it to nodes (a job)",
        description="Body: {model: 'org/name[@revision]', nodes?: [..], group?: name}. "
        "Follow the job at /api/cluster/models/jobs/{id}/follow.",
        status_code=202,
        tags=["models"],
        responses=_START_ERRORS,
        guards=guards,
    )
    async def start_download(data: JSONBody[ModelDownload]) -> dict:
        return admin.download(data)

    @delete(
        "/cluster/models/{model:path}",
        summary="Delete a model from one node (?node=) or every node",
        status_code=200,
        tags=["models"],
        responses=_DELETE_ERRORS,
        guards=guards,
    )
    async def delete_model(model: FromPath[str], node: Node = None) -> dict:
        return await admin.delete(model.strip("/"), node or None)

    @post(
        "/cluster/groups/{name:str}/model",
        summary="Swap a group's model while serving: sync, drain, restart (a job)",
        status_code=202,
        tags=["models"],
        responses=_SWAP_ERRORS,
        guards=guards,
    )
    async def swap_model(name: FromPath[str], data: JSONBody[GroupModel]) -> dict:
        return admin.swap(name, data)

    return [start_download, delete_model, swap_model]
