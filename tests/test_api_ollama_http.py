"""HTTP shapes of the Ollama endpoints over uvicorn in-process, spoken to with the ollama client.

The GenerationService is scripted (canned events, as in test_api_http); generation itself
is tested end-to-end in test_e2e_ollama.
"""

from __future__ import annotations

import json

import httpx
import ollama
import pytest

from actors.protocol.messages import (
    Finished,
    GenerationEvent,
    GenerationFailed,
    GenerationRequest,
    TokenDelta,
    Usage,
)
from supervisor.serving.contract import QueueFull
from tests.test_api_http import CALL, ScriptedService, serving

USER = [{"role": "user", "content": "hi"}]


def tool_call(req: GenerationRequest) -> list[GenerationEvent]:
    rid = req.request_id
    return [TokenDelta(rid, "", [1], tool_calls=[CALL]), Finished(rid, "tool_calls", Usage(3, 1))]


def fails_midway(req: GenerationRequest) -> list[GenerationEvent]:
    rid = req.request_id
    return [TokenDelta(rid, "Hel", [1]), GenerationFailed(rid, "the group died", status=503)]


class FullService(ScriptedService):
    async def submit(self, request: GenerationRequest):
        raise QueueFull("256 requests in flight reach the queue limit of 256", retry_after=2.5)


async def test_chat_and_generate_with_the_ollama_client():
    service = ScriptedService()
    async with serving(service) as url:
        client = ollama.AsyncClient(host=url)
        reply = await client.chat(
            model="demo:tiny",
            messages=USER,
            options={"temperature": 0.5, "num_predict": 8, "stop": ["x"]},
            keep_alive="5m",
        )
        text = await client.generate(model="demo:tiny", prompt="hi", system="be brief")
    assert reply.message.role == "assistant" and reply.message.content == "Hello there"
    assert reply.done and reply.done_reason == "stop" and reply.model == "demo:tiny"
    assert (reply.prompt_eval_count, reply.eval_count) == (3, 2)
    assert reply.total_duration >= reply.eval_duration >= 0 and reply.load_duration >= 0
    assert text.response == "Hello there" and text.done
    chat_req, gen_req = service.submitted
    assert chat_req.sampling.temperature == 0.5 and chat_req.max_tokens == 8
    assert chat_req.stop == ["x"] and chat_req.request_id.startswith("ollama-")
    assert [m.role for m in gen_req.messages] == ["system", "user"]
    assert all(s.closed.is_set() for s in service.streams)


