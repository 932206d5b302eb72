"""Ollama bodies -> GenerationRequest, events -> Ollama replies, models -> Ollama views."""

from __future__ import annotations

import datetime

import msgspec
import pytest

from actors.protocol.messages import (
    Finished,
    GenerationFailed,
    ResponseFormat,
    TokenDelta,
    TokenLogprob,
    ToolCall,
    TopLogprob,
    Usage,
)
from api.edge.choices import ChoiceResult
from api.ollama.model_views import NEVER_EXPIRES, digest, running, show, tags
from api.ollama.protocol import ChatRequest, ChatResponse, GenerateRequest, GenerateResponse
from api.ollama.replies import done_reason, full_reply, load_reply
from api.ollama.stream import StreamedReply
from api.ollama.timing import Timings, rfc3339
from api.ollama.translate import chat_to_generation, generate_to_generation, resolve_model
from supervisor.serving.contract import BadRequest, ModelInfo

CALL = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Oslo"}')


def chat(**fields) -> ChatRequest:
    body = {"model": "demo:tiny", "messages": [{"role": "user", "content": "hi"}], **fields}
    return msgspec.json.decode(msgspec.json.encode(body), type=ChatRequest)


def generate(**fields) -> GenerateRequest:
    body = {"model": "demo:tiny", "prompt": "hi", **fields}
    return msgspec.json.decode(msgspec.json.encode(body), type=GenerateRequest)


def to_gen(body, context_length: int = 0):
    convert = chat_to_generation if isinstance(body, ChatRequest) else generate_to_generation
    return convert(body, "r1", "demo:tiny", context_length)


# --------------------------------------------------------------------------- #
# Requests
# --------------------------------------------------------------------------- #


def test_options_map_to_sampling_length_and_stop():
    options = {
        "num_predict": 7,
        "temperature": 0.3,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "seed": 11,
        "stop": ["\n", "", "user:"],
        "repeat_penalty": 1.2,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "num_ctx": 8192,  # accepted and ignored
        "mirostat": 2,  # unknown to us: ignored, as Ollama ignores unknown options
    }
    req = to_gen(chat(options=options))
    s = req.sampling
    assert (s.temperature, s.top_p, s.top_k, s.min_p, s.seed) == (0.3, 0.9, 40, 0.05, 11)
    assert (s.repetition_penalty, s.presence_penalty, s.frequency_penalty) == (1.2, 0.5, -0.5)
    assert req.max_tokens == 7 and req.stop == ["\n", "user:"]
    assert req.model == "demo:tiny" and req.request_id == "r1"


def test_unset_options_keep_the_server_defaults():
    req = to_gen(chat())
    assert req.sampling == type(req.sampling)()
    assert req.max_tokens is None and req.stop == [] and req.response_format is None
    assert req.tools is None and not req.logprobs


@pytest.mark.parametrize(
    ("num_predict", "context", "expected"),
    [(0, 4096, None), (-1, 4096, 4096), (-2, 4096, 4096), (-1, 0, None), (1, 4096, 1)],
)
def test_num_predict(num_predict, context, expected):
    assert to_gen(chat(options={"num_predict": num_predict}), context).max_tokens == expected


@pytest.mark.parametrize(("penalty", "expected"), [(0.0, None), (1.0, None), (1.1, 1.1)])
def test_repeat_penalty_zero_and_one_disable_it(penalty, expected):
    req = to_gen(chat(options={"repeat_penalty": penalty}))
    assert req.sampling.repetition_penalty == expected


def test_negative_seed_means_random_and_stop_may_be_a_string():
    req = to_gen(chat(options={"seed": -1, "stop": "END"}))
    assert req.sampling.seed is None and req.stop == ["END"]


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        (None, None),
        ("", None),
        ("json", ResponseFormat(type="json_object")),
        ({"type": "object"}, ResponseFormat(type="json_schema", schema={"type": "object"})),
    ],
)
def test_format(fmt, expected):
    assert to_gen(chat(format=fmt)).response_format == expected
    assert to_gen(generate(format=fmt)).response_format == expected


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"model": ""}, "$.model"),
        ({"format": "yaml"}, "$.format"),
        ({"options": {"temperature": -1}}, "$.options.temperature"),
        ({"options": {"top_p": 1.5}}, "$.options.top_p"),
        ({"options": {"num_predict": -3}}, "$.options.num_predict"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "$.messages[0].role"),
        ({"top_logprobs": 21}, "$.top_logprobs"),
    ],
)
def test_bad_bodies_name_the_field(fields, where):
    with pytest.raises(msgspec.ValidationError) as info:
        chat(**fields)
    assert str(info.value).endswith(f"at `{where}`")


