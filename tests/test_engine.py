"""The generation engine on the real demo model: batching, sampling, stops, cache, resume."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import mlx.core as mx
import mlx_lm
import pytest
from mlx_lm import stream_generate

from actors.generation.engine.engine import Engine
from actors.models.demo import ensure_demo_model
from actors.protocol.messages import (
    ChatMessage,
    Finished,
    GenerationFailed,
    GenerationRequest,
    SamplingParams,
    TokenDelta,
    Vitals,
)

GREEDY = SamplingParams(temperature=0.0)
DEADLINE = 20.0


@pytest.fixture(scope="session")
def demo():
    model, tokenizer = mlx_lm.load(str(ensure_demo_model("tiny")))
    return model, tokenizer


@pytest.fixture(scope="session")
def no_eos(demo):
    """A logit_bias that keeps the random model from ending early."""
    _, tokenizer = demo
    return {t: -1e9 for t in tokenizer.eos_token_ids}


class Events:
    """Collects emitted events per request and checks each request ends exactly once."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.by_id: dict[str, list] = defaultdict(list)
        self.violations: list[str] = []
        self.on_delta = None

    def __call__(self, event) -> None:
        with self._cond:
            events = self.by_id[event.request_id]
            if events and isinstance(events[-1], Finished | GenerationFailed):
                self.violations.append(f"{event!r} after the end of {event.request_id}")
            events.append(event)
            self._cond.notify_all()
        if self.on_delta is not None and isinstance(event, TokenDelta):
            self.on_delta(event)

    def end(self, request_id: str, timeout: float = DEADLINE):
        """Wait for the request's Finished or GenerationFailed."""
        with self._cond:
            ok = self._cond.wait_for(lambda: self._ended(request_id), timeout)
        assert ok, f"{request_id} did not end within {timeout} s"
        return self.by_id[request_id][-1]

    def first_delta(self, request_id: str, timeout: float = DEADLINE) -> TokenDelta:
        def found():
            return next((e for e in self.by_id[request_id] if isinstance(e, TokenDelta)), None)

        with self._cond:
            delta = self._cond.wait_for(found, timeout)
        assert delta, f"{request_id} sent no token within {timeout} s"
        return delta

    def deltas(self, request_id: str) -> list[TokenDelta]:
        return [e for e in self.by_id[request_id] if isinstance(e, TokenDelta)]

    def tokens(self, request_id: str) -> list[int]:
        return [t for d in self.deltas(request_id) for t in d.token_ids]

    def text(self, request_id: str) -> str:
        return "".join(d.text for d in self.deltas(request_id))

    def _ended(self, request_id: str) -> bool:
        events = self.by_id.get(request_id)
        return bool(events) and isinstance(events[-1], Finished | GenerationFailed)


@pytest.fixture
def make_engine(demo):
    """Build engines on the demo model; each is stopped and its event log checked at teardown."""
    model, tokenizer = demo
    made: list[tuple[Engine, Events]] = []

    def make(start: bool = True, engine_class: type[Engine] = Engine, **options):
        events = Events()
        options = {"context_length": 4096, "coalesce_ms": 0.0, **options}
        engine = engine_class(model, tokenizer, model_name="demo-tiny", emit=events, **options)
        if start:
            engine.start()
        made.append((engine, events))
        return engine, events

    yield make
    for engine, events in made:
        engine.stop()
        assert not events.violations


def chat(text: str) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=text)]


def chat_tokens(tokenizer, text: str) -> list[int]:
    rendered = [{"role": "user", "content": text}]
    return list(tokenizer.apply_chat_template(rendered, add_generation_prompt=True))


def reference(demo, tokens: list[int], max_tokens: int) -> tuple[list[int], list[str], str]:
    """mlx_lm's own greedy run: token ids, text per token, finish reason (EOS not included)."""
    model, tokenizer = demo
    ids, texts = [], []
    for response in stream_generate(model, tokenizer, tokens, max_tokens=max_tokens):
        if response.finish_reason == "stop":
            texts.append(response.text)  # what the detokenizer still held
            return ids, texts, "stop"
        ids.append(response.token)
        texts.append(response.text)
    return ids, texts, response.finish_reason


def request(rid: str, **fields) -> GenerationRequest:
    return GenerationRequest(request_id=rid, model="demo-tiny", **{"sampling": GREEDY, **fields})


# --------------------------------------------------------------------------- #


