"""HTTP shapes of the API, served by uvicorn in-process and spoken to with the real openai client.

The GenerationService here is scripted: it yields canned events. Generation itself is
tested end-to-end elsewhere; this file checks only what goes over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable

import httpx
import openai
import pytest
import uvicorn

from actors.protocol.messages import (
    Finished,
    GenerationEvent,
    GenerationRequest,
    TokenDelta,
    TokenLogprob,
    ToolCall,
    TopLogprob,
    Usage,
)
from api.app import create_app
from supervisor.serving.contract import ModelInfo

DEADLINE = 5.0
USER = [{"role": "user", "content": "hi"}]
CALL = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Oslo"}')


class ScriptedStream:
    """Yields its events; with ``hang`` it then waits forever, like a long generation."""

    def __init__(self, events: list[GenerationEvent], served_by: str, hang: bool) -> None:
        self.events = events
        self.served_by = served_by
        self.hang = hang
        self.closed = asyncio.Event()

    async def _events(self) -> AsyncIterator[GenerationEvent]:
        for event in self.events:
            yield event
        if self.hang:
            await asyncio.Event().wait()

    def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        return self._events()

    async def aclose(self) -> None:
        self.closed.set()


def hello(req: GenerationRequest) -> list[GenerationEvent]:
    rid = req.request_id
    lps = None
    if req.logprobs:
        lps = [
            TokenLogprob(
                1, "Hello", -0.1, [TopLogprob(1, "Hello", -0.1), TopLogprob(2, "Hi", -2.5)]
            )
        ]
    return [
        TokenDelta(rid, "Hello", [1], logprobs=lps),
        TokenDelta(rid, " there", [2], logprobs=lps and [TokenLogprob(2, " there", -0.2)]),
        Finished(rid, "stop", Usage(prompt_tokens=3, completion_tokens=2)),
    ]


class ScriptedService:
    def __init__(self, script: Callable[[GenerationRequest], list] = hello, hang=False) -> None:
        self.script = script
        self.hang = hang
        self.submitted: list[GenerationRequest] = []
        self.streams: list[ScriptedStream] = []
        self.submitted_event = asyncio.Event()

    def list_models(self) -> list[ModelInfo]:
        return [ModelInfo("demo:tiny", 1700000000), ModelInfo("mlx-community/Qwen2.5-0.5B", 1)]

    async def submit(self, request: GenerationRequest) -> ScriptedStream:
        self.submitted.append(request)
        self.submitted_event.set()
        stream = ScriptedStream(self.script(request), f"replica-{len(self.streams)}", self.hang)
        self.streams.append(stream)
        return stream

    def draining(self) -> bool:
        return False


class PromptServer(uvicorn.Server):
    """uvicorn's Server without its two 0.1 s waits at exit, which ~40 tests here each paid.

    uvicorn polls ``should_exit`` every 0.1 s and then sleeps 0.1 s before waiting for
    connections and tasks. Here exit is an event, and shutdown waits for the same things
    (open connections, then running tasks, cancelled after ``timeout_graceful_shutdown``)
    by polling often instead.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.exit = asyncio.Event()

    async def main_loop(self) -> None:
        await self.exit.wait()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state = self.server_state
        for server in self.servers:
            server.close()
        for connection in list(state.connections):
            connection.shutdown()
        try:
            async with asyncio.timeout(self.config.timeout_graceful_shutdown):
                while state.connections or state.tasks:
                    await asyncio.sleep(0.005)
                for server in self.servers:
                    await server.wait_closed()
        except TimeoutError:
            for task in state.tasks:
                task.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
        await self.lifespan.shutdown()


