"""What placing a request and streaming it share: the group it runs on, and the service
side a stream needs (another group after a loss, its leader, the router's cooldown).

Both ``serving`` (the ClusterService) and ``routed_stream`` import this; neither imports
the other's module for its types.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from actors.protocol.messages import GenerationRequest
from supervisor.control.handle import ActorHandle
from supervisor.serving.router import Hardware


class ServedGroup(Protocol):
    """A supervised generation group as placement sees it: its name, model and hardware
    hints (its facts are ClusterState's), and where its actors' live handles are."""

    name: str
    model: str
    hardware: Hardware

    def handle(self, actor_id: str) -> ActorHandle | None: ...


class Placement(Protocol):
    """The service side a stream needs."""

    async def place(
        self, request: GenerationRequest, exclude: Collection[str] = ()
    ) -> ServedGroup: ...

    def leader(self, group: ServedGroup) -> ActorHandle | None: ...

    def cool(self, group: str) -> None: ...
