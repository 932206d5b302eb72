"""``GET /api/cluster/logs``: the supervisor's recent log lines, or a live follow (SSE)."""

from __future__ import annotations

from litestar.types import ControllerRouterHandler

from supervisor.serving.contract import Observer


def logs_routes(observer: Observer) -> list[ControllerRouterHandler]:
    """Handlers mounted under ``/api`` (paths ``/cluster/...``), behind the inference key."""
    return []
