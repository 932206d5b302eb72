"""OpenAI request bodies -> internal GenerationRequests: pure functions, no HTTP."""

from __future__ import annotations

import json

import msgspec
import pytest

from actors.protocol.messages import SamplingParams, ToolCall
from api.openai.protocol import ChatCompletionRequest, CompletionRequest
from api.openai.translate import (
    chat_to_generation,
    completion_to_generation,
)
from supervisor.serving.contract import BadRequest

USER = {"role": "user", "content": "hi"}


def chat(**fields) -> ChatCompletionRequest:
    return msgspec.convert({"model": "m", "messages": [USER], **fields}, ChatCompletionRequest)


def completion(**fields) -> CompletionRequest:
    return msgspec.convert({"model": "m", "prompt": "once", **fields}, CompletionRequest)


def invalid(type_, body: dict) -> str:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert(body, type_)
    return str(info.value)


# --------------------------------------------------------------------------- #
# Request validation (Meta constraints)
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        ("temperature", 2.5, "$.temperature"),
        ("temperature", -0.1, "$.temperature"),
        ("top_p", 1.5, "$.top_p"),
        ("min_p", -1, "$.min_p"),
        ("presence_penalty", 3, "$.presence_penalty"),
        ("frequency_penalty", -2.1, "$.frequency_penalty"),
        ("n", 0, "$.n"),
        ("n", 17, "$.n"),
        ("top_logprobs", 21, "$.top_logprobs"),
        ("max_tokens", 0, "$.max_tokens"),
        ("max_completion_tokens", -5, "$.max_completion_tokens"),
        ("stop", ["a", "b", "c", "d", "e"], "$.stop"),
        ("logit_bias", {"5": 101}, "$.logit_bias"),
        ("logit_bias", {"hello": 1}, "$.logit_bias"),
        ("logit_bias", {"²": 1}, "$.logit_bias"),  # str.isdigit() says yes; int() says no
        ("logit_bias", {"1" * 5000: 1}, "$.logit_bias"),  # past int()'s 4,300-digit limit
        ("logit_bias", {str(i): 1 for i in range(301)}, "$.logit_bias"),
        ("seed", -1, "$.seed"),
        ("seed", 2**63, "$.seed"),
        ("stop", ["x" * 257], "$.stop"),
        ("max_tokens", 2**64, "$.max_tokens"),
        ("repetition_penalty", 0, "$.repetition_penalty"),
        ("response_format", {"type": "xml"}, "$.response_format.type"),
        ("tool_choice", "sometimes", "$.tool_choice"),
    ],
)
def test_chat_limits_name_the_field(field, value, where):
    assert where in invalid(ChatCompletionRequest, {"model": "m", "messages": [USER], field: value})


def test_completion_logprobs_is_an_int_up_to_5():
    assert "$.logprobs" in invalid(CompletionRequest, {"model": "m", "prompt": "x", "logprobs": 6})
    assert completion(logprobs=5).logprobs == 5


def test_unknown_fields_and_nulls_are_accepted():
    body = chat(
        store=True,
        metadata={"a": 1},
        service_tier="auto",
        reasoning_effort="low",
        frobnicate=3,
        temperature=None,
        n=None,
        stop=None,
        tools=None,
    )
    [req] = chat_to_generation(body, "r")
    assert req.sampling.temperature == 1.0
    assert req.stop == []


def test_role_must_be_known():
    msg = invalid(ChatCompletionRequest, {"model": "m", "messages": [{"role": "robot"}]})
    assert "$.messages[0].role" in msg


# --------------------------------------------------------------------------- #
# Chat -> GenerationRequest
# --------------------------------------------------------------------------- #


def test_chat_basic_fields():
    [req] = chat_to_generation(
        chat(
            temperature=0.2,
            top_p=0.9,
            top_k=40,
            min_p=0.05,
            seed=7,
            stop="END",
            repetition_penalty=1.1,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            logit_bias={"42": -100},
            max_tokens=10,
            user="u1",
        ),
        "chatcmpl-1",
    )
    assert req.request_id == "chatcmpl-1"
    assert req.model == "m"
    assert req.messages[0].role == "user" and req.messages[0].content == "hi"
    assert req.prompt is None
    assert req.max_tokens == 10
    s = req.sampling
    assert (s.temperature, s.top_p, s.top_k, s.min_p, s.seed) == (0.2, 0.9, 40, 0.05, 7)
    assert (s.repetition_penalty, s.presence_penalty, s.frequency_penalty) == (1.1, 0.5, -0.5)
    assert s.logit_bias == {42: -100.0}
    assert req.stop == ["END"]
    assert req.session == "u1"


