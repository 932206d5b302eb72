"""End to end: tools and structured output through a real `supervisor start`, the openai client.

The demo model is random and sampled at temperature 1: every valid call and document here
is valid because the server enforced it.
"""

from __future__ import annotations

import json

import jsonschema
import msgspec
import openai
import pytest
from pydantic import BaseModel, Field

from tests import sample_tools
from tests.clients import chat, client_for

MODEL = "demo:tiny"
SEEDS = range(3)
# The engine tests' tools, as an OpenAI client sends them.
WEATHER, ADD = (
    {"type": "function", "function": msgspec.to_builtins(spec)}
    for spec in (sample_tools.WEATHER, sample_tools.ADD)
)
TOOLS = [WEATHER, ADD]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Oslo, and what is 2 + 3?"}]


class Person(BaseModel):
    name: str = Field(max_length=8)
    age: int = Field(ge=0, le=120)
    member: bool


@pytest.fixture(scope="module")
def client(sup):
    return client_for(sup)


def ask(client, **kw):
    """The tools question, sampled, with room for both calls."""
    return chat(client, **{"messages": ASK, "temperature": 1.0, "max_tokens": 300, **kw})


def assert_valid_calls(calls, names: set[str]) -> None:
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    assert len({c.id for c in calls}) == len(calls)


def test_required_tool_choice_calls_declared_functions_with_valid_arguments(client):
    for seed in SEEDS:
        choice = ask(client, tools=TOOLS, tool_choice="required", seed=seed).choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        assert_valid_calls(choice.message.tool_calls, {"get_weather", "add"})


def test_named_tool_choice_calls_that_function_once(client):
    named = {"type": "function", "function": {"name": "get_weather"}}
    for seed in SEEDS:
        choice = ask(client, tools=TOOLS, tool_choice=named, seed=seed).choices[0]
        assert choice.finish_reason == "tool_calls"
        assert_valid_calls(choice.message.tool_calls, {"get_weather"})
        assert len(choice.message.tool_calls) == 1


def test_streamed_tool_calls_arrive_as_indexed_deltas(client):
    stream = ask(client, tools=TOOLS, tool_choice="required", seed=4, stream=True)
    calls: dict[int, dict] = {}
    reasons, content = [], ""
    for chunk in stream:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for delta in choice.delta.tool_calls or ():
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
    assert reasons == ["tool_calls"]
    assert content == ""  # the call blocks never leak into content
    assert sorted(calls) == list(range(len(calls))) and calls
    for call in calls.values():
        assert call["id"].startswith("call_")
        jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])


def test_a_conversation_with_a_call_and_its_result_continues(client):
    first = ask(client, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "add"}})
    message = first.choices[0].message
    (call,) = message.tool_calls
    a, b = (json.loads(call.function.arguments)[k] for k in ("a", "b"))
    history = [
        *ASK,
        message.model_dump(exclude_none=True),  # the assistant turn exactly as received
        {"role": "tool", "tool_call_id": call.id, "content": str(a + b)},
    ]
    reply = ask(client, messages=history, tools=TOOLS, max_tokens=16, seed=1)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > first.usage.prompt_tokens  # the call and result rendered
    again = ask(client, messages=history, tools=TOOLS, tool_choice="required", seed=2)
    assert_valid_calls(again.choices[0].message.tool_calls, {"get_weather", "add"})


def test_json_schema_parses_into_a_pydantic_model(client):
    for seed in SEEDS:
        reply = client.chat.completions.parse(
            model=MODEL,
            messages=[{"role": "user", "content": "Describe a person."}],
            response_format=Person,
            temperature=1.0,
            max_tokens=300,
            seed=seed,
        )
        choice = reply.choices[0]
        assert choice.finish_reason == "stop"
        assert isinstance(choice.message.parsed, Person)


def test_json_object_returns_a_parseable_object(client):
    for seed in range(6):
        reply = ask(client, response_format={"type": "json_object"}, seed=seed)
        choice = reply.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        assert isinstance(json.loads(choice.message.content), dict)


def test_n_choices_each_follow_the_schema(client):
    schema = Person.model_json_schema()
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    reply = ask(client, response_format=fmt, n=2, seed=7)
    assert len(reply.choices) == 2
    for choice in reply.choices:
        assert choice.finish_reason == "stop"
        Person.model_validate_json(choice.message.content)


def test_an_invalid_schema_is_a_400_naming_the_problem(client):
    bad = {"type": "object", "properties": {"age": {"type": "nonsense"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "bad", "schema": bad}}
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, response_format=fmt)
    assert "response_format schema" in caught.value.message
    assert "nonsense" in caught.value.message


def test_tool_choice_none_answers_in_text(client):
    choice = ask(client, tools=TOOLS, tool_choice="none", max_tokens=12, seed=3).choices[0]
    assert choice.message.tool_calls is None
    assert choice.finish_reason in ("stop", "length")