@contextlib.asynccontextmanager
async def serving(service: ScriptedService, **options) -> AsyncIterator[str]:
    options.setdefault("status", lambda: {"nodes": 1})
    options.setdefault("health", lambda: (200, {"status": "ok"}))
    app = create_app(service, **options)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # clients queue in the backlog until uvicorn accepts: no start-up wait
    server = PromptServer(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        server.exit.set()
        await task
        sock.close()


@contextlib.asynccontextmanager
async def clients(service: ScriptedService, api_key: str | None = None, key: str = "sk-test"):
    async with serving(service, api_key=api_key) as url:
        async with (
            openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as client,
            httpx.AsyncClient(base_url=url) as raw,
        ):
            yield client, raw


async def test_models():
    async with clients(ScriptedService()) as (client, _):
        assert [m.id for m in (await client.models.list()).data] == [
            "demo:tiny",
            "mlx-community/Qwen2.5-0.5B",
        ]
        assert (await client.models.retrieve("demo:tiny")).created == 1700000000
        assert (await client.models.retrieve("mlx-community/Qwen2.5-0.5B")).object == "model"
        with pytest.raises(openai.NotFoundError) as info:
            await client.models.retrieve("nope")
        assert info.value.body["code"] == "model_not_found"


async def test_chat_completion_and_headers():
    service = ScriptedService()
    async with clients(service) as (client, _):
        raw = await client.chat.completions.with_raw_response.create(
            model="demo:tiny", messages=USER, temperature=0.5, max_tokens=8, stop="x"
        )
        reply = raw.parse()
        assert raw.status_code == 200
        assert raw.headers["x-served-by"] == "replica-0"
        assert raw.headers["x-request-id"] == reply.id and reply.id.startswith("chatcmpl-")
    assert reply.object == "chat.completion" and reply.model == "demo:tiny"
    assert reply.choices[0].message.content == "Hello there"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "stop" and reply.choices[0].logprobs is None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (3, 2)
    [req] = service.submitted
    assert req.request_id == reply.id and req.sampling.temperature == 0.5
    assert req.max_tokens == 8 and req.stop == ["x"]
    assert service.streams[0].closed.is_set()


async def test_completion():
    async with clients(ScriptedService()) as (client, _):
        reply = await client.completions.create(model="demo:tiny", prompt="Say hi")
    assert reply.id.startswith("cmpl-") and reply.object == "text_completion"
    assert reply.choices[0].text == "Hello there" and reply.choices[0].finish_reason == "stop"
    assert reply.usage.total_tokens == 5


async def test_chat_stream_with_usage():
    service = ScriptedService()
    async with clients(service) as (client, _):
        stream = await client.chat.completions.create(
            model="demo:tiny", messages=USER, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 5
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert service.streams[0].closed.is_set()


async def test_completion_stream():
    async with clients(ScriptedService()) as (client, _):
        stream = await client.completions.create(model="demo:tiny", prompt="p", stream=True)
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks) == "Hello there"
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_n2_gathers_choices_with_distinct_ids_and_seeds():
    service = ScriptedService()
    async with clients(service) as (client, _):
        raw = await client.chat.completions.with_raw_response.create(
            model="demo:tiny", messages=USER, n=2, seed=5
        )
        reply = raw.parse()
        assert raw.headers["x-served-by"] == "replica-0, replica-1"
        stream = await client.chat.completions.create(
            model="demo:tiny", messages=USER, n=2, stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert [c.index for c in reply.choices] == [0, 1]
    assert [c.message.content for c in reply.choices] == ["Hello there"] * 2
    assert reply.usage.completion_tokens == 4 and reply.usage.prompt_tokens == 3
    assert [r.request_id for r in service.submitted[:2]] == [f"{reply.id}-0", f"{reply.id}-1"]
    assert [r.sampling.seed for r in service.submitted[:2]] == [5, 6]
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert "".join(c.delta.content or "" for c in mine) == "Hello there"
        assert mine[-1].finish_reason == "stop"


async def test_logprob_shapes():
    async with clients(ScriptedService()) as (client, _):
        chat = await client.chat.completions.create(
            model="demo:tiny", messages=USER, logprobs=True, top_logprobs=2
        )
        legacy = await client.completions.create(model="demo:tiny", prompt="p", logprobs=1)
    content = chat.choices[0].logprobs.content
    assert [t.token for t in content] == ["Hello", " there"]
    assert content[0].bytes == list(b"Hello")
    assert [(t.token, t.logprob) for t in content[0].top_logprobs] == [
        ("Hello", -0.1),
        ("Hi", -2.5),
    ]
    lp = legacy.choices[0].logprobs
    assert lp.tokens == ["Hello", " there"] and lp.token_logprobs == [-0.1, -0.2]
    assert lp.text_offset == [0, 5] and lp.top_logprobs[0] == {"Hello": -0.1}


def calls_weather(req: GenerationRequest) -> list[GenerationEvent]:
    return [
        TokenDelta(req.request_id, "", [7], tool_calls=[CALL]),
        Finished(req.request_id, "tool_calls", Usage(3, 1), tool_calls=[CALL]),
    ]


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


async def test_tool_calls():
    service = ScriptedService(calls_weather)
    async with clients(service) as (client, _):
        reply = await client.chat.completions.create(model="demo:tiny", messages=USER, tools=TOOLS)
        stream = await client.chat.completions.create(
            model="demo:tiny", messages=USER, tools=TOOLS, stream=True
        )
        chunks = [chunk async for chunk in stream]
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert (call.id, call.type, call.function.name) == ("call_1", "function", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    deltas = [tc for c in chunks for tc in c.choices[0].delta.tool_calls or []]
    assert [(d.index, d.id, d.function.name) for d in deltas] == [(0, "call_1", "get_weather")]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert service.submitted[0].tools[0].name == "get_weather"


async def test_health_and_status_pass_through():
    async def status() -> dict:
        return {"groups": [{"id": "g0", "state": "ready"}]}

    options = {"status": status, "health": lambda: (503, {"status": "starting"})}
    async with serving(ScriptedService(), **options) as url:
        async with httpx.AsyncClient(base_url=url) as raw:
            health = await raw.get("/health")
            cluster = await raw.get("/api/cluster/status")
    assert (health.status_code, health.json()) == (503, {"status": "starting"})
    assert cluster.json() == {"groups": [{"id": "g0", "state": "ready"}], "warnings": []}


async def test_the_dashboard_answers_get_and_head_with_its_security_headers():
    async with serving(ScriptedService()) as url, httpx.AsyncClient(base_url=url) as http:
        page = await http.get("/dashboard")
        probe = await http.head("/dashboard")
        assert page.status_code == probe.status_code == 200
        assert "<html" in page.text.lower() and probe.content == b""
        for response in (page, probe):
            assert response.headers["content-security-policy"].startswith("default-src 'self'")
            assert response.headers["content-type"].startswith("text/html")