def test_greedy_output_matches_stream_generate(demo, make_engine):
    _, tokenizer = demo
    question = "What is the weather in Paris? It is 20 degrees and quiet."
    ref_chat = reference(demo, chat_tokens(tokenizer, question), 48)
    ref_raw = reference(demo, tokenizer.encode("The small cat reads the river"), 48)

    engine, events = make_engine(coalesce_ms=5.0)
    engine.submit(request("chat", messages=chat(question), max_tokens=48))
    engine.submit(request("raw", prompt="The small cat reads the river", max_tokens=48))
    for rid, (ids, texts, reason) in (("chat", ref_chat), ("raw", ref_raw)):
        end = events.end(rid)
        assert isinstance(end, Finished)
        assert events.tokens(rid) == ids
        assert events.text(rid) == "".join(texts)
        assert end.finish_reason == reason
        assert end.usage.completion_tokens >= len(ids)
    assert Vitals(**engine.vitals()).requests_done == 2


def test_tokens_are_gathered_for_the_stream_interval(make_engine, no_eos):
    # The first token goes at once (time to first token); later ones wait for the interval,
    # which a 10-minute one never reaches here: everything else comes with the end.
    sampling = SamplingParams(temperature=0.0, logit_bias=no_eos)
    engine, events = make_engine(coalesce_ms=600_000.0)
    engine.submit(request("gathered", prompt="Uma sails", max_tokens=30, sampling=sampling))
    assert events.end("gathered").usage.completion_tokens == 30
    assert [len(d.token_ids) for d in events.deltas("gathered")] == [1, 29]


def test_concurrent_requests_share_the_batch(demo, make_engine):
    engine, events = make_engine(start=False)
    prompts = [f"Request {i}: the {w} of Oslo" * (1 + i % 3) for i, w in enumerate("abcdefgh")]
    for i, prompt in enumerate(prompts):
        engine.submit(request(f"r{i}", prompt=prompt, max_tokens=24))
    engine.start()
    ends = [events.end(f"r{i}") for i in range(8)]
    assert all(isinstance(e, Finished) for e in ends)
    for i, end in enumerate(ends):
        assert end.usage.completion_tokens >= len(events.tokens(f"r{i}")) > 0
    vitals = Vitals(**engine.vitals())
    assert vitals.peak_batch_size > 1
    assert vitals.requests_done == 8 and vitals.active_requests == 0
    assert vitals.tokens_generated >= sum(len(events.tokens(f"r{i}")) for i in range(8))


def _seeded(rid: str, seed: int, prompt: str, no_eos: dict) -> GenerationRequest:
    sampling = SamplingParams(temperature=1.0, top_p=0.95, seed=seed, logit_bias=no_eos)
    return request(rid, prompt=prompt, max_tokens=24, sampling=sampling)


def test_seed_reproduces_output_whatever_the_neighbours(make_engine, no_eos):
    first, first_events = make_engine(start=False)
    first.submit(_seeded("a", 1234, "Alice sends a letter", no_eos))
    first.submit(_seeded("n1", 1, "Bob builds a bridge", no_eos))
    first.submit(_seeded("other-seed", 4321, "Alice sends a letter", no_eos))
    first.start()
    for rid in ("a", "n1", "other-seed"):
        first_events.end(rid)

    second, second_events = make_engine(start=False)
    for i in range(4):
        second.submit(_seeded(f"m{i}", 77 + i, f"Noise {i} in Tokyo " * (i + 1), no_eos))
    second.submit(_seeded("a", 1234, "Alice sends a letter", no_eos))
    second.submit(request("greedy", prompt="Carol counts", max_tokens=30))
    second.start()
    second_events.end("a")
    tokens = first_events.tokens("a")
    assert len(tokens) == 24
    assert second_events.tokens("a") == tokens
    assert first_events.tokens("other-seed") != tokens
    assert first.vitals()["peak_batch_size"] > 1 and second.vitals()["peak_batch_size"] > 1


def test_every_sampling_option_runs(make_engine):
    engine, events = make_engine()
    options = {
        "everything": SamplingParams(
            temperature=0.8,
            top_p=0.9,
            top_k=40,
            min_p=0.05,
            seed=-5,
            repetition_penalty=1.3,
            presence_penalty=0.5,
            frequency_penalty=0.5,
            logit_bias={7: 5.0},
        ),
        "unseeded": SamplingParams(temperature=1.2, top_k=100_000, min_p=0.1),
        "seeded-big": SamplingParams(temperature=0.7, seed=2**70, top_k=3),
    }
    for rid, sampling in options.items():
        engine.submit(request(rid, prompt="Quito", max_tokens=16, sampling=sampling))
    for rid in options:
        assert isinstance(events.end(rid), Finished), events.by_id[rid]


