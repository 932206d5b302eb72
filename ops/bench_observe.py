"""``ops/bench --observe``: our supervisor measured with observers attached, beside the bare one.

The observers are what a watched cluster carries: Prometheus scraping ``/metrics`` every
second and a dashboard following ``/api/cluster/events`` (SSE). They run in a process of
their own (``python ops/bench_observe.py URL``), so their CPU is neither the client's nor
the server's in the benchmark's accounting; only what they make the supervisor do shows.
An endpoint that is not there yet (404) is retried every second and counted, not fatal.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
from bench_servers import OurSupervisor, Processes

SCRAPE_EVERY = 1.0  # seconds, as the benchmark asks
TIMEOUT = httpx.Timeout(10.0, read=30.0)  # the feed sends a ping after 15 s of silence


class Counts:
    def __init__(self) -> None:
        self.scrapes = self.scrape_errors = self.events = self.feed_404 = self.reconnects = 0

    def line(self) -> str:
        return (
            f"observers: {self.scrapes} scrapes ({self.scrape_errors} failed), "
            f"{self.events} feed events, {self.reconnects} feed connects, "
            f"{self.feed_404} feed 404s"
        )


async def scrape(client: httpx.AsyncClient, url: str, counts: Counts, stop: asyncio.Event):
    while not stop.is_set():
        started = time.monotonic()
        try:
            reply = await client.get(url + "/metrics")
            reply.raise_for_status()
            counts.scrapes += 1
        except httpx.HTTPError:
            counts.scrape_errors += 1
        await _pause(stop, SCRAPE_EVERY - (time.monotonic() - started))


async def follow(client: httpx.AsyncClient, url: str, counts: Counts, stop: asyncio.Event):
    last_id = None
    while not stop.is_set():
        headers = {"Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        try:
            async with client.stream("GET", url + "/api/cluster/events", headers=headers) as r:
                if r.status_code == 404:  # not built yet: the scrapes go on alone
                    counts.feed_404 += 1
                    await _pause(stop, 1.0)
                    continue
                r.raise_for_status()
                counts.reconnects += 1
                async for line in r.aiter_lines():
                    if line.startswith("id:"):
                        last_id = line[3:].strip()
                    elif line.startswith("event:"):
                        counts.events += 1
        except httpx.HTTPError:
            await _pause(stop, 1.0)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), max(0.0, seconds))
    except TimeoutError:
        pass


async def observe(url: str, headers: dict[str, str]) -> Counts:
    """Scrape and follow ``url`` until SIGTERM or SIGINT; what was seen."""
    counts, stop = Counts(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with httpx.AsyncClient(timeout=TIMEOUT, headers=headers) as client:
        tasks = [
            asyncio.create_task(scrape(client, url, counts, stop)),
            asyncio.create_task(follow(client, url, counts, stop)),
        ]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return counts


class ObservedSupervisor(OurSupervisor):
    """Our supervisor with the observers started once it is up, ended before it is."""

    name = "ours observed"

    def __init__(self, spec: str, eos_ids: Sequence[int], log_dir: Path):
        super().__init__(spec, eos_ids, log_dir)
        self._observer = Processes()  # apart: cpu_seconds() counts only the server's
        self._observer_log = log_dir / "observer.log"
        try:
            self._observer.start([sys.executable, __file__, self.url], self._observer_log)
        except BaseException:
            super().close()
            raise

    def close(self) -> None:
        try:
            self._observer.stop_all()
            lines = self._observer_log.read_text(errors="replace").splitlines()
            print(f"  {self.name}: {lines[-1] if lines else 'the observer said nothing'}")
        finally:
            super().close()


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2) or not argv[0].startswith("http"):
        print("usage: ops/bench_observe.py URL [API_KEY]", file=sys.stderr)
        return 2
    headers = {"Authorization": f"Bearer {argv[1]}"} if len(argv) == 2 else {}
    counts = asyncio.run(observe(argv[0].rstrip("/"), headers))
    print(counts.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