def test_chat_messages_tools_and_tool_results():
    body = chat(
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "weather in Oslo?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
                ],
            },
            {"role": "tool", "content": "12C", "tool_name": "get_weather"},
        ],
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather of a city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            }
        ],
        think=False,
        keep_alive="5m",
    )
    req = to_gen(body)
    system, user, assistant, tool = req.messages
    assert (system.role, system.content, user.content) == ("system", "be brief", "weather in Oslo?")
    assert assistant.content is None
    [call] = assistant.tool_calls
    assert (call.id, call.name, msgspec.json.decode(call.arguments)) == (
        "call_2_0",
        "get_weather",
        {"city": "Oslo"},
    )
    assert (tool.role, tool.content, tool.name) == ("tool", "12C", "get_weather")
    [spec] = req.tools
    assert spec.name == "get_weather" and spec.parameters["properties"]["city"]["type"] == "string"
    assert req.tool_choice is None  # Ollama has no tool_choice: the model decides


def test_images_are_refused_naming_where():
    with pytest.raises(BadRequest, match=r"^messages\[0\]\.images: images are not supported"):
        to_gen(chat(messages=[{"role": "user", "content": "?", "images": ["iVBOR"]}]))
    with pytest.raises(BadRequest, match=r"^images: images are not supported") as info:
        to_gen(generate(images=["iVBOR"]))
    assert info.value.param == "images"
    assert to_gen(chat(messages=[{"role": "user", "content": "?", "images": []}])).messages


def test_generate_templates_the_prompt_unless_raw():
    req = to_gen(generate(system="be brief"))
    assert [(m.role, m.content) for m in req.messages] == [("system", "be brief"), ("user", "hi")]
    assert req.prompt is None
    raw = to_gen(generate(raw=True, prompt="<|im_start|>user\nhi"))
    assert raw.prompt == "<|im_start|>user\nhi" and raw.messages is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"suffix": "return x"}, "suffix: fill-in-the-middle is not supported"),
        ({"template": "{{ .Prompt }}"}, "template: custom prompt templates are not supported"),
        ({"context": [1, 2, 3]}, "context: not supported"),
        ({"raw": True, "system": "x"}, "system: a raw prompt is not templated"),
    ],
)
def test_generate_refuses_what_it_cannot_honour(fields, message):
    with pytest.raises(BadRequest, match=f"^{message}"):
        to_gen(generate(**fields))


def test_empty_suffix_template_and_context_are_fine():
    assert to_gen(generate(suffix="", template="", context=[])).messages


def test_logprobs():
    assert to_gen(chat(logprobs=True, top_logprobs=3)).top_logprobs == 3
    req = to_gen(chat(logprobs=True))
    assert req.logprobs and req.top_logprobs == 0
    assert to_gen(chat(top_logprobs=3)).top_logprobs == 0


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("demo:tiny", "demo:tiny"),
        ("org/model", "org/model"),
        ("org/model:latest", "org/model"),
        ("demo:tiny:latest", "demo:tiny"),
        ("demo", None),
        ("demo:small", None),
    ],
)
def test_resolve_model(name, expected):
    assert resolve_model(name, ["demo:tiny", "org/model"]) == expected


# --------------------------------------------------------------------------- #
# Events -> responses
# --------------------------------------------------------------------------- #


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def timings() -> Timings:
    return Timings(started=1_000, admitted=3_000, first_token=10_000, finished=50_000)


def test_rfc3339_is_utc_with_z():
    text = rfc3339(1_700_000_000.25)
    assert text == "2023-11-14T22:13:20.250000Z"
    assert datetime.datetime.fromisoformat(text).timestamp() == 1_700_000_000.25


def test_timing_figures_are_nanoseconds_between_milestones():
    figures = timings().figures(Usage(prompt_tokens=5, completion_tokens=3))
    assert figures == {
        "total_duration": 49_000,
        "load_duration": 2_000,
        "prompt_eval_count": 5,
        "prompt_eval_duration": 7_000,
        "eval_count": 3,
        "eval_duration": 40_000,
    }
    # A request that failed before any token still reports non-negative figures.
    early = Timings(started=1_000, admitted=2_000).figures(None)
    assert min(early.values()) == 0


@pytest.mark.parametrize(
    ("reason", "expected"),
    [("length", "length"), ("stop", "stop"), ("tool_calls", "stop"), ("cancelled", "stop")],
)
def test_done_reason(reason, expected):
    assert done_reason(reason) == expected


def test_streamed_chat_reply_lines():
    reply = StreamedReply(True, "demo:tiny:latest", timings(), wall=Clock())
    lines = reply.on_event(TokenDelta("r1", "Hel", [1]))
    lines += reply.on_event(TokenDelta("r1", "", [2]))  # nothing to say: no line
    lines += reply.on_event(TokenDelta("r1", "lo", [3]))
    assert not reply.done
    lines += reply.on_event(Finished("r1", "length", Usage(4, 3)))
    assert reply.done
    objects = [msgspec.json.decode(msgspec.json.encode(x)) for x in lines]
    assert [o["message"]["content"] for o in objects] == ["Hel", "lo", ""]
    assert [o["done"] for o in objects] == [False, False, True]
    assert all(o["model"] == "demo:tiny:latest" for o in objects)
    assert all(o["created_at"] == "2023-11-14T22:13:20Z" for o in objects)
    assert "done_reason" not in objects[0] and "eval_count" not in objects[0]
    last = objects[-1]
    assert last["done_reason"] == "length" and last["eval_count"] == 3
    assert last["prompt_eval_count"] == 4 and last["total_duration"] == 49_000
    assert last["message"] == {"role": "assistant", "content": ""}