def test_stop_string_is_cut_and_never_emitted(demo, make_engine):
    _, tokenizer = demo
    prompt = "Grace walks to the market"
    ids, texts, _ = reference(demo, tokenizer.encode(prompt), 64)
    full = "".join(texts)
    # A stop string that straddles a token boundary, so it must be held back across tokens.
    bounds = {sum(len(t) for t in texts[:i]) for i in range(len(texts))}
    at = next(
        i
        for i in range(8, len(full) - 6)
        if any(i < b < i + 4 for b in bounds) and full.find(full[i : i + 4]) == i
    )
    stop = full[at : at + 4]

    engine, events = make_engine()
    engine.submit(request("s", prompt=prompt, max_tokens=64, stop=["never-there", stop]))
    end = events.end("s")
    assert isinstance(end, Finished) and end.finish_reason == "stop"
    assert events.text("s") == full[:at]
    assert all(stop not in d.text for d in events.deltas("s"))
    assert events.tokens("s") == ids[: len(events.tokens("s"))]
    assert end.usage.completion_tokens > len(events.tokens("s"))


def test_max_tokens_ends_with_length(make_engine, no_eos):
    engine, events = make_engine()
    sampling = SamplingParams(temperature=0.0, logit_bias=no_eos)
    engine.submit(request("m", prompt="Dave reads", max_tokens=7, sampling=sampling))
    end = events.end("m")
    assert isinstance(end, Finished) and end.finish_reason == "length"
    assert end.usage.completion_tokens == 7
    assert len(events.tokens("m")) == 7


def test_ignore_eos_decodes_exactly_max_tokens(demo, make_engine):
    _, tokenizer = demo
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    keen = SamplingParams(temperature=0.0, logit_bias={eos: 100.0})  # EOS every time
    engine, events = make_engine()
    engine.submit(request("stops", prompt="Dave reads", max_tokens=6, sampling=keen))
    engine.submit(
        request("goes-on", prompt="Dave reads", max_tokens=6, sampling=keen, ignore_eos=True)
    )
    stops, goes_on = events.end("stops"), events.end("goes-on")
    assert stops.finish_reason == "stop" and stops.usage.completion_tokens == 1
    assert goes_on.finish_reason == "length" and goes_on.usage.completion_tokens == 6
    assert events.tokens("goes-on") == [eos] * 6


def test_cancel_ends_running_and_queued_requests(make_engine, no_eos):
    engine, events = make_engine(max_batch=1)
    sampling = SamplingParams(temperature=0.0, logit_bias=no_eos)
    engine.submit(request("long", prompt="Erin opens", max_tokens=3000, sampling=sampling))
    engine.submit(request("queued", prompt="Frank", max_tokens=10))
    events.first_delta("long")
    assert engine.vitals()["queued_requests"] == 1

    engine.cancel("queued")
    queued = events.end("queued", timeout=5.0)
    assert isinstance(queued, Finished) and queued.finish_reason == "cancelled"
    assert not events.deltas("queued")

    asked = time.monotonic()
    engine.cancel("long")
    end = events.end("long", timeout=5.0)
    assert time.monotonic() - asked < 2.0
    assert isinstance(end, Finished) and end.finish_reason == "cancelled"
    assert 0 < end.usage.completion_tokens < 3000
    engine.cancel("no-such-request")  # ignored
    assert engine.vitals()["active_requests"] == 0


def test_logprobs_only_when_asked(make_engine):
    engine, events = make_engine()
    engine.submit(request("lp", prompt="Heidi says", max_tokens=12, logprobs=True, top_logprobs=5))
    engine.submit(request("plain", prompt="Heidi says", max_tokens=12))
    events.end("lp")
    events.end("plain")
    assert all(d.logprobs is None for d in events.deltas("plain"))
    entries = [lp for d in events.deltas("lp") for lp in d.logprobs]
    assert [e.token_id for e in entries] == events.tokens("lp") == events.tokens("plain")
    for entry in entries:
        values = [t.logprob for t in entry.top]
        assert len(values) == 5 and values == sorted(values, reverse=True)
        assert entry.top[0].token_id == entry.token_id  # greedy picks the best
        assert entry.logprob == pytest.approx(values[0]) and entry.logprob <= 0.0


def test_shared_prefix_is_served_from_the_prompt_cache(make_engine):
    engine, events = make_engine()
    system = ChatMessage(role="system", content="You answer about cities. " * 20)
    engine.submit(request("one", messages=[system, *chat("Tell me about Rome")], max_tokens=8))
    first = events.end("one")
    engine.submit(request("two", messages=[system, *chat("And Lima?")], max_tokens=8))
    second = events.end("two")
    assert first.usage.cached_tokens == 0
    assert second.usage.cached_tokens > 100
    assert second.usage.cached_tokens < second.usage.prompt_tokens
    assert engine.vitals()["cache_hits"] == 1


