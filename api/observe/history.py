"""``/api/cluster/requests|errors|timeseries|events``: history, series and the live feed."""

from __future__ import annotations

from litestar.types import ControllerRouterHandler

from supervisor.serving.contract import Observer


def history_routes(observer: Observer) -> list[ControllerRouterHandler]:
    """Handlers mounted under ``/api`` (paths ``/cluster/...``), behind the inference key."""
    return []
