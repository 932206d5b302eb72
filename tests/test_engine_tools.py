"""Tools and structured output through the engine on the random demo model, at temperature 1.

The model has no idea what a tool or JSON is: whatever is valid here is valid because the
engine enforced it (grammar) or parsed it (tool calls), which is the point.
"""

from __future__ import annotations

import json
import re

import jsonschema
import mlx_lm
import pytest

from actors.generation.engine.engine import Engine
from actors.generation.requests.admission import load_grammar
from actors.generation.requests.prompt import render_prompt
from actors.generation.requests.tool_calls import call_id
from actors.models.demo import ensure_demo_model
from actors.protocol.messages import (
    ChatMessage,
    Finished,
    GenerationFailed,
    GenerationRequest,
    ResponseFormat,
    SamplingParams,
    ToolCall,
)
from tests.sample_tools import ADD, TOOLS
from tests.test_engine import Events

SEEDS = range(4)

SCHEMAS = {t.name: t.parameters for t in TOOLS}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
CALL_ID = re.compile(r"call_[0-9a-f]{24}")


@pytest.fixture(scope="module")
def demo():
    model, tokenizer = mlx_lm.load(str(ensure_demo_model("tiny")))
    return model, tokenizer, load_grammar(model, tokenizer)


@pytest.fixture
def engine(demo):
    model, tokenizer, grammar = demo
    events = Events()
    made = Engine(
        model,
        tokenizer,
        model_name="demo-tiny",
        emit=events,
        context_length=4096,
        coalesce_ms=0.0,
        grammar=grammar,
    )
    made.start()
    yield made, events
    made.stop()
    assert not events.violations


def ask(rid: str, seed: int = 0, max_tokens: int = 300, **fields) -> GenerationRequest:
    """A chat request sampled at temperature 1 with its own seed."""
    sampling = fields.pop("sampling", SamplingParams(temperature=1.0, seed=seed))
    messages = fields.pop("messages", [ChatMessage(role="user", content="What is 2 + 2?")])
    return GenerationRequest(
        request_id=rid,
        model="demo-tiny",
        messages=messages,
        max_tokens=max_tokens,
        sampling=sampling,
        **fields,
    )


def run(engine, *requests: GenerationRequest) -> list:
    """Submit together (one batch), return each request's final event."""
    made, events = engine
    for req in requests:
        made.submit(req)
    return [events.end(req.request_id) for req in requests]


def streamed_calls(events: Events, rid: str) -> list[ToolCall]:
    return [c for d in events.deltas(rid) for c in d.tool_calls or ()]


def assert_valid_calls(calls: list[ToolCall], names: set[str]) -> None:
    assert calls
    for call in calls:
        assert call.name in names
        jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
        assert CALL_ID.fullmatch(call.id)
    assert len({c.id for c in calls}) == len(calls)


# --------------------------------------------------------------------------- #
# tool_choice
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("parallel", [True, False])
def test_required_tool_choice_ends_in_calls_of_declared_tools(engine, demo, parallel):
    _, events = engine
    asked = [
        ask(
            f"req-{parallel}-{s}",
            s,
            tools=TOOLS,
            tool_choice="required",
            parallel_tool_calls=parallel,
        )
        for s in SEEDS
    ]
    for req, end in zip(asked, run(engine, *asked), strict=True):
        assert isinstance(end, Finished) and end.finish_reason == "tool_calls", end
        assert_valid_calls(end.tool_calls, {"get_weather", "add"})
        assert parallel or len(end.tool_calls) == 1
        # Each call was streamed once, as its block closed; no block text leaked as content.
        assert streamed_calls(events, req.request_id) == end.tool_calls
        assert events.text(req.request_id) == ""
        ids = events.tokens(req.request_id)
        # Every token but the EOS; the one allowed call ends the output before any EOS.
        assert len(ids) == end.usage.completion_tokens - (1 if parallel else 0)
        assert demo[1].decode(ids).startswith("<tool_call>")