async def test_streaming_is_the_default_and_is_ndjson():
    service = ScriptedService()
    async with serving(service) as url, httpx.AsyncClient(base_url=url) as raw:
        async with raw.stream(
            "POST", "/api/chat", json={"model": "demo:tiny", "messages": USER}
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == "application/x-ndjson"
            assert r.headers["x-request-id"].startswith("ollama-")
            assert r.headers["x-served-by"] == "replica-0"
            lines = [json.loads(line) async for line in r.aiter_lines() if line]
        client = ollama.AsyncClient(host=url)
        parts = [p async for p in await client.generate("demo:tiny", "hi", stream=True)]
    assert [line["message"]["content"] for line in lines] == ["Hello", " there", ""]
    assert [line["done"] for line in lines] == [False, False, True]
    assert lines[-1]["done_reason"] == "stop" and lines[-1]["eval_count"] == 2
    assert "".join(p.response for p in parts) == "Hello there" and parts[-1].done


async def test_tool_calls_come_back_with_arguments_as_an_object():
    service = ScriptedService(tool_call)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    async with serving(service) as url:
        client = ollama.AsyncClient(host=url)
        reply = await client.chat(model="demo:tiny", messages=USER, tools=tools)
        parts = [p async for p in await client.chat("demo:tiny", USER, tools=tools, stream=True)]
    [call] = reply.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Oslo"}
    assert reply.done_reason == "stop"
    streamed = [c for p in parts for c in p.message.tool_calls or ()]
    assert [(c.function.name, c.function.arguments) for c in streamed] == [
        ("get_weather", {"city": "Oslo"})
    ]
    assert service.submitted[0].tools[0].name == "get_weather"


async def test_empty_request_loads_without_generating():
    service = ScriptedService()
    async with serving(service) as url:
        client = ollama.AsyncClient(host=url)
        reply = await client.chat(model="demo:tiny", messages=[])
        text = await client.generate(model="demo:tiny:latest")
    assert reply.done and reply.done_reason == "load" and reply.message.content == ""
    assert text.done_reason == "load" and text.model == "demo:tiny:latest"
    assert service.submitted == []


async def test_errors_are_in_ollamas_shape():
    async with serving(ScriptedService()) as url, httpx.AsyncClient(base_url=url) as raw:
        client = ollama.AsyncClient(host=url)
        with pytest.raises(ollama.ResponseError) as info:
            await client.chat(model="nope", messages=USER)
        assert info.value.status_code == 404
        assert (
            info.value.error == "model 'nope' not found; GET /api/tags lists the models served here"
        )
        with pytest.raises(ollama.ResponseError) as info:
            await client.show("nope")
        assert info.value.status_code == 404
        with pytest.raises(ollama.ResponseError) as info:
            await client.pull("llama3")
        assert info.value.status_code == 400 and info.value.error.startswith(
            "pulling models is not"
        )

        bad = await raw.post("/api/chat", json={"model": "demo:tiny", "messages": [{"role": "x"}]})
        assert (bad.status_code, bad.json()) == (
            400,
            {"error": "messages[0].role: invalid value 'x'"},
        )
        bad = await raw.post("/api/generate", json={"prompt": "hi"})
        assert bad.json() == {"error": "model: required field is missing"}
        bad = await raw.post("/api/generate", content=b"{not json")
        assert (bad.status_code, bad.json()) == (400, {"error": "request body is not valid JSON"})
        bad = await raw.post(
            "/api/chat", json={"model": "demo:tiny", "messages": USER, "options": {"top_p": 2}}
        )
        assert bad.json() == {"error": "options.top_p: expected a number <= 1.0"}


async def test_queue_full_is_429_with_retry_after():
    async with serving(FullService()) as url, httpx.AsyncClient(base_url=url) as raw:
        r = await raw.post("/api/chat", json={"model": "demo:tiny", "messages": USER})
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    assert r.json() == {"error": "256 requests in flight reach the queue limit of 256"}


async def test_failure_mid_stream_is_an_error_line():
    service = ScriptedService(fails_midway)
    async with serving(service) as url:
        client = ollama.AsyncClient(host=url)
        got = []
        with pytest.raises(ollama.ResponseError, match="the group died"):
            async for part in await client.chat("demo:tiny", USER, stream=True):
                got.append(part.message.content)
        with pytest.raises(ollama.ResponseError) as info:
            await client.chat("demo:tiny", USER)
    assert got == ["Hel"]
    assert info.value.status_code == 503 and info.value.error == "the group died"
    assert all(s.closed.is_set() for s in service.streams)


async def test_streamed_request_failing_before_its_first_token_gets_its_http_status():
    def too_long(req):
        return [GenerationFailed(req.request_id, "prompt is 9000 tokens; shorten it", status=400)]

    service = ScriptedService(too_long)
    async with serving(service) as url:
        client = ollama.AsyncClient(host=url)
        with pytest.raises(ollama.ResponseError) as info:
            async for _ in await client.generate("demo:tiny", "hi", stream=True):
                pass
    assert info.value.status_code == 400 and info.value.error == "prompt is 9000 tokens; shorten it"
    assert all(s.closed.is_set() for s in service.streams)


async def test_models_version_and_root():
    async with serving(ScriptedService()) as url, httpx.AsyncClient(base_url=url) as raw:
        client = ollama.AsyncClient(host=url)
        listed = await client.list()
        shown = await client.show("demo:tiny")
        running = await client.ps()
        version = (await raw.get("/api/version")).json()
        root = await raw.get("/")
        probe = await raw.head("/")
    assert [m.model for m in listed.models] == ["demo:tiny", "mlx-community/Qwen2.5-0.5B"]
    assert listed.models[0].modified_at.year == 2023 and len(listed.models[0].digest) == 64
    assert shown.details.format == "mlx" and "completion" in shown.capabilities
    assert running.models == []  # the scripted models are not ready
    assert set(version) == {"version"}
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert probe.status_code == 200 and probe.content == b""


async def test_api_key_guards_ollama_routes_in_ollamas_shape():
    async with serving(ScriptedService(), api_key="sk-right") as url:
        async with httpx.AsyncClient(base_url=url) as raw:
            denied = await raw.post("/api/chat", json={"model": "demo:tiny", "messages": USER})
            openai_denied = await raw.get("/v1/models")
            root = await raw.get("/")
            health = await raw.get("/health")
        wrong = ollama.AsyncClient(host=url, headers={"Authorization": "Bearer sk-wrong"})
        with pytest.raises(ollama.ResponseError) as info:
            await wrong.list()
        right = ollama.AsyncClient(host=url, headers={"Authorization": "Bearer sk-right"})
        reply = await right.chat(model="demo:tiny", messages=USER)
    assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
    assert denied.json() == {
        "error": "missing or wrong API key; send the header 'Authorization: Bearer <key>'"
    }
    assert openai_denied.status_code == 401 and openai_denied.json()["error"]["code"] == (
        "invalid_api_key"
    )
    assert info.value.status_code == 401
    assert (root.status_code, health.status_code) == (200, 200)
    assert reply.message.content == "Hello there"
