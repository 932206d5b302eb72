"""Memory reporter: one per node, its heartbeats carry the node's memory figures."""

from __future__ import annotations

import psutil

from actors.protocol.messages import Message, Ready


class MemoryActor:
    def start(self, runtime) -> None:
        runtime.send(Ready(info={"total_bytes": str(psutil.virtual_memory().total)}))

    def handle(self, msg: Message) -> None:
        pass

    def vitals(self) -> dict[str, int | float]:
        mem = psutil.virtual_memory()
        return {"mem_total": mem.total, "mem_available": mem.available}

    def stop(self) -> None:
        pass