def test_named_tool_choice_calls_exactly_that_function(engine):
    asked = [ask(f"named-{s}", s, tools=TOOLS, tool_choice="get_weather") for s in SEEDS]
    for end in run(engine, *asked):
        assert end.finish_reason == "tool_calls"
        assert_valid_calls(end.tool_calls, {"get_weather"})
        assert len(end.tool_calls) == 1


def test_auto_with_a_schema_parses_the_call_the_model_chose(engine, demo):
    # logit_bias stands in for a model that wants to call: the grammar still shapes the call.
    start = demo[1].convert_tokens_to_ids("<tool_call>")
    sampling = SamplingParams(temperature=1.0, seed=3, logit_bias={start: 60.0})
    fmt = ResponseFormat(type="json_schema", schema=PERSON)
    (end,) = run(
        engine, ask("auto", tools=[ADD], tool_choice="auto", response_format=fmt, sampling=sampling)
    )
    assert end.finish_reason == "tool_calls"
    assert_valid_calls(end.tool_calls, {"add"})


def test_auto_keeps_a_block_that_is_not_a_call_as_content(engine, demo):
    # Pushed into writing markers, the random model fills blocks with gibberish.
    tokenizer = demo[1]
    markers = tokenizer.convert_tokens_to_ids(["<tool_call>", "</tool_call>"])
    sampling = SamplingParams(temperature=1.0, seed=1, logit_bias=dict.fromkeys(markers, 45.0))
    (end,) = run(engine, ask("junk", max_tokens=60, tools=TOOLS, sampling=sampling))
    _, events = engine
    assert end.finish_reason == "length" and end.tool_calls is None
    text = events.text("junk")
    assert "<tool_call>" in text and "</tool_call>" in text
    assert text == tokenizer.decode(events.tokens("junk"))  # nothing lost, nothing invented


def test_tool_choice_none_shows_the_tools_but_never_opens_a_call(engine, demo):
    tokenizer = demo[1]
    start = tokenizer.convert_tokens_to_ids("<tool_call>")
    keen = SamplingParams(temperature=1.0, seed=2, logit_bias={start: 60.0})
    none, auto = run(
        engine,
        ask("none", max_tokens=20, tools=TOOLS, tool_choice="none", sampling=keen),
        ask("auto-keen", max_tokens=20, tools=TOOLS, tool_choice="auto", sampling=keen),
    )
    _, events = engine
    assert start not in events.tokens("none") and none.tool_calls is None
    assert start in events.tokens("auto-keen")
    assert none.usage.prompt_tokens == auto.usage.prompt_tokens  # the same prompt, tools shown


def test_a_resumed_request_does_not_send_its_calls_again(engine, demo):
    tokenizer = demo[1]
    block = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    sent = tokenizer.encode(block, add_special_tokens=False)
    req = ask("resumed", max_tokens=len(sent) + 8, tools=TOOLS, resume_tokens=sent)
    (end,) = run(engine, req)
    _, events = engine
    assert end.tool_calls == [ToolCall(call_id("resumed", 0), "add", '{"a": 1, "b": 2}')]
    assert end.finish_reason in ("tool_calls", "length")
    assert streamed_calls(events, "resumed") == []  # the first group streamed it


def test_a_tool_conversation_renders_calls_as_objects_and_results_as_responses(engine, demo):
    call = ToolCall("call_1", "add", '{"a": 1, "b": 2}')
    messages = [
        ChatMessage(role="user", content="Add 1 and 2."),
        ChatMessage(role="assistant", tool_calls=[call]),
        ChatMessage(role="tool", tool_call_id="call_1", content="3"),
    ]
    req = ask("conversation", max_tokens=8, tools=TOOLS, messages=messages)
    text = demo[1].decode(render_prompt(demo[1], req))
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>' in text
    assert "<tool_response>\n3\n</tool_response>" in text
    assert text.endswith("<|im_start|>assistant\n")
    (end,) = run(engine, req)
    assert isinstance(end, Finished)


# --------------------------------------------------------------------------- #
# response_format
# --------------------------------------------------------------------------- #


