"""``GET /metrics``: the Prometheus exposition of the cluster's figures (H-metrics)."""

from __future__ import annotations

from litestar.types import ControllerRouterHandler

from supervisor.serving.contract import Observer


def metrics_routes(observer: Observer) -> list[ControllerRouterHandler]:
    """Handlers mounted at the root, behind the inference key when one is set."""
    return []
