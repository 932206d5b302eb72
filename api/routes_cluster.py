"""Cluster membership over HTTP: hosts join and leave a running cluster."""

from __future__ import annotations

from typing import Annotated

from litestar import Router, delete, post
from litestar.params import Parameter

from api.routes_openai import ERROR_RESPONSES, error_response
from supervisor.service import HostJoin, Membership

_JOIN_ERRORS = {
    400: ERROR_RESPONSES[400],
    401: ERROR_RESPONSES[401],
    409: error_response("The node or group name is taken, or the node is already leaving"),
}
_LEAVE_ERRORS = {
    **_JOIN_ERRORS,
    404: error_response("No node of that name in the cluster"),
}


def cluster_router(membership: Membership) -> Router:
    """``/cluster/hosts`` (mounted under ``/api``, behind the API key when one is set)."""

    @post(
        "/hosts",
        summary="A host joins: its node and a single-host group start",
        status_code=201,
        responses=_JOIN_ERRORS,
    )
    async def add_host(data: HostJoin) -> dict:
        return await membership.add_host(data)

    @delete(
        "/hosts/{node:str}",
        summary="A host leaves: its groups drain, its actors stop",
        status_code=200,
        responses=_LEAVE_ERRORS,
    )
    async def remove_host(
        node: str,
        drain_timeout: Annotated[float, Parameter(ge=0, le=3600)] = 30.0,
    ) -> dict:
        return await membership.remove_host(node, drain_timeout)

    return Router("/cluster", route_handlers=[add_host, remove_host])
