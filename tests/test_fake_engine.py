"""The fake engine: the generation protocol at a set pace, deterministic, resumable."""

from __future__ import annotations

import queue
import time

import pytest

from actors.fake.engine import FakeEngine, FakeOptions, fake_options
from actors.protocol.messages import (
    ChatMessage,
    Finished,
    GenerationFailed,
    GenerationRequest,
    TokenDelta,
)
from actors.protocol.model_spec import parse_fake_spec, served_model


@pytest.fixture
def engine():
    events: queue.Queue = queue.Queue()
    engines = []

    def make(**options) -> tuple[FakeEngine, queue.Queue]:
        max_batch = options.pop("max_batch", 8)
        eng = FakeEngine(FakeOptions(**options), emit=events.put, max_batch=max_batch)
        eng.start()
        engines.append(eng)
        return eng, events

    yield make
    for eng in engines:
        eng.stop()
    _seen.clear()


_seen: dict[str, list] = {}


def run(events: queue.Queue, request_id: str, timeout: float = 10.0):
    """Every event of one request up to its terminal one (others' are kept for later)."""
    deadline = time.monotonic() + timeout
    while True:
        mine = _seen.get(request_id, [])
        if mine and isinstance(mine[-1], (Finished, GenerationFailed)):
            return _seen.pop(request_id)
        event = events.get(timeout=max(0.01, deadline - time.monotonic()))
        _seen.setdefault(event.request_id, []).append(event)


def ids(events) -> list[int]:
    return [t for e in events if isinstance(e, TokenDelta) for t in e.token_ids]


def text(events) -> str:
    return "".join(e.text for e in events if isinstance(e, TokenDelta))


def chat(rid: str, content: str = "hello", **kw) -> GenerationRequest:
    return GenerationRequest(rid, "fake:t", messages=[ChatMessage("user", content)], **kw)


def test_spec_parsing():
    assert parse_fake_spec("fake:bench?tokens_per_second=20&stamp=1") == (
        "fake:bench",
        {"tokens_per_second": "20", "stamp": "1"},
    )
    assert parse_fake_spec("fake:plain") == ("fake:plain", {})
    assert parse_fake_spec("demo:tiny") is None
    assert served_model("fake:a?tokens_per_second=3") == "fake:a"
    assert served_model("mlx-community/x") == "mlx-community/x"
    assert fake_options({"tokens_per_second": "20", "stamp": "true"}) == FakeOptions(
        tokens_per_second=20.0, stamp=True
    )


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"tokens_per_second": "fast"}, "tokens_per_second"),
        ({"tokens_per_second": "0"}, "tokens_per_second"),
        ({"speed": "3"}, "speed"),
    ],
)
def test_bad_options_are_one_line_naming_the_option(options, named):
    with pytest.raises(ValueError) as info:
        fake_options(options)
    message = str(info.value)
    assert named in message and "\n" not in message


def test_max_tokens_deterministic_tokens_and_usage(engine):
    eng, events = engine(tokens_per_second=2000)
    eng.submit(chat("a", max_tokens=7))
    eng.submit(chat("b", max_tokens=7))
    first, second = run(events, "a"), run(events, "b")
    assert ids(first) == ids(second) and len(ids(first)) == 7
    end = first[-1]
    assert end.finish_reason == "length"
    assert end.usage.completion_tokens == 7 and end.usage.prompt_tokens == 2  # "user: hello"
    eng.submit(chat("c", "another prompt", max_tokens=7))
    assert ids(run(events, "c")) != ids(first)


def test_resume_continues_exactly_as_an_uninterrupted_run(engine):
    eng, events = engine(tokens_per_second=2000)
    eng.submit(chat("whole", max_tokens=20, logprobs=True))
    whole = run(events, "whole")
    sent = ids(whole)[:8]
    eng.submit(chat("rest", max_tokens=20, logprobs=True, resume_tokens=sent))
    rest = run(events, "rest")
    assert sent + ids(rest) == ids(whole)
    assert text(whole).endswith(text(rest))
    assert rest[-1].usage.completion_tokens == 20  # resumed tokens count once, as completion
    assert sum(len(e.logprobs) for e in rest if isinstance(e, TokenDelta)) == 12


def test_resume_past_the_budget_finishes_at_once(engine):
    eng, events = engine(tokens_per_second=2000)
    eng.submit(chat("r", max_tokens=3, resume_tokens=[1, 2, 3]))
    (end,) = run(events, "r")
    assert end.finish_reason == "length" and end.usage.completion_tokens == 3


def test_pace_and_cancel(engine):
    eng, events = engine(tokens_per_second=20)
    began = time.monotonic()
    eng.submit(chat("slow", max_tokens=1000))
    for _ in range(5):
        assert isinstance(events.get(timeout=5), TokenDelta)
    elapsed = time.monotonic() - began
    eng.cancel("slow")
    rest = run(events, "slow")
    assert rest[-1].finish_reason == "cancelled"
    assert 4 * 0.05 <= elapsed  # 5 tokens at 20/s: the first at once, then one per 50 ms
    assert eng.vitals()["active_requests"] == 0


def test_max_batch_queues_the_rest(engine):
    eng, events = engine(tokens_per_second=50, max_batch=2)
    for rid in ("a", "b", "c"):
        eng.submit(chat(rid, max_tokens=1000))

    def vitals_show_queue():
        v = eng.vitals()
        return v["active_requests"] == 2 and v["queued_requests"] == 1

    deadline = time.monotonic() + 5
    while not vitals_show_queue():
        assert time.monotonic() < deadline, eng.vitals()
        time.sleep(0.01)
    eng.cancel("c")  # cancelled while queued
    assert run(events, "c")[-1].finish_reason == "cancelled"
    for rid in ("a", "b"):
        eng.cancel(rid)
        assert run(events, rid)[-1].finish_reason == "cancelled"


def test_bad_requests_fail_as_not_retryable(engine):
    eng, events = engine(tokens_per_second=2000, vocab_size=10)
    eng.submit(chat("big", resume_tokens=[99]))
    (failed,) = run(events, "big")
    assert isinstance(failed, GenerationFailed) and not failed.retryable
    assert failed.status == 400 and "vocabulary" in failed.message


def test_stop_fails_running_requests_as_retryable(engine):
    eng, events = engine(tokens_per_second=10)
    eng.submit(chat("x", max_tokens=1000))
    assert isinstance(events.get(timeout=5), TokenDelta)
    eng.stop()
    failed = run(events, "x")[-1]
    assert isinstance(failed, GenerationFailed) and failed.retryable


def test_stamp_puts_the_emit_time_in_the_text(engine):
    eng, events = engine(tokens_per_second=2000, stamp=True)
    before = time.time_ns()
    eng.submit(chat("s", max_tokens=3))
    delta = next(e for e in run(events, "s") if isinstance(e, TokenDelta))
    stamp = int(delta.text.rsplit("@", 1)[1])
    assert before <= stamp <= time.time_ns()
