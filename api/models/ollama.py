"""Ollama's ``POST /api/pull`` and ``DELETE /api/delete`` over ``ModelAdmin``.

A pull is a download-and-sync job (the same as ``POST /api/cluster/models`` to every node),
told in Ollama's NDJSON words: ``pulling manifest``; then per node and change of its bytes
``pulling <model>`` (the download from the hub) or ``syncing to <node>`` (the copy to another
node), each with a ``digest`` of its own (clients draw one bar per digest), ``total`` and
``completed``; then ``verifying sha256 digest``, ``writing manifest`` and ``success``. A
failed job ends with ``{"error": ...}`` as Ollama does. With ``"stream": false`` only the
last line is sent: 200 on success, else 502 (the job failed at a node or at the hub, not on
this request; a request that is wrong gets its 4xx before anything starts).

Names: a hub repo id, ``org/name`` or ``org/name@revision``; Ollama's ``:latest`` tag and
the ``hf.co/`` prefix of its Hugging Face names are dropped.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from litestar import Request, Response, delete, post
from litestar.background_tasks import BackgroundTask
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody
from litestar.response import Stream
from litestar.types import ControllerRouterHandler, Guard

from api.edge.error_shape import json_encoder
from api.edge.generation import STREAM_HEADERS
from api.edge.heartbeat import HEARTBEAT, close, with_heartbeat
from api.edge.openapi import NDJSON, also_streamed, ndjson_line
from api.ollama.protocol import ModelRequest, OllamaError
from supervisor.serving.contract import BadRequest, ModelAdmin, ModelDownload, ServiceError

MAX_NAME = 200  # ModelDownload.model's bound
JOB_FAILED = 502
_PREFIXES = ("https://huggingface.co/", "huggingface.co/", "hf.co/")
Redactor = Callable[[Request], Awaitable[Callable[[Any], Any]]]

_DENIED = {
    401: ResponseSpec(OllamaError, description="No key was sent", generate_examples=False),
    403: ResponseSpec(OllamaError, description="Wrong key", generate_examples=False),
}
_PULL_ERRORS = {
    **_DENIED,
    400: ResponseSpec(OllamaError, description="Not a hub repo id", generate_examples=False),
    404: ResponseSpec(OllamaError, description="Unknown model", generate_examples=False),
    JOB_FAILED: ResponseSpec(
        OllamaError, description="stream=false: the job failed", generate_examples=False
    ),
}
_DELETE_ERRORS = {
    **_DENIED,
    404: ResponseSpec(OllamaError, description="No node has the model", generate_examples=False),
    409: ResponseSpec(OllamaError, description="A group serves it", generate_examples=False),
}


def hub_name(body: ModelRequest) -> str:
    """The repo id an Ollama body names; BadRequest naming the field otherwise."""
    name = (body.model or body.name or "").strip()
    if not name:
        raise BadRequest("model: required field is missing", param="model")
    repo = name.removesuffix(":latest")
    for prefix in _PREFIXES:
        repo = repo.removeprefix(prefix)
    base = repo.partition("@")[0]  # a revision may hold slashes (refs/pr/1)
    if ":" in base or base.count("/") != 1 or "" in base.split("/") or len(repo) > MAX_NAME:
        raise BadRequest(
            f"model: {name[:80]!r} is not a Hugging Face repo id; name one as 'org/name' "
            "or 'org/name@revision'",
            param="model",
        )
    return repo


def digest(model: str, node: str) -> str:
    """One digest per model and node, so a client draws one progress bar per node."""
    return "sha256:" + hashlib.sha256(f"{model}\n{node}".encode()).hexdigest()


class PullProgress:
    """Job views -> the Ollama progress lines that changed since the last view."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.sent: dict[str, dict] = {}  # node -> its last line

    def lines(self, view: dict) -> list[dict]:
        out = []
        for node, progress in view.get("progress", {}).items():
            phase, total = progress.get("phase"), progress.get("total", 0)
            if phase not in ("download", "transfer") or not total:
                continue  # queued, hashing, committing: the closing lines tell of those
            status = f"pulling {self.model}" if phase == "download" else f"syncing to {node}"
            line = {
                "status": status,
                "digest": digest(self.model, node),
                "total": total,
                "completed": min(progress.get("done", 0), total),
            }
            if self.sent.get(node) != line:
                self.sent[node] = line
                out.append(line)
        return out

    @staticmethod
    def ending(view: dict | None) -> list[dict]:
        if view is None:
            return [{"error": "the model job ended without a result; see the supervisor log"}]
        if view.get("state") == "done":
            return [
                {"status": "verifying sha256 digest"},
                {"status": "writing manifest"},
                {"status": "success"},
            ]
        return [{"error": view.get("error") or "the model job failed; see the supervisor log"}]


async def pull_lines(
    admin: ModelAdmin, started: dict, heartbeat: float
) -> AsyncGenerator[dict, None]:
    """Ollama's progress objects for the job ``started``, until it has ended."""
    progress = PullProgress(started["model"])
    yield {"status": "pulling manifest"}
    last_line: dict | None = None
    final: dict | None = None
    views = admin.follow(started["id"])
    try:
        async for view in with_heartbeat(views, heartbeat):
            if view is None:
                if last_line is not None:
                    yield last_line  # quiet: the last line again keeps the stream open
                continue
            for line in progress.lines(view):
                last_line = line
                yield line
            if view.get("state", "running") != "running":
                final = view
                break
    except ServiceError as exc:
        yield {"error": exc.message}
        return
    finally:
        await close(views)
    for line in PullProgress.ending(final):
        yield line


def ollama_model_routes(
    admin: ModelAdmin,
    redactor: Redactor,
    *,
    pull_guards: list[Guard],
    delete_guards: list[Guard],
    heartbeat: float = HEARTBEAT,
) -> list[ControllerRouterHandler]:
    """``/pull`` and ``/delete`` for Ollama's router (mounted under ``/api``)."""

    @post(
        "/pull",
        summary="Download a model and sync it to every node (NDJSON progress)",
        status_code=200,
        responses=_PULL_ERRORS,
        guards=pull_guards,
        operation_class=also_streamed(NDJSON, ndjson_line("OllamaError")),
    )
    async def pull(request: Request, data: JSONBody[ModelRequest]) -> Response:
        started = admin.download(ModelDownload(model=hub_name(data)))
        shown = await redactor(request)
        lines = pull_lines(admin, started, heartbeat)
        if data.stream is False:
            last: dict = {}
            async for line in lines:
                last = line
            code = 200 if last.get("status") == "success" else JOB_FAILED
            return Response(shown(last), status_code=code)
        return Stream(
            (json_encoder.encode(shown(line)) + b"\n" async for line in lines),
            media_type=NDJSON,
            headers=STREAM_HEADERS,
            background=BackgroundTask(close, lines),  # if the body was abandoned at a yield
        )

    @delete(
        "/delete",
        summary="Delete a model from every node's disk",
        status_code=200,
        responses=_DELETE_ERRORS,
        guards=delete_guards,
    )
    async def delete_model(data: JSONBody[ModelRequest]) -> dict:
        return await admin.delete(hub_name(data), None)

    return [pull, delete_model]
