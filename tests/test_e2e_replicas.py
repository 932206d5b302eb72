"""Replicas end to end: a real supervisor serving several groups, the official openai client.

Routing spreads load and keeps sessions and models where they belong; a replica killed
with ``kill -9`` under load loses no request (streams go on elsewhere, token for token
what an uninterrupted greedy run says); while a replica restarts requests wait for it, and
with every replica failed the answer is a prompt 503.
Demo-model replicas where MLX matters (greedy continuation, prompt cache), fake engines
where only routing does.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.clients import client_for
from tests.conftest import RunningSupervisor, wait_for

DEMO = "demo:tiny"
LOCAL = [{"ssh": "localhost", "name": "local"}]


def replicas(model: str, names=("a", "b"), **extra) -> dict:
    """Groups of one local host each, serving ``model``."""
    groups = [{"name": n, "hosts": ["local"]} for n in names]
    return {"hosts": LOCAL, "model": model, "groups": groups, **extra}


def wait_all_ready(sup) -> None:
    """Health says 200 once one group serves; these tests need every replica up."""
    sup.wait_healthy()
    wait_for(
        lambda: all(g["state"] == "ready" for g in sup.status()["groups"]),
        120,
        "every group to be ready",
    )


@dataclass
class Run:
    """One streamed chat completion as the client saw it."""

    served_by: str = ""
    text: str = ""
    finish: str | None = None
    usage: Any = None
    tokens: int = 0  # counted through logprobs: one entry per token
    error: str | None = None


def stream_chat(client, model: str, content: str, progress=None, until=None, **kw) -> Run:
    """Stream one chat; ``progress[content]`` counts tokens; ``until`` set: hang up."""
    run = Run()
    try:
        with client.chat.completions.with_streaming_response.create(
            model=model,
            messages=[{"role": "user", "content": content}],
            stream=True,
            stream_options={"include_usage": True},
            logprobs=True,
            **kw,
        ) as response:
            run.served_by = response.headers["x-served-by"]
            for chunk in response.parse():
                run.usage = chunk.usage or run.usage
                for choice in chunk.choices:
                    run.text += choice.delta.content or ""
                    if choice.logprobs and choice.logprobs.content:
                        run.tokens += len(choice.logprobs.content)
                    run.finish = choice.finish_reason or run.finish
                if progress is not None:
                    progress[content] = run.tokens
                if until is not None and until.is_set():
                    run.error = "hung up"
                    break
    except openai.APIError as exc:
        run.error = f"{type(exc).__name__}: {exc}"
    return run


def served_counts(sup) -> dict[str, int]:
    return {g["name"]: g["served"] for g in sup.status()["groups"]}


def actor_pid(sup, group: str) -> int | None:
    """The PID of the group's rank 0 (None while it restarts)."""
    for a in sup.status()["actors"]:
        if a["group"] == group and a["rank"] == 0:
            return a["pid"]
    raise AssertionError(f"no actor in group {group}")


def failovers(sup) -> list[dict]:
    return [line for line in sup.log_lines() if line.get("event") == "request_failover"]


# --------------------------------------------------------------------------- demo replicas


@pytest.fixture(scope="module")
def demo_pair():
    with tempfile.TemporaryDirectory() as tmp:
        sup = RunningSupervisor(Path(tmp), replicas(DEMO, restart={"backoff_initial": 0.2}))
        try:
            wait_all_ready(sup)
            yield sup
        finally:
            sup.stop()


def test_models_list_each_model_once_with_its_groups(demo_pair):
    models = client_for(demo_pair).models.list().data
    assert [(m.id, m.groups) for m in models] == [(DEMO, ["a", "b"])]
    status = demo_pair.status()
    assert [(g["name"], g["state"]) for g in status["groups"]] == [("a", "ready"), ("b", "ready")]
    assert status["router"]["policy"] == "least_loaded"


def test_concurrent_requests_are_spread_over_two_replicas(demo_pair):
    client = client_for(demo_pair)
    before = served_counts(demo_pair)

    def one(i: int) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model=DEMO,
            messages=[{"role": "user", "content": f"question {i}"}],
            max_tokens=48,
            extra_body={"ignore_eos": True},
        )
        assert raw.parse().choices[0].finish_reason == "length"
        return raw.headers["x-served-by"]

    with ThreadPoolExecutor(32) as pool:
        served_by = list(pool.map(one, range(32)))
    after = served_counts(demo_pair)
    delta = {name: after[name] - before[name] for name in after}
    assert delta == {name: served_by.count(name) for name in ("a", "b")}
    assert min(delta.values()) >= 10, delta  # a fair share each: 16 +- 6
    assert demo_pair.status()["queue_depth"] == 0