def test_streamed_tool_calls_are_objects_sent_once():
    reply = StreamedReply(True, "demo:tiny", timings(), wall=Clock())
    second = ToolCall(id="call_2", name="get_time", arguments="{}")
    lines = reply.on_event(TokenDelta("r1", "", [1], tool_calls=[CALL]))
    lines += reply.on_event(Finished("r1", "tool_calls", Usage(4, 3), tool_calls=[CALL, second]))
    objects = [msgspec.json.decode(msgspec.json.encode(x)) for x in lines]
    calls = [c for o in objects for c in o["message"].get("tool_calls", [])]
    assert calls == [
        {
            "function": {"name": "get_weather", "arguments": {"city": "Oslo"}, "index": 0},
            "id": "call_1",
        },
        {"function": {"name": "get_time", "arguments": {}, "index": 1}, "id": "call_2"},
    ]
    assert objects[-1]["done"] and objects[-1]["done_reason"] == "stop"


def test_tool_arguments_that_are_not_an_object_become_empty():
    bad = ToolCall(id="c", name="f", arguments="not json")
    reply = StreamedReply(True, "m", timings(), wall=Clock())
    [line] = reply.on_event(TokenDelta("r1", "", [], tool_calls=[bad]))
    assert line.message.tool_calls[0].function.arguments == {}


def test_streamed_generate_reply_and_failure():
    reply = StreamedReply(False, "demo:tiny", timings(), top_logprobs=1, wall=Clock())
    lp = TokenLogprob(1, "Hi", -0.5, [TopLogprob(1, "Hi", -0.5), TopLogprob(2, "Yo", -1.0)])
    [line] = reply.on_event(TokenDelta("r1", "Hi", [1], logprobs=[lp]))
    assert isinstance(line, GenerateResponse) and line.response == "Hi" and not line.done
    [logprob] = line.logprobs
    assert (logprob.token, logprob.logprob, logprob.bytes) == ("Hi", -0.5, [72, 105])
    assert [t.token for t in logprob.top_logprobs] == ["Hi"]
    [error] = reply.on_event(GenerationFailed("r1", "the group died", status=503))
    assert msgspec.json.encode(error) == b'{"error":"the group died"}' and reply.done


def test_full_replies():
    result = ChoiceResult()
    for event in (
        TokenDelta("r1", "Hello", [1]),
        Finished("r1", "stop", Usage(2, 1), tool_calls=[CALL]),
    ):
        result.add(event)
    reply = full_reply(True, "demo:tiny", result, timings(), None, 1_700_000_000.0)
    assert isinstance(reply, ChatResponse) and reply.done and reply.done_reason == "stop"
    assert reply.message.content == "Hello" and reply.logprobs is None
    assert reply.message.tool_calls[0].function.arguments == {"city": "Oslo"}
    assert (reply.prompt_eval_count, reply.eval_count, reply.eval_duration) == (2, 1, 40_000)
    text = full_reply(False, "demo:tiny", result, timings(), 0, 1_700_000_000.0)
    assert isinstance(text, GenerateResponse) and text.response == "Hello" and text.logprobs == []
    loaded = msgspec.json.decode(msgspec.json.encode(load_reply(True, "demo:tiny", 0.0)))
    assert loaded == {
        "model": "demo:tiny",
        "created_at": "1970-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "load",
    }


# --------------------------------------------------------------------------- #
# Models
# --------------------------------------------------------------------------- #

MODELS = [
    ModelInfo("demo:tiny", 1_700_000_000, context_length=4096, ready=True),
    ModelInfo("org/model", 1_700_000_000, context_length=0, ready=False),
]


def test_tags_list_every_model_with_a_stable_digest():
    listed = tags(MODELS).models
    assert [(m.name, m.model) for m in listed] == [("demo:tiny", "demo:tiny"), ("org/model",) * 2]
    assert listed[0].modified_at == "2023-11-14T22:13:20Z"
    assert listed[0].digest == digest("demo:tiny") != digest("org/model")
    assert len(listed[0].digest) == 64 and listed[0].details.format == "mlx"


def test_ps_lists_only_ready_models():
    [model] = running(MODELS).models
    assert model.name == "demo:tiny" and model.context_length == 4096
    assert model.expires_at == NEVER_EXPIRES


def test_show_gives_the_context_length_where_clients_look():
    info = show(MODELS[0])
    arch = info.model_info["general.architecture"]
    assert info.model_info[f"{arch}.context_length"] == 4096
    assert info.parameters == "num_ctx 4096" and "tools" in info.capabilities
    unknown = show(MODELS[1])
    assert unknown.parameters == "" and "mlx.context_length" not in unknown.model_info