def test_resume_continues_exactly_where_the_stream_broke(make_engine, no_eos):
    question = "Ivan remembers the winter in Berlin"
    sampling = SamplingParams(temperature=0.0, logit_bias=no_eos)
    engine, events = make_engine()
    engine.submit(request("whole", messages=chat(question), max_tokens=40, sampling=sampling))
    events.end("whole")
    whole, deltas = events.tokens("whole"), events.deltas("whole")
    assert len(whole) == 40 and all(len(d.token_ids) == 1 for d in deltas)
    sent_text = "".join(d.text for d in deltas[:15])

    # A fresh engine (no cache) and the same engine (prompt + tokens cached) both continue.
    fresh, fresh_events = make_engine()
    for rid, target, log in (("fresh", fresh, fresh_events), ("warm", engine, events)):
        target.submit(
            request(
                rid,
                messages=chat(question),
                max_tokens=40,
                sampling=sampling,
                resume_tokens=whole[:15],
            )
        )
        end = log.end(rid)
        assert log.tokens(rid) == whole[15:]
        assert sent_text + log.text(rid) == events.text("whole")
        assert end.finish_reason == "length" and end.usage.completion_tokens == 40
    assert events.by_id["warm"][-1].usage.cached_tokens > 0


def test_resume_from_every_token_hits_the_cache_exactly(make_engine, no_eos):
    # The finished run's cache is stored under prompt + all its tokens: an exact hit,
    # which BatchGenerator cannot start from as is (nothing left to feed).
    prompt = "Peggy keeps the old garden"
    sampling = SamplingParams(temperature=0.0, logit_bias=no_eos)
    engine, events = make_engine()
    engine.submit(request("head", prompt=prompt, max_tokens=12, sampling=sampling))
    events.end("head")
    head = events.tokens("head")
    engine.submit(
        request("tail", prompt=prompt, max_tokens=20, sampling=sampling, resume_tokens=head)
    )
    end = events.end("tail")
    assert isinstance(end, Finished) and end.usage.completion_tokens == 20
    assert end.usage.cached_tokens == end.usage.prompt_tokens
    engine.submit(request("whole", prompt=prompt, max_tokens=20, sampling=sampling))
    events.end("whole")
    assert head + events.tokens("tail") == events.tokens("whole")


class Boom(Engine):
    """Requests whose id starts with "boom" raise inside the generation step."""

    def _prepare(self, request):
        seq = super()._prepare(request)
        if request.request_id.startswith("boom"):
            seq.processors.append(lambda tokens, logits: mx.array(1) + None)
        return seq


def test_bad_requests_fail_alone(demo, no_eos):
    model, tokenizer = demo
    events = Events()
    engine = Boom(model, tokenizer, model_name="demo-tiny", emit=events, context_length=64)
    engine.submit(request("good", prompt="Judy plays", max_tokens=200))
    engine.submit(request("long", prompt="word " * 100, max_tokens=4))
    engine.submit(request("empty", messages=[], max_tokens=4))
    engine.submit(request("top-k", prompt="x", sampling=SamplingParams(top_k=-1)))
    engine.start()
    try:
        for rid, words in (("long", "context"), ("empty", "empty"), ("top-k", "top_k")):
            failed = events.end(rid)
            assert isinstance(failed, GenerationFailed) and failed.status == 400
            assert words in failed.message
        good = events.end("good")
        assert isinstance(good, Finished) and good.finish_reason in ("length", "stop")
        assert good.usage.prompt_tokens + good.usage.completion_tokens <= 64

        # An exception inside a batch step fails that batch; the engine keeps serving.
        sampling = SamplingParams(temperature=0.0, logit_bias=no_eos)
        engine.submit(request("neighbour", prompt="Sybil", max_tokens=60, sampling=sampling))
        engine.submit(request("boom", prompt="Mallory", max_tokens=8))
        for rid in ("boom", "neighbour"):
            failed = events.end(rid)
            assert isinstance(failed, GenerationFailed) and failed.status == 500
            assert failed.retryable
        engine.submit(request("after", prompt="Oscar", max_tokens=8))
        assert isinstance(events.end("after"), Finished)
    finally:
        engine.stop()
    assert not events.violations