@pytest.mark.parametrize("make", [chat, completion])
def test_ignore_eos_passes_through(make):
    to_generation = chat_to_generation if make is chat else completion_to_generation
    assert to_generation(make(ignore_eos=True), "r")[0].ignore_eos is True
    assert to_generation(make(), "r")[0].ignore_eos is False


def test_max_completion_tokens_wins_over_max_tokens():
    [req] = chat_to_generation(chat(max_tokens=5, max_completion_tokens=9), "r")
    assert req.max_tokens == 9


def test_defaults_leave_sampling_alone():
    [req] = chat_to_generation(chat(), "r")
    assert req.sampling == SamplingParams()
    assert req.max_tokens is None and req.logprobs is False and req.tools is None


@pytest.mark.parametrize("top_k", [-1, 0])
def test_top_k_off(top_k):
    assert chat_to_generation(chat(top_k=top_k), "r")[0].sampling.top_k == 0


def test_session_id_preferred_over_user():
    assert chat_to_generation(chat(user="u", session_id="s"), "r")[0].session == "s"


def test_content_parts_are_joined():
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    [req] = chat_to_generation(chat(messages=[{"role": "user", "content": parts}]), "r")
    assert req.messages[0].content == "a\nb"


def test_image_parts_are_refused_by_position():
    parts = [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}]
    with pytest.raises(BadRequest) as info:
        chat_to_generation(chat(messages=[USER, {"role": "user", "content": parts}]), "r")
    assert info.value.param == "messages[1].content[1]"
    assert "image_url" in info.value.message


def test_user_message_needs_content():
    with pytest.raises(BadRequest) as info:
        chat_to_generation(chat(messages=[{"role": "user"}]), "r")
    assert info.value.param == "messages[0].content"


def test_empty_messages_refused():
    with pytest.raises(BadRequest) as info:
        chat_to_generation(chat(messages=[]), "r")
    assert info.value.param == "messages"


def test_developer_becomes_system():
    msgs = [{"role": "developer", "content": "be brief"}, USER]
    assert chat_to_generation(chat(messages=msgs), "r")[0].messages[0].role == "system"


def test_assistant_tool_calls_and_tool_results():
    msgs = [
        USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                },
                {"type": "function", "function": {"name": "now", "arguments": {"tz": "UTC"}}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "cold"},
    ]
    [req] = chat_to_generation(chat(messages=msgs), "r")
    calls = req.messages[1].tool_calls
    assert calls[0] == ToolCall(id="call_1", name="get_weather", arguments='{"city": "Oslo"}')
    assert calls[1].id == "call_1_1" and json.loads(calls[1].arguments) == {"tz": "UTC"}
    assert req.messages[1].content is None
    assert req.messages[2].role == "tool" and req.messages[2].tool_call_id == "call_1"


TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "w", "parameters": {"type": "object"}},
    }
]


def test_tools_and_choices():
    [req] = chat_to_generation(
        chat(tools=TOOLS, tool_choice="auto", parallel_tool_calls=False), "r"
    )
    assert req.tools[0].name == "get_weather" and req.tools[0].parameters == {"type": "object"}
    assert req.tool_choice == "auto" and req.parallel_tool_calls is False
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert (
        chat_to_generation(chat(tools=TOOLS, tool_choice=named), "r")[0].tool_choice
        == "get_weather"
    )
    assert chat_to_generation(chat(tools=TOOLS), "r")[0].parallel_tool_calls is True


@pytest.mark.parametrize(
    "fields",
    [
        {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        {"tool_choice": "required"},
    ],
)
def test_bad_tool_choice(fields):
    with pytest.raises(BadRequest) as info:
        chat_to_generation(chat(**fields), "r")
    assert info.value.param == "tool_choice"


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ({"type": "text"}, None),
        ({"type": "json_object"}, ("json_object", None, None)),
        (
            {
                "type": "json_schema",
                "json_schema": {"name": "pt", "schema": {"type": "object"}, "strict": True},
            },
            ("json_schema", {"type": "object"}, "pt"),
        ),
    ],
)
def test_response_format(fmt, expected):
    got = chat_to_generation(chat(response_format=fmt), "r")[0].response_format
    assert (got and (got.type, got.schema, got.name)) == expected


def test_json_schema_needs_a_schema():
    fmt = {"type": "json_schema", "json_schema": {"name": "x"}}
    with pytest.raises(BadRequest) as info:
        chat_to_generation(chat(response_format=fmt), "r")
    assert info.value.param == "response_format.json_schema.schema"


def test_logprobs_flags():
    [req] = chat_to_generation(chat(logprobs=True, top_logprobs=3), "r")
    assert req.logprobs is True and req.top_logprobs == 3
    with pytest.raises(BadRequest) as info:
        chat_to_generation(chat(top_logprobs=2), "r")
    assert info.value.param == "top_logprobs"


