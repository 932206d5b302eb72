"""The time series' beat: a ``Tick`` applied every ``series.STEP`` seconds while the
cluster runs. The timer only says *when*; the fold reads its own clocks for the bucket's
length and time stamp, so a late tick (a busy host) makes a longer bucket, not a wrong rate.
"""

from __future__ import annotations

import asyncio
import contextlib

from supervisor.state import ClusterState
from supervisor.state.events import Tick
from supervisor.state.folds.series import STEP


class Sampler:
    def __init__(self, state: ClusterState, interval: float = STEP):
        self._state = state
        self._interval = interval
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="sampler")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            # No drift: the next due time; after a stall, one tick at once, then on time.
            due = max(due + self._interval, loop.time())
            await asyncio.sleep(due - loop.time())
            self._state.apply(Tick())