def test_a_prompt_past_the_context_is_refused_on_the_senders_thread(demo):
    model, tokenizer = demo
    events = Events()
    engine = Engine(model, tokenizer, model_name="demo-tiny", emit=events, context_length=64)
    # Never started: no engine thread exists to template, tokenize or refuse anything.
    engine.submit(request("long", messages=chat("word " * 100), max_tokens=4))
    failed = events.end("long", timeout=0)
    assert isinstance(failed, GenerationFailed) and failed.status == 400
    assert failed.code == "context_length_exceeded"
    assert "the model's context is 64" in failed.message
    assert engine.vitals()["queued_requests"] == 0  # it never reached the inbox
    engine.stop()


def test_progress_counts_prefill_chunks(make_engine):
    engine, events = make_engine(prefill_step_size=16)
    seen: list[int] = []
    events.on_delta = lambda delta: seen.append(engine.vitals()["progress"])
    engine.submit(request("p", prompt="The quiet river in Quito. " * 40, max_tokens=4))
    end = events.end("p")
    chunks = end.usage.prompt_tokens // 16
    assert chunks >= 10
    assert seen[0] >= chunks  # counted before the first token came out
    assert engine.vitals()["progress"] >= chunks + end.usage.completion_tokens


# --------------------------------------------------------------------------- #
# A request alone runs outside the batch (engine/solo.py) and joins it when another comes.


class JoinAt(Engine):
    """Submits ``then`` from the engine thread once the Solo has taken ``after`` steps."""

    def __init__(self, *args, after: int, then: GenerationRequest, **kwargs):
        super().__init__(*args, **kwargs)
        self.solo_steps = 0
        self._after, self._then = after, then

    def _advance_solo(self) -> None:
        super()._advance_solo()
        self.solo_steps += 1
        if self.solo_steps == self._after:
            self.submit(self._then)


def _alone_then_joined(make_engine, first: GenerationRequest, after: int, **options):
    """Tokens of ``first`` run alone to the end, and run with a neighbour joining mid-way."""
    alone, alone_events = make_engine(**options)
    alone.submit(first)
    assert isinstance(alone_events.end(first.request_id), Finished)
    assert alone.vitals()["peak_batch_size"] == 1

    neighbour = request("neighbour", prompt="Walter waits " * 5, max_tokens=30)
    engine, events = make_engine(engine_class=JoinAt, after=after, then=neighbour, **options)
    engine.submit(first)
    end = events.end(first.request_id)
    assert isinstance(events.end("neighbour"), Finished)
    assert engine.solo_steps >= after  # it did run alone first
    assert engine.vitals()["peak_batch_size"] == 2  # and then shared the batch
    return alone_events.tokens(first.request_id), events.tokens(first.request_id), end


@pytest.mark.parametrize("after", [1, 5, 20])
def test_a_lone_greedy_request_continues_token_for_token_in_the_batch(make_engine, no_eos, after):
    sampling = SamplingParams(temperature=0.0, logit_bias=no_eos)
    first = request("first", prompt="Xavier rows across the lake", max_tokens=40, sampling=sampling)
    alone, joined, end = _alone_then_joined(make_engine, first, after)
    assert len(alone) == 40
    assert joined == alone
    assert end.finish_reason == "length" and end.usage.completion_tokens == 40


def test_a_seeded_request_draws_the_same_tokens_alone_or_joined(make_engine, no_eos):
    first = _seeded("seeded", 2024, "Yvonne paints the harbour", no_eos)
    alone, joined, _ = _alone_then_joined(make_engine, first, after=8)
    assert len(alone) == 24 and joined == alone


def test_a_request_joined_during_its_prefill_loses_nothing(make_engine, no_eos):
    sampling = SamplingParams(temperature=0.0, logit_bias=no_eos)
    prompt = "Zoe counts the boats in Lisbon. " * 12
    first = request("prefilling", prompt=prompt, max_tokens=16, sampling=sampling)
    # prefill_step_size 16: the first steps feed prompt chunks; the neighbour comes after two.
    alone, joined, end = _alone_then_joined(make_engine, first, 2, prefill_step_size=16)
    assert joined == alone and len(alone) == 16
    assert end.usage.prompt_tokens > 3 * 16  # so it was still prefilling at step 2


def test_a_lone_request_failing_its_step_fails_alone(make_engine):
    engine, events = make_engine(engine_class=Boom, context_length=512)
    engine.submit(request("boom", prompt="Mallory", max_tokens=8))
    failed = events.end("boom")
    assert isinstance(failed, GenerationFailed) and failed.status == 500 and failed.retryable
    engine.submit(request("after", prompt="Oscar", max_tokens=8))
    assert isinstance(events.end("after"), Finished)
    assert engine.vitals()["batch_size"] == 0
