"""End to end: a real `supervisor start` on the demo model, the official ollama client."""

from __future__ import annotations

import json

import httpx
import jsonschema
import ollama
import pytest

MODEL = "demo:tiny"
GREEDY = {"temperature": 0, "num_predict": 16}
PERSON = {
    "type": "object",
    # Bounded, so that a random model's object ends within num_predict.
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def client(sup):
    return ollama.Client(host=sup.url, timeout=60)


def say(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def test_chat_is_deterministic_and_streaming_matches(client):
    a = client.chat(model=MODEL, messages=say("tell me a story"), options=GREEDY)
    b = client.chat(model=MODEL, messages=say("tell me a story"), options=GREEDY)
    assert a.message.role == "assistant" and a.message.content
    assert a.message.content == b.message.content
    assert a.done and a.done_reason in ("stop", "length") and a.model == MODEL
    assert a.prompt_eval_count > 0 and 0 < a.eval_count <= 16
    assert a.total_duration >= a.prompt_eval_duration + a.eval_duration > 0
    parts = list(
        client.chat(model=MODEL, messages=say("tell me a story"), options=GREEDY, stream=True)
    )
    assert "".join(p.message.content for p in parts) == a.message.content
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert parts[-1].eval_count == a.eval_count and parts[-1].done_reason == a.done_reason


def test_num_predict_cuts_with_length(client):
    reply = client.generate(model=MODEL, prompt="The cat sat on", options={"num_predict": 5})
    assert reply.done_reason == "length" and reply.eval_count == 5 and reply.response


def test_generate_stream_raw_and_templated(client):
    templated = client.generate(model=MODEL, prompt="count with me", options=GREEDY)
    raw = client.generate(model=MODEL, prompt="count with me", raw=True, options=GREEDY)
    assert templated.prompt_eval_count > raw.prompt_eval_count  # the chat template's tokens
    parts = list(client.generate(model=MODEL, prompt="count with me", options=GREEDY, stream=True))
    assert "".join(p.response for p in parts) == templated.response
    assert parts[-1].done and parts[-1].eval_count == templated.eval_count


def test_stop_option(client):
    full = client.chat(model=MODEL, messages=say("count with me"), options=GREEDY).message.content
    assert len(full) > 6, "the demo model should say something"
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    reply = client.chat(
        model=MODEL, messages=say("count with me"), options={**GREEDY, "stop": [stop]}
    )
    assert reply.message.content == full[: full.index(stop)] and reply.done_reason == "stop"


def test_seeded_sampling_reproduces(client):
    options = {"temperature": 1.0, "seed": 42, "num_predict": 12}
    a = client.chat(model=MODEL, messages=say("hi"), options=options).message.content
    b = client.chat(model=MODEL, messages=say("hi"), options=options).message.content
    assert a == b


def test_list_show_ps_and_version(sup, client):
    [listed] = client.list().models
    assert listed.model == MODEL and len(listed.digest) == 64
    shown = client.show(MODEL)
    context = shown.modelinfo[f"{shown.modelinfo['general.architecture']}.context_length"]
    assert context > 0 and shown.parameters == f"num_ctx {context}"
    [loaded] = client.ps().models
    assert loaded.model == MODEL and loaded.context_length == context
    version = httpx.get(sup.url + "/api/version").json()["version"]
    assert all(part.isdigit() for part in version.split("."))


def test_unknown_model_and_images_are_refused(client):
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="llama3", messages=say("hi"))
    assert info.value.status_code == 404 and "llama3" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model=MODEL, prompt="what is this?", images=[b"\x89PNG fake"])
    assert info.value.status_code == 400 and info.value.error.startswith("images: ")


def test_a_prompt_longer_than_the_context_is_400_streamed_too(client):
    with pytest.raises(ollama.ResponseError) as info:
        for _ in client.generate(MODEL, "river " * 5000, stream=True):
            pass
    assert info.value.status_code == 400 and "the model's context is 4096" in info.value.error


def test_format_json_gives_a_json_object(client):
    reply = client.chat(
        model=MODEL,
        messages=say("describe a cat as JSON"),
        format="json",
        options={"num_predict": 256, "seed": 1},
    )
    assert isinstance(json.loads(reply.message.content), dict)
    text = client.generate(
        model=MODEL, prompt="a cat as JSON", format="json", options={"num_predict": 256, "seed": 1}
    )
    assert isinstance(json.loads(text.response), dict)


def test_format_schema_gives_a_valid_object(client):
    reply = client.chat(
        model=MODEL,
        messages=say("a person as JSON"),
        format=PERSON,
        options={"num_predict": 64, "temperature": 0},
    )
    jsonschema.validate(json.loads(reply.message.content), PERSON)
    parts = list(
        client.chat(
            model=MODEL,
            messages=say("a person"),
            format=PERSON,
            stream=True,
            options={"num_predict": 64},
        )
    )
    jsonschema.validate(json.loads("".join(p.message.content for p in parts)), PERSON)
