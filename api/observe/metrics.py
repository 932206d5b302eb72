"""``GET /metrics``: the Prometheus exposition of the cluster's figures."""

from __future__ import annotations

from litestar import Response, get
from litestar.types import ControllerRouterHandler

from api.edge.error_shape import ERROR_RESPONSES
from supervisor.serving.contract import Observer


def metrics_routes(observer: Observer) -> list[ControllerRouterHandler]:
    """Handlers mounted at the root, behind the inference key when one is set."""

    # async: built on the event loop, where the state is folded, so a scrape reads one
    # moment of it (a thread could see a dict change size under it).
    @get(
        "/metrics",
        summary="Prometheus metrics (cluster facts and vLLM's names)",
        tags=["cluster"],
        media_type="text/plain",
        responses={401: ERROR_RESPONSES[401]},
    )
    async def metrics() -> Response[bytes]:
        body, content_type = observer.metrics()
        # As the header, not the media type: Litestar would add a second "; charset=", and
        # a duplicate parameter makes Prometheus 3 refuse the content type.
        return Response(body, media_type="text/plain", headers={"content-type": content_type})

    return [metrics]
