"""End to end: LangChain's ChatOpenAI against a real `supervisor start` on the demo model.

Forced tool calls and JSON-schema output come from constrained decoding, so even the
random demo model must answer with the declared tool and a valid object.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from tests.conftest import RunningSupervisor, demo_hostfile

MODEL = "demo:tiny"
KEY = "sk-langchain"


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"12C in {city}"


@tool
def get_time(timezone: str) -> str:
    """The time in a timezone."""
    return f"noon in {timezone}"


class Person(BaseModel):
    """A person; bounded so a random model's answer ends within max_tokens."""

    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=150)


@pytest.fixture(scope="module")
def sup():
    with tempfile.TemporaryDirectory() as tmp:
        running = RunningSupervisor(Path(tmp), demo_hostfile(api_key=KEY))
        try:
            running.wait_healthy()
            yield running
        finally:
            running.stop()


@pytest.fixture(scope="module")
def llm(sup) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=sup.url + "/v1",
        api_key=KEY,
        model=MODEL,
        temperature=0,
        max_tokens=96,
        max_retries=0,
        timeout=60,
    )


def test_plain_invoke(llm):
    reply = llm.invoke("hello there")
    assert isinstance(reply.content, str) and reply.content
    assert reply.response_metadata["finish_reason"] in ("stop", "length")


def test_required_tool_choice_calls_the_tool(llm):
    reply = llm.bind_tools([get_weather], tool_choice="required").invoke("weather in Oslo?")
    assert reply.tool_calls, f"no tool call in {reply!r}"
    assert {c["name"] for c in reply.tool_calls} == {"get_weather"}
    assert all(isinstance(c["args"], dict) for c in reply.tool_calls)
    assert not reply.invalid_tool_calls


def test_named_tool_choice_calls_that_tool(llm):
    bound = llm.bind_tools([get_weather, get_time], tool_choice="get_time")
    reply = bound.invoke("what time is it in Oslo?")
    assert [c["name"] for c in reply.tool_calls] == ["get_time"]
    assert isinstance(reply.tool_calls[0]["args"], dict) and not reply.invalid_tool_calls


def test_structured_output_with_a_json_schema(llm):
    person = llm.with_structured_output(Person, method="json_schema").invoke("a person")
    assert isinstance(person, Person)
    assert len(person.name) <= 12 and 0 <= person.age <= 150