def test_logit_bias_keys_become_token_ids():
    bias = chat_to_generation(chat(logit_bias={"7": 1, "000123456": -2}), "r")[0].sampling
    assert bias.logit_bias == {7: 1.0, 123456: -2.0}


def test_seeds_of_n_choices_wrap_within_int64():
    reqs = chat_to_generation(chat(n=3, seed=2**63 - 2), "r")
    assert [r.sampling.seed for r in reqs] == [2**63 - 2, 2**63 - 1, 0]


def test_a_schema_past_the_depth_or_size_bound_is_refused_naming_the_field():
    deep: dict = {"type": "string"}
    for _ in range(64):
        deep = {"type": "array", "items": deep}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": deep}}
    with pytest.raises(BadRequest) as info:
        chat_to_generation(chat(response_format=fmt), "r")
    assert info.value.param == "response_format.json_schema.schema"
    assert "64 levels" in info.value.message
    ok = {"type": "json_schema", "json_schema": {"name": "x", "schema": deep["items"]}}
    assert chat_to_generation(chat(response_format=ok), "r")[0].response_format.schema
    wide = {"type": "object", "properties": {f"p{i}": {} for i in range(10_000)}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": wide}}]
    with pytest.raises(BadRequest) as info:
        chat_to_generation(chat(tools=tools), "r")
    assert info.value.param == "tools[0].function.parameters"


def test_stop_list_drops_empty_strings():
    assert chat_to_generation(chat(stop=["a", "", "b"]), "r")[0].stop == ["a", "b"]


def test_n_fans_out_with_distinct_ids_and_seeds():
    reqs = chat_to_generation(chat(n=3, seed=10), "chatcmpl-x")
    assert [r.request_id for r in reqs] == ["chatcmpl-x-0", "chatcmpl-x-1", "chatcmpl-x-2"]
    assert [r.sampling.seed for r in reqs] == [10, 11, 12]
    assert reqs[0].messages == reqs[2].messages


def test_n_without_seed_stays_unseeded():
    assert [r.sampling.seed for r in chat_to_generation(chat(n=2), "r")] == [None, None]


# --------------------------------------------------------------------------- #
# Completion -> GenerationRequest
# --------------------------------------------------------------------------- #


def test_completion_basic():
    [req] = completion_to_generation(completion(max_tokens=4, logprobs=2, stop=["\n"]), "cmpl-1")
    assert req.prompt == "once" and req.messages is None
    assert req.logprobs is True and req.top_logprobs == 2
    assert req.max_tokens == 4 and req.stop == ["\n"]


def test_completion_logprobs_zero_still_asks_for_logprobs():
    [req] = completion_to_generation(completion(logprobs=0), "r")
    assert req.logprobs is True and req.top_logprobs == 0


def test_prompt_list_of_one_string():
    assert completion_to_generation(completion(prompt=["solo"]), "r")[0].prompt == "solo"


@pytest.mark.parametrize(
    ("prompt", "words"),
    [
        ([1, 2, 3], "token-id arrays"),
        ([[1, 2], [3]], "token-id arrays"),
        (["a", "b"], "one prompt per request"),
        ([], "must not be empty"),
        ([{"x": 1}], "a string"),
    ],
)
def test_bad_prompts(prompt, words):
    with pytest.raises(BadRequest) as info:
        completion_to_generation(completion(prompt=prompt), "r")
    assert info.value.param == "prompt" and words in info.value.message


@pytest.mark.parametrize(("field", "value"), [("echo", True), ("suffix", "x"), ("best_of", 2)])
def test_unsupported_completion_options(field, value):
    with pytest.raises(BadRequest) as info:
        completion_to_generation(completion(**{field: value}), "r")
    assert info.value.param == field


def test_completion_n_fans_out():
    reqs = completion_to_generation(completion(n=2, seed=0), "cmpl-y")
    assert [(r.request_id, r.sampling.seed) for r in reqs] == [("cmpl-y-0", 0), ("cmpl-y-1", 1)]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            '{"response_format":{"type":"json_schema","json_schema":{"schema":%s}}}',
            "response_format.json_schema.schema",
        ),
        (
            '{"model":"m","tools":[{},{"function":{"name":"a,{[","parameters":%s}}]}',
            "tools[1].function.parameters",
        ),
        ('{"format":%s}', "format"),
        ('{"messages":[],"metadata":{"k":%s}}', "metadata"),
        ("[%s]", None),  # the body itself is an array: no field
    ],
)
def test_a_body_too_deep_to_decode_names_the_field_its_depth_is_in(body, field):
    from api.edge.limits import too_deep_field

    deep = '{"a":[' * 600 + "1" + "]}" * 600
    assert too_deep_field((body % deep).encode()) == field
    assert too_deep_field((body % "1").encode()) is None  # shallow: nothing to name