def test_json_object_replies_parse_on_the_random_demo_model(engine):
    _, events = engine
    fmt = ResponseFormat(type="json_object")
    asked = [ask(f"object-{s}", s, response_format=fmt) for s in range(8)]
    for req, end in zip(asked, run(engine, *asked), strict=True):
        assert end.finish_reason == "stop", events.text(req.request_id)
        assert isinstance(json.loads(events.text(req.request_id)), dict)


def test_json_schema_replies_validate_beside_a_free_neighbour(engine):
    _, events = engine
    fmt = ResponseFormat(type="json_schema", schema=PERSON)
    asked = [ask(f"person-{s}", s, response_format=fmt) for s in SEEDS]
    free = ask("free", max_tokens=30)
    *ends, free_end = run(engine, *asked, free)
    texts = set()
    for req, end in zip(asked, ends, strict=True):
        assert end.finish_reason == "stop"
        text = events.text(req.request_id)
        jsonschema.validate(json.loads(text), PERSON)
        texts.add(text)
    assert len(texts) > 1  # sampled, not forced to one answer
    assert isinstance(free_end, Finished)


def test_a_resumed_document_continues_where_the_first_group_stopped(engine, demo):
    _, events = engine
    sent = demo[1].encode('{"name":"ab', add_special_tokens=False)
    fmt = ResponseFormat(type="json_schema", schema=PERSON)
    ok, broken = run(
        engine,
        ask("resume-ok", response_format=fmt, resume_tokens=sent),
        ask("resume-bad", response_format=fmt, resume_tokens=demo[1].encode("hello")),
    )
    assert ok.finish_reason == "stop"
    jsonschema.validate(json.loads('{"name":"ab' + events.text("resume-ok")), PERSON)
    assert isinstance(broken, GenerationFailed) and broken.status == 400
    assert "resume_tokens do not follow" in broken.message


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        (
            {"response_format": ResponseFormat(type="json_schema", schema={"type": "nonsense"})},
            "response_format schema: ",
        ),
        ({"tools": TOOLS, "tool_choice": "fly"}, "tool_choice names 'fly'"),
        ({"tools": [ADD, ADD], "tool_choice": "required"}, "two tools are named 'add'"),
    ],
)
def test_a_request_whose_grammar_cannot_compile_fails_alone_with_400(engine, fields, words):
    bad, good = run(engine, ask("bad", **fields), ask("good", max_tokens=5))
    assert isinstance(bad, GenerationFailed) and bad.status == 400 and not bad.retryable
    assert words in bad.message and "\n" not in bad.message
    assert isinstance(good, Finished)


def test_an_engine_without_a_grammar_refuses_constrained_requests(demo):
    model, tokenizer, _ = demo
    events = Events()
    engine = Engine(model, tokenizer, model_name="demo-tiny", emit=events, context_length=4096)
    engine.start()
    try:
        engine.submit(ask("json", response_format=ResponseFormat(type="json_object")))
        engine.submit(ask("tools", max_tokens=5, tools=TOOLS))  # free text: still served
        failed = events.end("json")
        assert isinstance(failed, GenerationFailed) and failed.status == 400
        assert "response_format and tool_choice are unavailable" in failed.message
        assert isinstance(events.end("tools"), Finished)
    finally:
        engine.stop()


def test_a_broken_constraint_fails_the_request_instead_of_returning_invalid_output(demo):
    model, tokenizer, grammar = demo

    class Breaking(Engine):
        def _prepare(self, request):
            seq = super()._prepare(request)
            seq.constraint._fail("matcher gave up")  # as an llguidance error would
            return seq

    events = Events()
    engine = Breaking(
        model, tokenizer, model_name="demo-tiny", emit=events, context_length=4096, grammar=grammar
    )
    engine.start()
    try:
        engine.submit(ask("broken", response_format=ResponseFormat(type="json_object")))
        failed = events.end("broken")
        assert isinstance(failed, GenerationFailed) and failed.status == 500
        assert failed.message == "constrained decoding failed: matcher gave up"
    finally:
        engine.stop()
