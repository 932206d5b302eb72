"""Cluster membership over HTTP: hosts join and leave a running cluster."""

from __future__ import annotations

from typing import Annotated

from litestar import Router, delete, post
from litestar.params import Parameter

from supervisor.service import HostJoin, Membership


def cluster_router(membership: Membership) -> Router:
    """``/cluster/hosts`` (mounted under ``/api``, behind the API key when one is set)."""

    @post("/hosts", summary="A host joins: its node and a single-host group start", status_code=201)
    async def add_host(data: HostJoin) -> dict:
        return await membership.add_host(data)

    @delete(
        "/hosts/{node:str}",
        summary="A host leaves: its groups drain, its actors stop",
        status_code=200,
    )
    async def remove_host(
        node: str,
        drain_timeout: Annotated[float, Parameter(ge=0, le=3600)] = 30.0,
    ) -> dict:
        return await membership.remove_host(node, drain_timeout)

    return Router("/cluster", route_handlers=[add_host, remove_host])
