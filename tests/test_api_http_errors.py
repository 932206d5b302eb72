"""HTTP errors, authentication and client disconnects, over uvicorn with the real openai client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import openai
import pytest

from actors.protocol.messages import (
    GenerationEvent,
    GenerationFailed,
    GenerationRequest,
    TokenDelta,
)
from supervisor.serving.contract import ModelNotFound, QueueFull, Unavailable
from tests.test_api_http import DEADLINE, USER, ScriptedService, clients, hello, serving


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        (
            {"model": "m", "messages": USER, "temperature": 3},
            "temperature: expected a number <= 2.0",
            "temperature",
        ),
        ({"model": "m"}, "messages: required field is missing", "messages"),
        ({"model": "m", "messages": "hi"}, "messages: expected an array, got a string", "messages"),
        ({"model": "m", "messages": USER, "n": 20}, "n: expected an integer <= 16", "n"),
        (
            {
                "model": "m",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:"}}],
                    }
                ],
            },
            "messages[0].content[0]: 'image_url' parts are not supported; send text parts only",
            "messages[0].content[0]",
        ),
    ],
)
async def test_bad_requests_name_the_field(body, message, param):
    service = ScriptedService()
    async with clients(service) as (client, _):
        with pytest.raises(openai.BadRequestError) as info:
            await client.post("/chat/completions", body=body, cast_to=object)
    assert info.value.status_code == 400
    assert info.value.body["message"] == message and info.value.body["param"] == param
    assert info.value.body["type"] == "invalid_request_error"
    assert service.submitted == []


async def test_bad_temperature_through_the_sdk():
    async with clients(ScriptedService()) as (client, _):
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="m", messages=USER, temperature=2.5)
    assert info.value.body["param"] == "temperature"


async def test_token_array_prompt_is_refused():
    async with clients(ScriptedService()) as (client, _):
        with pytest.raises(openai.BadRequestError) as info:
            await client.completions.create(model="m", prompt=[1, 2, 3])
    assert "token-id arrays" in info.value.body["message"]


async def test_raw_http_errors():
    async with clients(ScriptedService()) as (_, raw):
        bad_json = await raw.post(
            "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
        )
        unknown = await raw.get("/v1/nothing")
        wrong_method = await raw.get("/v1/chat/completions")
        schema = await raw.get("/schema/openapi.json")
    assert bad_json.status_code == 400
    assert bad_json.json()["error"]["message"] == "request body is not valid JSON"
    assert unknown.status_code == 404 and "error" in unknown.json()
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    assert "ChatCompletionRequest" in schema.json()["components"]["schemas"]


def refuse(error: Exception) -> Callable[[GenerationRequest], list]:
    def script(_: GenerationRequest) -> list:
        raise error

    return script


async def test_unknown_model_is_404():
    service = ScriptedService(refuse(ModelNotFound("model 'x' is not served", param="model")))
    async with clients(service) as (client, _):
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model="x", messages=USER, stream=True)
    assert info.value.body == {
        "message": "model 'x' is not served",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [
        (QueueFull("queue is full", retry_after=1.2), 429, "2"),
        (Unavailable("no replica of demo:tiny is up"), 503, "1"),
    ],
)
async def test_refusals_carry_retry_after(error, status, retry_after):
    async with clients(ScriptedService(refuse(error))) as (client, _):
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="demo:tiny", messages=USER)
    assert info.value.status_code == status
    assert info.value.response.headers["retry-after"] == retry_after
    assert info.value.response.headers["x-request-id"].startswith("chatcmpl-")
    assert info.value.body["message"] == error.message


async def test_unexpected_error_is_a_clean_500():
    async with clients(ScriptedService(refuse(RuntimeError("secret internals")))) as (_, raw):
        reply = await raw.post("/v1/chat/completions", json={"model": "m", "messages": USER})
    assert reply.status_code == 500
    assert reply.json()["error"]["type"] == "server_error"
    assert "secret" not in reply.text and "Traceback" not in reply.text


def fails_midway(req: GenerationRequest) -> list[GenerationEvent]:
    return [
        TokenDelta(req.request_id, "Hel", [1]),
        GenerationFailed(req.request_id, "replica lost and none left", status=503),
    ]


async def test_failure_mid_stream_is_an_error_event():
    service = ScriptedService(fails_midway)
    async with clients(service) as (client, raw):
        stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
        seen = []
        with pytest.raises(openai.APIError) as info:
            async for chunk in stream:
                seen.append(chunk)
        streamed = await raw.post(
            "/v1/chat/completions", json={"model": "m", "messages": USER, "stream": True}
        )
    assert "replica lost" in info.value.message and seen[1].choices[0].delta.content == "Hel"
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.headers["x-request-id"].startswith("chatcmpl-")
    assert streamed.text.rstrip().endswith("data: [DONE]")


def too_long(req: GenerationRequest) -> list[GenerationEvent]:
    message = "prompt is 9000 tokens but the model's context is 4096; shorten the prompt"
    return [GenerationFailed(req.request_id, message, status=400)]


async def test_streamed_request_failing_before_its_first_token_gets_its_http_status():
    service = ScriptedService(too_long)
    async with clients(service) as (client, raw):
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="m", messages=USER, stream=True)
        streamed = await raw.post(
            "/v1/completions", json={"model": "m", "prompt": "hi", "stream": True, "n": 2}
        )
    assert info.value.status_code == 400 and "shorten the prompt" in info.value.body["message"]
    assert streamed.status_code == 400
    assert streamed.headers["content-type"].startswith("application/json")
    assert "shorten the prompt" in streamed.json()["error"]["message"]
    assert all(s.closed.is_set() for s in service.streams)


async def post_then_hang_up(body: dict) -> ScriptedService:
    """POST a chat completion to a service that never answers; hang up once it is submitted."""
    service = ScriptedService(lambda r: [], hang=True)
    async with serving(service) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        data = json.dumps(body).encode()
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(data), data)
        )
        await writer.drain()
        await asyncio.wait_for(service.submitted_event.wait(), DEADLINE)
        writer.close()
        await writer.wait_closed()
        for stream in service.streams:
            await asyncio.wait_for(stream.closed.wait(), DEADLINE)
    return service


async def test_client_disconnect_before_the_first_streamed_token_closes_the_generation():
    service = await post_then_hang_up({"model": "m", "messages": USER, "stream": True})
    assert len(service.streams) == 1


async def test_failure_before_answer_is_an_http_error():
    async with clients(ScriptedService(fails_midway)) as (client, _):
        with pytest.raises(openai.InternalServerError) as info:
            await client.chat.completions.create(model="m", messages=USER)
    assert info.value.status_code == 503 and info.value.body["message"].startswith("replica lost")


async def test_api_key():
    service = ScriptedService()
    async with serving(service, api_key="sk-right") as url:
        async with httpx.AsyncClient(base_url=url) as raw:
            assert (await raw.get("/health")).status_code == 200
            assert (await raw.get("/api/cluster/status")).status_code == 401
            ok = await raw.get("/api/cluster/status", headers={"Authorization": "Bearer sk-right"})
            assert ok.json() == {"nodes": 1, "warnings": []}
        async with openai.AsyncOpenAI(
            base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0
        ) as client:
            with pytest.raises(openai.AuthenticationError) as info:
                await client.chat.completions.create(model="m", messages=USER)
            assert info.value.body["code"] == "invalid_api_key"
        async with openai.AsyncOpenAI(
            base_url=f"{url}/v1", api_key="sk-right", max_retries=0
        ) as client:
            assert (await client.models.list()).data
    assert service.submitted == []


async def test_client_disconnect_mid_stream_closes_the_generation():
    service = ScriptedService(lambda r: [TokenDelta(r.request_id, "Hel", [1])], hang=True)
    async with clients(service) as (client, _):
        stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
        async for chunk in stream:
            if chunk.choices[0].delta.content:
                break
        await stream.close()
        await asyncio.wait_for(service.streams[0].closed.wait(), DEADLINE)


async def test_client_disconnect_while_waiting_closes_the_generation():
    await post_then_hang_up({"model": "m", "messages": USER, "n": 2})


async def test_a_refused_choice_closes_the_admitted_ones():
    def second_refused(req: GenerationRequest) -> list:
        if req.request_id.endswith("-1"):
            raise QueueFull("queue is full", retry_after=3)
        return hello(req)

    service = ScriptedService(second_refused)
    async with clients(service) as (client, _):
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="m", messages=USER, n=2)
    assert service.streams[0].closed.is_set()
