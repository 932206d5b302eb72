"""Admin routes: hosts join and leave a running cluster, the supervisor stops, a join token.

Every route here changes the cluster, so each needs the admin key whether or not the
inference ``api_key`` is set; adding a host also accepts the join token. A body must be
``application/json``, which a web page cannot send cross-origin without a preflight.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from litestar import Router, delete, get, post
from litestar.params import Parameter

from api.edge.error_shape import ERROR_RESPONSES, error_response
from api.edge.guards import Keys, json_body_only, require_admin, require_join
from supervisor.serving.contract import HostJoin, Membership

_DENIED = {
    401: error_response("No admin key (or join token) was sent"),
    403: error_response("Wrong key, or a join token where the admin key is needed"),
}
_BODY = {415: error_response("The body is not 'content-type: application/json'")}
_JOIN_ERRORS = {
    400: ERROR_RESPONSES[400],
    **_DENIED,
    **_BODY,
    409: error_response("The node or group name is taken, or the node is already leaving"),
}
_LEAVE_ERRORS = {
    **_JOIN_ERRORS,
    404: error_response("No node of that name in the cluster"),
}


def cluster_router(
    membership: Membership,
    keys: Keys,
    *,
    stop: Callable[[], None],
    join_address: tuple[str, bool],
) -> Router:
    """``/cluster/...`` admin routes (mounted under ``/api``, outside the inference key).

    ``stop`` starts what SIGTERM starts (drain, then stop); ``join_address`` is the API's
    address as other machines dial it, and whether it is loopback only.
    """
    admin = [require_admin(keys), json_body_only]

    @post(
        "/hosts",
        summary="A host joins: its node and a single-host group start",
        status_code=201,
        responses=_JOIN_ERRORS,
        guards=[require_join(keys), json_body_only],
    )
    async def add_host(data: HostJoin) -> dict:
        return await membership.add_host(data)

    @delete(
        "/hosts/{node:str}",
        summary="A host leaves: its groups drain, its actors stop",
        status_code=200,
        responses=_LEAVE_ERRORS,
        guards=admin,
    )
    async def remove_host(
        node: str,
        drain_timeout: Annotated[float, Parameter(ge=0, le=3600)] = 30.0,
    ) -> dict:
        return await membership.remove_host(node, drain_timeout)

    @post(
        "/stop",
        summary="Drain, then stop the supervisor and every actor (as SIGTERM does)",
        status_code=202,
        responses={**_DENIED, **_BODY},
        guards=admin,
    )
    async def stop_cluster() -> dict:
        stop()
        return {"stopping": True}

    @get(
        "/join-token",
        summary="The command that joins another machine to this cluster",
        responses=_DENIED,
        guards=admin,
    )
    async def join_token() -> dict:
        address, loopback = join_address
        return {
            "address": address,
            "token": keys.join,
            "command": f"supervisor join {address} --token {keys.join}",
            "loopback_only": loopback,
        }

    return Router("/cluster", route_handlers=[add_host, remove_host, stop_cluster, join_token])