def test_kill_9_of_a_replica_under_load_loses_no_stream(demo_pair):
    client = client_for(demo_pair)
    prompts = [f"Tell story number {i} about the sea" for i in range(12)]
    greedy = dict(max_tokens=240, temperature=0, extra_body={"ignore_eos": True})
    with ThreadPoolExecutor(len(prompts)) as pool:
        reference = list(pool.map(lambda p: stream_chat(client, DEMO, p, **greedy), prompts))
    assert all(r.error is None and r.tokens == 240 for r in reference)

    progress: dict[str, int] = {}
    with ThreadPoolExecutor(len(prompts)) as pool:
        runs = [pool.submit(stream_chat, client, DEMO, p, progress, **greedy) for p in prompts]
        wait_for(
            lambda: len(progress) == len(prompts) and min(progress.values()) >= 3,
            60,
            "every stream to be under way",
        )
        victim = actor_pid(demo_pair, "a")
        os.kill(victim, signal.SIGKILL)
        results = [r.result(timeout=120) for r in runs]

    moved = [f for f in failovers(demo_pair) if f["from_group"] == "a"]
    assert moved, "no stream was on the killed replica"
    assert all(f["to_group"] == "b" and f["tokens_sent"] > 0 for f in moved)
    for prompt, run, ref in zip(prompts, results, reference, strict=True):
        assert run.error is None, (prompt, run.error)
        assert run.finish == "length"
        assert run.text == ref.text, prompt  # the continuation is the uninterrupted greedy run
        assert run.tokens == 240  # logprobs went on too, one per token
        assert run.usage.completion_tokens == 240  # counted once across both groups
        assert run.usage.prompt_tokens == ref.usage.prompt_tokens
    status = demo_pair.status()
    assert status["router"]["failovers"] >= len(moved)
    assert status["queue_depth"] == 0
    wait_for(lambda: actor_pid(demo_pair, "a") != victim, 30, "replica a to restart")


# --------------------------------------------------------------------------- sticky sessions


def test_a_sticky_session_stays_on_one_replica(start_supervisor):
    sup = start_supervisor(replicas(DEMO, router={"policy": "sticky", "session_ttl": 60}))
    wait_all_ready(sup)
    client = client_for(sup)
    progress: dict[str, int] = {}
    long, hang_up = "alice keeps this replica busy", threading.Event()
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(
            stream_chat,
            client,
            DEMO,
            long,
            progress,
            hang_up,
            user="alice",
            max_tokens=100000,
            extra_body={"ignore_eos": True},
        )
        wait_for(lambda: progress.get(long, 0) > 0, 60, "alice's long stream")
        home = sup.status()
        (alice_group,) = [g["name"] for g in home["groups"] if g["in_flight"] == 1]
        # least_loaded alone would send these to the idle replica; the session keeps them
        for i in range(4):
            raw = client.chat.completions.with_raw_response.create(
                model=DEMO,
                messages=[{"role": "user", "content": f"more {i}"}],
                max_tokens=4,
                user="alice",
            )
            assert raw.headers["x-served-by"] == alice_group
        raw = client.chat.completions.with_raw_response.create(
            model=DEMO, messages=[{"role": "user", "content": "bob"}], max_tokens=4, user="bob"
        )
        assert raw.headers["x-served-by"] != alice_group
        hang_up.set()
        assert busy.result(timeout=60).error == "hung up"

    # No session given: the conversation's start names it, so its prompt cache is reused.
    system = {"role": "system", "content": "You answer about harbours and ships. " * 12}
    turn1 = [system, {"role": "user", "content": "Describe Rotterdam"}]
    first = client.chat.completions.with_raw_response.create(
        model=DEMO, messages=turn1, max_tokens=8, temperature=0
    )
    reply = first.parse().choices[0].message.content
    turn2 = [*turn1, {"role": "assistant", "content": reply}, {"role": "user", "content": "And?"}]
    for _ in range(3):
        again = client.chat.completions.with_raw_response.create(
            model=DEMO, messages=turn2, max_tokens=8, temperature=0
        )
        assert again.headers["x-served-by"] == first.headers["x-served-by"]
        assert again.parse().usage.prompt_tokens_details.cached_tokens > 100
    router = sup.status()["router"]
    assert router["policy"] == "sticky" and router["sessions"] >= 3
    assert router["decisions"]["sticky"] >= 7
    wait_for(lambda: sup.status()["queue_depth"] == 0, 30, "alice's stream to be cancelled")


