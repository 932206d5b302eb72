"""Real clients on a running supervisor: one way to build each, one chat(), one raw post_chat()."""

from __future__ import annotations

import httpx
import openai

MODEL = "demo:tiny"


def client_for(sup, timeout: float = 60) -> openai.OpenAI:
    """The official openai client on ``sup``; no retries, so a refusal reaches the test as is."""
    return openai.OpenAI(base_url=sup.url + "/v1", api_key="x", max_retries=0, timeout=timeout)


def async_client_for(sup, timeout: float = 120) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sup.url + "/v1", api_key="x", max_retries=0, timeout=timeout)


def chat(client: openai.OpenAI, content: str = "hi", *, system: str | None = None, **kw):
    """One chat completion of ``content`` (after ``system``, if given); ``messages=`` overrides."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": content})
    return client.chat.completions.create(**{"model": MODEL, "messages": messages, **kw})


def post_chat(
    to, content: str = "hi", *, headers: dict | None = None, timeout: float = 60, **fields
) -> httpx.Response:
    """A raw JSON chat completion to ``to``: a running supervisor, or an httpx.Client on one.

    For tests that read the status, headers or error body themselves.
    """
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}
    if isinstance(to, httpx.Client):
        return to.post("/v1/chat/completions", json=body, headers=headers)
    return httpx.post(to.url + "/v1/chat/completions", json=body, headers=headers, timeout=timeout)


async def sse_events(response: httpx.Response):
    """The Server-Sent Events of a streamed httpx response, each a dict of its fields
    (``id``, ``event``, ``data``, ``retry``; ``comment`` for a ``: ...`` line), in order."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if not line:
            if fields:
                yield fields
            fields = {}
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        key = name or "comment"
        fields[key] = fields[key] + "\n" + value if key == "data" and key in fields else value
