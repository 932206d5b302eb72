"""Memory reporter: one per node, its heartbeats carry the node's memory figures.

Ready says once what the node is (``actors.memory.hardware``); every heartbeat then
says total, available, used (``total - available``: what new allocations cannot have
without swapping, so used + available = total), swap used and the OS's pressure level
(``actors.memory.pressure``).
"""

from __future__ import annotations

import psutil

from actors.memory.hardware import hardware_info
from actors.memory.pressure import PressureReader, Sysctl
from actors.protocol.messages import Message, Ready


class MemoryActor:
    def __init__(self) -> None:
        self._sysctl = Sysctl()
        self._pressure = PressureReader(self._sysctl)

    def start(self, runtime) -> None:
        info = {"total_bytes": str(psutil.virtual_memory().total), **hardware_info(self._sysctl)}
        runtime.send(Ready(info=info))

    def handle(self, msg: Message) -> None:
        pass

    def vitals(self) -> dict[str, int | float | str]:
        return memory_vitals(self._pressure)

    def stop(self) -> None:
        pass


def memory_vitals(pressure: PressureReader) -> dict[str, int | str]:
    """This node's figures, as fields of ``Vitals``."""
    mem = psutil.virtual_memory()
    try:
        swap_used = psutil.swap_memory().used
    except (psutil.Error, OSError):  # no swap accounting here (some containers)
        swap_used = 0
    return {
        "mem_total": mem.total,
        "mem_available": mem.available,
        "mem_used": max(0, mem.total - mem.available),
        "swap_used": swap_used,
        "pressure": pressure.level(),
    }
