"""Asking a node's sync actor, with a deadline: one terminal reply or a one-line failure."""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Callable

from actors.protocol.model_messages import SyncAsk, SyncFailed, SyncProgress
from supervisor.control.handle import ActorHandle
from supervisor.state import ClusterState


class JobFailed(Exception):
    """A model job cannot go on; the message is one line naming the node."""


class Asker:
    """``ask(node, message)``: the sync actor's answer, or JobFailed naming the node."""

    def __init__(self, state: ClusterState, handle_of: Callable[[str], ActorHandle | None]):
        self.state = state
        self._handle_of = handle_of
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(4)

    def new_id(self) -> str:
        return f"sync-{self._prefix}-{next(self._ids)}"

    async def ask(
        self,
        node: str,
        ask: SyncAsk,
        expect: type | None,
        timeout: float,
        on_progress: Callable[[SyncProgress], None] | None = None,
    ):
        """Send ``ask`` to ``node``'s sync actor; its terminal reply (of type ``expect``).

        ``timeout`` bounds the silence between two replies: a download that makes progress
        may run long, one that says nothing for ``timeout`` s fails.
        """
        handle = self._handle_of(node)
        if handle is None:  # starting or restarting: wait for it, as long as for an answer
            await self.state.wait_for(lambda: self._handle_of(node) is not None, timeout)
            handle = self._handle_of(node)
        if handle is None:
            raise JobFailed(f"node {node}: its sync actor is not connected")
        replies = handle.exchange(ask).__aiter__()
        try:
            while True:
                try:
                    reply = await asyncio.wait_for(replies.__anext__(), timeout)
                except TimeoutError:
                    raise JobFailed(
                        f"node {node}: no answer from its sync actor in {timeout:g} s "
                        f"({type(ask).__name__})"
                    ) from None
                except StopAsyncIteration:
                    raise JobFailed(f"node {node}: its sync actor ended the exchange") from None
                if isinstance(reply, SyncProgress):
                    if on_progress is not None:
                        on_progress(reply)
                    continue
                if isinstance(reply, SyncFailed):
                    message = reply.message
                    raise JobFailed(
                        message if message.startswith("node ") else f"node {node}: {message}"
                    )
                if expect is not None and not isinstance(reply, expect):
                    raise JobFailed(f"node {node}: unexpected answer {type(reply).__name__}")
                return reply
        finally:
            await replies.aclose()
