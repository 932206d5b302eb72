"""End to end: long prefills are chunked per step, so the watchdog never ends a busy group.

``demo:small`` (hidden 512, 8 layers) with the watchdog at 3 s: ten simultaneous long
prompts, then one prompt near the context length, all served by the first incarnation
of the generation actor (issue 10, item 5). A frozen rank is still caught: see
tests/test_e2e_faults.py and tests/test_e2e_distributed.py.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.clients import client_for
from tests.conftest import RunningSupervisor, demo_hostfile

WATCHDOG = 3.0


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    hostfile = demo_hostfile(model="demo:small", restart={"watchdog_interval": WATCHDOG})
    running = RunningSupervisor(tmp_path_factory.mktemp("long_prefill"), hostfile)
    try:
        running.wait_healthy(timeout=180)
        yield running
    finally:
        running.stop()


def assert_never_restarted(sup: RunningSupervisor) -> None:
    reasons = [line.get("reason", "") or line.get("error", "") for line in sup.log_lines()]
    assert not [r for r in reasons if "watchdog" in str(r)], sup.log_tail()
    assert sup.actor()["restarts"] == 0


def long_prompt(i: int, words: int) -> str:
    return f"Document {i}. " + " ".join(f"item{i}-{n} is ready" for n in range(words // 3))


def test_ten_simultaneous_long_prompts_never_trip_the_watchdog(small):
    api = client_for(small, timeout=600)

    def ask(i: int):
        return api.completions.create(
            model="demo:small", prompt=long_prompt(i, 630), max_tokens=4, temperature=0
        )

    with ThreadPoolExecutor(max_workers=10) as pool:
        replies = list(pool.map(ask, range(10)))
    assert all(r.usage.prompt_tokens > 1900 for r in replies), [r.usage for r in replies]
    assert all(r.choices[0].finish_reason in ("stop", "length") for r in replies)
    assert_never_restarted(small)


def test_a_prompt_near_the_context_length_never_trips_the_watchdog(small):
    api = client_for(small, timeout=600)
    reply = api.completions.create(
        model="demo:small", prompt=long_prompt(99, 1080), max_tokens=4, temperature=0
    )
    assert 3500 < reply.usage.prompt_tokens < 4096, reply.usage
    assert_never_restarted(small)
