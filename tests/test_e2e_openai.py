"""End to end: a real `supervisor start` on the demo model, the official openai client."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import openai
import pytest

from tests.clients import async_client_for, chat, client_for
from tests.conftest import http_json

MODEL = "demo:tiny"


@pytest.fixture(scope="module")
def client(sup):
    return client_for(sup)


def test_models_list_and_get(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_chat_completion(client):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hello there"}],
        max_tokens=12,
        temperature=0,
    )
    assert raw.headers["x-served-by"] == "main"
    reply = raw.parse()
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 0
    assert 0 < reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_text_completion(client):
    reply = client.completions.create(
        model=MODEL, prompt="The cat sat on", max_tokens=8, temperature=0
    )
    assert reply.object == "text_completion"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 8


def test_greedy_is_deterministic_and_streaming_matches(client):
    a = chat(client, "tell me a story", temperature=0, max_tokens=20)
    b = chat(client, "tell me a story", temperature=0, max_tokens=20)
    assert a.choices[0].message.content == b.choices[0].message.content
    chunks = list(
        chat(
            client,
            "tell me a story",
            temperature=0,
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == a.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == [a.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == a.usage.completion_tokens


def test_stop_string_is_not_emitted(client):
    full = chat(client, "count with me", temperature=0, max_tokens=24).choices[0].message.content
    assert len(full) > 6, "the demo model should say something"
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = full.index(stop)
    reply = chat(client, "count with me", temperature=0, max_tokens=24, stop=[stop, "@@never@@"])
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.content == full[:cut]


def test_n_2_gives_two_independent_choices(client):
    def ask():
        return chat(client, n=2, max_tokens=10, temperature=1.0, seed=7)

    reply = ask()
    assert [c.index for c in reply.choices] == [0, 1]
    again = ask()
    assert [c.message.content for c in again.choices] == [c.message.content for c in reply.choices]
    assert reply.choices[0].message.content != reply.choices[1].message.content


def test_logprobs(client):
    reply = chat(client, "hello", temperature=0, max_tokens=6, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0
        assert len(item.top_logprobs) == 3
        # greedy: the chosen token is the most likely one
        assert item.top_logprobs[0].logprob == pytest.approx(item.logprob, abs=1e-4)


def test_eight_concurrent_streams_are_batched(sup):
    aclient = async_client_for(sup)

    async def one(i: int) -> tuple[str, str]:
        stream = await aclient.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"stream number {i}"}],
            # long enough that all eight overlap even on a loaded 2-core machine
            max_tokens=400,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        text, finish = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return text, finish

    async def all_of_them():
        return await asyncio.gather(*(one(i) for i in range(8)))

    results = asyncio.run(all_of_them())
    assert [finish for _, finish in results] == ["length"] * 8
    group = next(g for g in sup.status()["groups"] if g["name"] == "main")
    assert group["peak_batch_size"] > 1


@pytest.mark.parametrize(
    "body, field",
    [
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": 9},
            "temperature",
        ),
        ({"model": MODEL}, "messages"),
        ({"model": MODEL, "messages": "not a list"}, "messages"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": "many"},
            "max_tokens",
        ),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 0}, "n"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(sup, body, field):
    request = urllib.request.Request(
        sup.url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    try:
        urllib.request.urlopen(request, timeout=10)
        raise AssertionError("expected a 400")
    except urllib.error.HTTPError as e:
        assert e.code == 400
        error = json.loads(e.read())["error"]
    assert field in error["message"]
    assert "\n" not in error["message"]
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_longer_than_the_context_is_400_streamed_or_not(client, stream):
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, "river " * 5000, temperature=0, max_tokens=4, stream=stream)
    message = info.value.body["message"]
    assert "the model's context is 4096" in message and "\n" not in message


def test_invalid_json_is_400(sup):
    request = urllib.request.Request(
        sup.url + "/v1/chat/completions",
        data=b"{nope",
        headers={"content-type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 400


def test_unknown_model_is_404_in_openai_shape(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert "nope" in info.value.message


def test_status_shows_actors_and_groups(sup):
    status = sup.status()
    kinds = {a["kind"] for a in status["actors"]}
    assert kinds == {"generation", "memory", "sync"}
    gen = sup.actor("generation")
    assert gen["pid"] and gen["state"] == "running" and gen["last_heartbeat_age"] < 3
    assert status["groups"][0]["state"] == "ready"
    assert "queue_depth" in status
    code, health = http_json(sup.url + "/health")
    assert code == 200 and health["status"] == "ok"


def test_stream_interval_from_the_hostfile_reaches_the_engine(start_supervisor):
    # At 1 s, tokens after the first come at most once a second: a stream of 40 tokens
    # (well under a second on the tiny model) arrives in a few chunks, not 40.
    from tests.conftest import demo_hostfile

    sup = start_supervisor(demo_hostfile(stream_interval_ms=1000))
    sup.wait_healthy()
    client = client_for(sup)
    started = time.monotonic()
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count the boats"}],
        max_tokens=40,
        temperature=0,
        logprobs=True,
        extra_body={"ignore_eos": True},
        stream=True,
    )
    chunks = [c for c in stream if c.choices and c.choices[0].logprobs]
    seconds = time.monotonic() - started
    tokens = sum(len(c.choices[0].logprobs.content) for c in chunks)
    assert tokens == 40
    assert len(chunks) <= 2 + seconds  # the first token, one chunk per second, the end