# --------------------------------------------------------------------------- fake engines


def fake(name: str, **options) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"fake:{name}?{query}" if query else f"fake:{name}"


@pytest.fixture(scope="module")
def two_models():
    """x1 and x2 serve fake:x, y1 alone serves fake:y (short context: bad requests exist)."""
    hostfile = {
        "hosts": LOCAL,
        "groups": [
            {"name": "x1", "hosts": ["local"], "model": fake("x", tokens_per_second=200)},
            {"name": "x2", "hosts": ["local"], "model": fake("x", tokens_per_second=200)},
            {
                "name": "y1",
                "hosts": ["local"],
                "model": fake("y", tokens_per_second=200, context_length=40),
            },
        ],
    }
    with tempfile.TemporaryDirectory() as tmp:
        sup = RunningSupervisor(Path(tmp), hostfile)
        try:
            wait_all_ready(sup)
            yield sup
        finally:
            sup.stop()


def test_a_model_served_by_one_group_is_routed_only_there(two_models):
    client = client_for(two_models)
    listed = {m.id: m.groups for m in client.models.list().data}
    assert listed == {"fake:x": ["x1", "x2"], "fake:y": ["y1"]}

    def one(model: str) -> str:
        run = stream_chat(client, model, f"to {model}", max_tokens=20)
        assert run.error is None and run.finish == "length" and run.tokens == 20
        return run.served_by

    with ThreadPoolExecutor(24) as pool:
        served = list(pool.map(one, ["fake:y", "fake:x"] * 12))
    assert set(served[0::2]) == {"y1"}
    assert set(served[1::2]) == {"x1", "x2"}
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="fake:z", messages=[{"role": "user", "content": "?"}])


def test_a_bad_request_is_not_retried_elsewhere(two_models):
    client = client_for(two_models)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="fake:y", messages=[{"role": "user", "content": "word " * 50}], max_tokens=4
        )
    assert "context" in str(info.value)
    assert failovers(two_models) == []


def test_a_request_whose_group_dies_before_its_first_token_is_retried_invisibly(
    start_supervisor,
):
    sup = start_supervisor(replicas(fake("slow", first_token_delay=2, tokens_per_second=100)))
    wait_all_ready(sup)
    client = client_for(sup)
    ask = dict(model="fake:slow", messages=[{"role": "user", "content": "wait"}], max_tokens=30)
    reference = client.chat.completions.create(**ask).choices[0].message.content
    answer: dict = {}
    thread = threading.Thread(
        target=lambda: answer.update(reply=client.chat.completions.create(**ask))
    )
    thread.start()
    busy = wait_for(
        lambda: [g["name"] for g in sup.status()["groups"] if g["in_flight"]], 10, "the request"
    )
    os.kill(actor_pid(sup, busy[0]), signal.SIGKILL)
    thread.join(30)
    reply = answer["reply"]
    assert reply.choices[0].message.content == reference
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 30
    (moved,) = failovers(sup)
    assert moved["from_group"] == busy[0] and moved["tokens_sent"] == 0


def test_all_replicas_failed_is_503_at_once_and_a_started_stream_ends_with_an_error(
    start_supervisor,
):
    sup = start_supervisor(replicas(fake("f", tokens_per_second=20), restart={"intensity": 0}))
    wait_all_ready(sup)
    client = client_for(sup, timeout=30)
    progress: dict[str, int] = {}
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(stream_chat, client, "fake:f", "doomed", progress, max_tokens=1000)
        wait_for(lambda: progress.get("doomed", 0) > 0, 10, "the stream")
        for group in ("a", "b"):
            os.kill(actor_pid(sup, group), signal.SIGKILL)
        run = running.result(timeout=30)
    assert run.error is not None and "lost" in run.error  # an error event, not a hang
    wait_for(
        lambda: all(g["state"] == "failed" for g in sup.status()["groups"]), 10, "failed groups"
    )
    began = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="fake:f", messages=[{"role": "user", "content": "anyone?"}]
        )
    elapsed = time.monotonic() - began
    assert info.value.status_code == 503
    assert info.value.response.headers["retry-after"] == "30"
    assert "has failed" in str(info.value)
    assert elapsed < 5  # no ready-wait: nothing will ever come back
    assert sup.health()[0] == 503


