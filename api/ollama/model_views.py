"""Served models -> Ollama's model views: ``/api/tags``, ``/api/ps``, ``/api/show``."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from api.ollama.protocol import (
    ListedModel,
    ModelDetails,
    PsResponse,
    RunningModel,
    ShowResponse,
    TagsResponse,
)
from api.ollama.timing import rfc3339
from supervisor.serving.contract import ModelInfo

# The Ollama API level these endpoints follow (tools, structured outputs, tool_name).
OLLAMA_VERSION = "0.9.0"
# Served models never unload; Ollama shows a keep_alive of "forever" as a far-off date.
NEVER_EXPIRES = "2318-01-01T00:00:00Z"


def digest(model_id: str) -> str:
    """A stable digest per model id (of the name: MLX weights have no single blob to hash)."""
    return hashlib.sha256(model_id.encode()).hexdigest()


def details() -> ModelDetails:
    # The service knows no family, size or quantization of a model yet; Ollama's "" is unknown.
    return ModelDetails(
        parent_model="",
        format="mlx",
        family="",
        families=None,
        parameter_size="",
        quantization_level="",
    )


def tags(models: list[ModelInfo], downloaded: Sequence[dict] = ()) -> TagsResponse:
    """Served models, then models complete on some node's disk that none serves.

    ``downloaded``: the ``models`` of ``ModelAdmin.models()``; a served model found there
    takes its size, time and details from the disk.
    """
    on_disk = {d["id"]: d for d in downloaded if d.get("complete_nodes", 0) > 0}
    listed = [
        _listed(m.id, m.created, on_disk.pop(m.id))
        if m.id in on_disk
        else ListedModel(m.id, m.id, rfc3339(m.created), 0, digest(m.id), details())
        for m in models
    ]
    return TagsResponse(listed + [_listed(d["id"], 0.0, d) for d in on_disk.values()])


def _listed(model_id: str, created: float, disk: dict) -> ListedModel:
    known = details()
    known.family = disk.get("architecture") or ""
    known.quantization_level = disk.get("quantization") or ""
    modified = disk.get("modified") or created
    return ListedModel(
        model_id, model_id, rfc3339(modified), int(disk.get("size", 0)), digest(model_id), known
    )


def running(models: list[ModelInfo]) -> PsResponse:
    """Models with at least one group ready to serve."""
    return PsResponse(
        [
            RunningModel(
                name=m.id,
                model=m.id,
                size=0,
                digest=digest(m.id),
                details=details(),
                expires_at=NEVER_EXPIRES,
                size_vram=0,
                context_length=m.context_length,
            )
            for m in models
            if m.ready
        ]
    )


def show(model: ModelInfo) -> ShowResponse:
    """What ``/api/show`` knows of a served model; clients read the context length here."""
    info: dict[str, object] = {"general.architecture": "mlx", "general.name": model.id}
    parameters = ""
    if model.context_length:
        info["mlx.context_length"] = model.context_length
        parameters = f"num_ctx {model.context_length}"
    return ShowResponse(
        modelfile=f"# served by mlx-supervisor\nFROM {model.id}\n",
        parameters=parameters,
        template="",  # the model's own chat template is applied next to its tokenizer
        details=details(),
        model_info=info,
        capabilities=["completion", "tools"],
        modified_at=rfc3339(model.created),
    )