def test_a_request_while_the_only_group_restarts_after_kill_9_waits_and_is_served(
    start_supervisor,
):
    backoff = {"backoff_initial": 2, "backoff_max": 2}
    sup = start_supervisor(replicas(fake("f"), names=("a",), restart=backoff))
    wait_all_ready(sup)
    os.kill(actor_pid(sup, "a"), signal.SIGKILL)
    wait_for(lambda: sup.status()["groups"][0]["state"] == "restarting", 10, "a restarting group")
    r = httpx.post(
        sup.url + "/v1/completions",
        json={"model": "fake:f", "prompt": "?", "max_tokens": 3},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] == "length"
    assert sup.status()["groups"][0]["restarts"] == 1


def test_a_restart_longer_than_ready_wait_is_503_with_a_short_retry_after(start_supervisor):
    backoff = {"backoff_initial": 120, "backoff_max": 120}
    sup = start_supervisor(replicas(fake("f"), restart=backoff, ready_wait=1))
    wait_all_ready(sup)
    for group in ("a", "b"):
        os.kill(actor_pid(sup, group), signal.SIGKILL)
    wait_for(
        lambda: all(g["state"] == "restarting" for g in sup.status()["groups"]),
        10,
        "restarting groups",
    )
    began = time.monotonic()
    r = httpx.post(sup.url + "/v1/completions", json={"model": "fake:f", "prompt": "?"}, timeout=30)
    elapsed = time.monotonic() - began
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "5"
    assert "became ready within 1 s" in r.json()["error"]["message"]
    assert 1 <= elapsed < 5  # waited ready_wait, no longer


def test_hardware_aware_sends_more_to_the_bigger_machine(start_supervisor):
    hosts = [
        {"ssh": "localhost", "name": "ultra", "chip": "Apple M2 Ultra", "gpu_cores": 60},
        {"ssh": "localhost", "name": "base", "chip": "Apple M2", "gpu_cores": 20},
    ]
    sup = start_supervisor(
        {
            "hosts": hosts,
            "model": fake("f", tokens_per_second=50),
            "router": {"policy": "hardware_aware"},
            "groups": [{"name": "big", "hosts": ["ultra"]}, {"name": "small", "hosts": ["base"]}],
        }
    )
    wait_all_ready(sup)
    client = client_for(sup)
    progress: dict[str, int] = {}
    prompts, hang_up = [f"job {i}" for i in range(16)], threading.Event()
    with ThreadPoolExecutor(len(prompts)) as pool:
        runs = [
            pool.submit(stream_chat, client, "fake:f", p, progress, hang_up, max_tokens=5000)
            for p in prompts
        ]
        wait_for(lambda: len(progress) == len(prompts), 30, "every stream to start")
        in_flight = {g["name"]: g["in_flight"] for g in sup.status()["groups"]}
        hang_up.set()
        assert all(r.result(timeout=60).error == "hung up" for r in runs)
    assert in_flight == {"big": 12, "small": 4}  # capacity 3:1, load shared in proportion
    assert sup.status()["router"]["policy"] == "hardware_aware"
    wait_for(lambda: sup.status()["queue_depth"] == 0, 30, "the hung-up streams to end")


def test_a_request_during_the_first_start_waits_for_a_group(start_supervisor):
    sup = start_supervisor(replicas(fake("late", start_delay=3), names=("a",)))

    def api_answers() -> bool:
        try:
            return sup.health()[0] in (200, 503)
        except OSError:
            return False

    wait_for(api_answers, 60, "the API to listen")
    assert sup.status()["groups"][0]["state"] == "starting"
    reply = client_for(sup).chat.completions.create(
        model="fake:late", messages=[{"role": "user", "content": "early"}], max_tokens=3
    )
    assert reply.choices[0].finish_reason == "length"
