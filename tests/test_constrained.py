"""Constrained decoding on the random-weight demo model: the grammar alone must make output valid.

Generation is real mlx_lm (``stream_generate`` and ``BatchGenerator``) sampling at
temperature 1 over several seeds; bounds in the schemas (maxLength, maximum,
additionalProperties false) let a model that never chooses to stop still finish.
"""

from __future__ import annotations

import json
import re

import jsonschema
import mlx.core as mx
import numpy as np
import pytest
from mlx_lm import load, stream_generate
from mlx_lm.generate import BatchGenerator
from mlx_lm.sample_utils import make_logits_processors, make_sampler
from mlx_lm.tool_parsers import json_tools

from actors.generation.requests.constrained import (
    Constraint,
    GrammarError,
    GrammarTokenizer,
    constraint_for,
)
from actors.models.demo import ensure_demo_model
from actors.protocol.messages import GenerationRequest, ResponseFormat, ToolSpec
from tests.sample_tools import ADD, TOOLS, WEATHER

SEEDS = range(5)
MAX_TOKENS = 200

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3},
    },
    "required": ["name", "age", "color"],
    "additionalProperties": False,
}
POINT = {
    "type": "object",
    "properties": {
        "x": {"type": "number", "minimum": -10, "maximum": 10},
        "ok": {"type": "boolean"},
    },
    "required": ["x", "ok"],
    "additionalProperties": False,
}

TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


@pytest.fixture(scope="module")
def demo():
    path = ensure_demo_model("tiny")
    model, tokenizer = load(str(path))
    vocab_size = json.loads((path / "config.json").read_text())["vocab_size"]
    return model, tokenizer, GrammarTokenizer.from_tokenizer(tokenizer, vocab_size)


def request(**fields) -> GenerationRequest:
    return GenerationRequest(request_id="r", model="demo", prompt="x", **fields)


def schema_request(schema: dict) -> GenerationRequest:
    return request(response_format=ResponseFormat(type="json_schema", schema=schema))


def chat_prompt(tokenizer, tools: list[ToolSpec] | None = None) -> list[int]:
    specs = [
        {"type": "function", "function": {"name": t.name, "parameters": t.parameters}}
        for t in tools or []
    ]
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    return tokenizer.apply_chat_template(messages, tools=specs or None, add_generation_prompt=True)


def generate(demo, constraint: Constraint, seed: int, prompt=None, processors=(), max_tokens=None):
    """Sample at temperature 1 with the constraint last; returns (text, finish_reason, ids)."""
    model, tokenizer, _ = demo
    mx.random.seed(seed)
    text, ids, finish = "", [], None
    for response in stream_generate(
        model,
        tokenizer,
        prompt if prompt is not None else chat_prompt(tokenizer),
        max_tokens=max_tokens or MAX_TOKENS,
        sampler=make_sampler(temp=1.0),
        logits_processors=[*processors, constraint.processor],
    ):
        text += response.text
        ids.append(response.token)
        finish = response.finish_reason
    assert constraint.error is None, constraint.error
    return text, finish, ids


def tool_calls(text: str) -> list[dict]:
    """Every call block, parsed by mlx_lm's own json_tools parser; nothing may sit outside them."""
    assert TOOL_CALL.sub("", text).strip() == "", f"text outside tool calls: {text!r}"
    return [json_tools.parse_tool_call(body) for body in TOOL_CALL.findall(text)]


# --------------------------------------------------------------------------- #
# Which requests get a constraint
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"response_format": ResponseFormat(type="text")},
        {"tools": TOOLS},
        {"tools": TOOLS, "tool_choice": "auto"},
        {"tools": TOOLS, "tool_choice": "none"},
    ],
)
def test_free_text_gets_no_constraint(demo, fields):
    assert constraint_for(request(**fields), demo[2]) is None


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {
                "response_format": ResponseFormat(
                    type="json_schema",
                    schema={"type": "object", "properties": {"a": {"type": "nonsense"}}},
                )
            },
            "response_format schema: Invalid type: nonsense",
        ),
        (
            {"response_format": ResponseFormat(type="json_schema", schema={"$ref": "#/nope"})},
            "response_format schema: Pointer '/nope' does not exist",
        ),
        (
            {"response_format": ResponseFormat(type="json_schema")},
            "response_format json_schema needs a schema",
        ),
        (
            {
                "tools": [
                    ToolSpec(
                        name="f",
                        parameters={
                            "type": "object",
                            "properties": {"s": {"type": "string", "pattern": "(("}},
                        },
                    )
                ],
                "tool_choice": "required",
            },
            "tool 'f' parameters: regex parse error: unclosed group",
        ),
        (
            {"tools": TOOLS, "tool_choice": "fly"},
            "tool_choice names 'fly', which is not among the tools ('get_weather', 'add')",
        ),
        (
            {"tool_choice": "required"},
            "tool_choice 'required' needs tools, and the request has none",
        ),
        ({"tools": [ADD, ADD], "tool_choice": "required"}, "tools: two tools are named 'add'"),
    ],
)
def test_bad_grammar_is_a_one_line_grammar_error(demo, fields, expected):
    with pytest.raises(GrammarError) as caught:
        constraint_for(request(**fields), demo[2])
    assert str(caught.value) == expected
    assert isinstance(caught.value, ValueError)


# --------------------------------------------------------------------------- #
# Output is valid whatever the (random) model prefers
# --------------------------------------------------------------------------- #


def test_json_object_always_parses_to_a_dict(demo):
    _, tokenizer, grammar_tokenizer = demo
    # An untrained model never chooses to close a string; a logit_bias towards '"' stands in
    # for a trained model's wish to finish, and shows the mask composes with other processors.
    closers = [i for s, i in tokenizer.vocab.items() if s and set(s) <= {'"', "}"} and s[0] == '"']
    nudge = make_logits_processors(logit_bias={i: 6.0 for i in closers})
    for seed in SEEDS:
        constraint = constraint_for(
            request(response_format=ResponseFormat(type="json_object")), grammar_tokenizer
        )
        text, finish, _ = generate(demo, constraint, seed, processors=nudge)
        assert finish == "stop", text
        assert isinstance(json.loads(text), dict), text


def test_json_schema_output_always_validates(demo):
    outputs = set()
    for seed in SEEDS:
        constraint = constraint_for(schema_request(PERSON), demo[2])
        text, finish, ids = generate(demo, constraint, seed)
        assert finish == "stop", text
        assert ids[-1] in demo[2].eos_ids
        jsonschema.validate(json.loads(text), PERSON)
        outputs.add(text)
    assert len(outputs) > 1  # sampling really varied; the grammar did not pick one answer


def test_required_tool_choice_calls_declared_tools_with_valid_arguments(demo):
    _, tokenizer, grammar_tokenizer = demo
    by_name = {t.name: t.parameters for t in TOOLS}
    for parallel in (True, False):
        for seed in SEEDS:
            req = request(tools=TOOLS, tool_choice="required", parallel_tool_calls=parallel)
            constraint = constraint_for(req, grammar_tokenizer)
            prompt = chat_prompt(tokenizer, TOOLS)
            text, finish, ids = generate(demo, constraint, seed, prompt=prompt)
            assert finish == "stop", text
            calls = tool_calls(text)
            assert len(calls) >= 1 if parallel else len(calls) == 1, text
            for call in calls:
                assert set(call) == {"name", "arguments"}
                jsonschema.validate(call["arguments"], by_name[call["name"]])
            # The markers are the single added tokens, as a trained model would emit them.
            start = tokenizer.convert_tokens_to_ids("<tool_call>")
            assert ids[0] == start and ids.count(start) == len(calls)


@pytest.mark.parametrize(
    ("head", "fits"),
    [
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "', True),
        ('<tool_call>\n{"name": "add", "arguments": {"a": 1', True),
        ('<tool_call>\n{"name": "fly"', False),
        ('<tool_call>\n{"name": "add", "arguments": {"city"', False),
        ('{"name": "add"', False),  # no marker, no call
    ],
)
def test_required_tool_choice_offers_every_declared_function_and_no_other(demo, head, fits):
    # The random model always prefers "add"; feed other continuations straight to the matcher.
    _, tokenizer, grammar_tokenizer = demo
    constraint = constraint_for(request(tools=TOOLS, tool_choice="required"), grammar_tokenizer)
    assert constraint.advance(tokenizer.encode(head, add_special_tokens=False)) is fits
    assert (constraint.error is None) is fits


def test_named_tool_choice_always_calls_that_function(demo):
    _, tokenizer, grammar_tokenizer = demo
    for seed in SEEDS:
        req = request(tools=TOOLS, tool_choice="get_weather")  # parallel allowed, still one call
        constraint = constraint_for(req, grammar_tokenizer)
        text, finish, _ = generate(demo, constraint, seed, prompt=chat_prompt(tokenizer, TOOLS))
        assert finish == "stop", text
        (call,) = tool_calls(text)
        assert call["name"] == "get_weather"
        jsonschema.validate(call["arguments"], WEATHER.parameters)


def test_auto_tool_choice_with_a_schema_answers_in_json_or_calls_a_tool(demo):
    _, tokenizer, grammar_tokenizer = demo
    for seed in SEEDS:
        req = request(
            tools=[ADD],
            tool_choice="auto",
            response_format=ResponseFormat(type="json_schema", schema=POINT),
        )
        constraint = constraint_for(req, grammar_tokenizer)
        text, finish, _ = generate(demo, constraint, seed, prompt=chat_prompt(tokenizer, [ADD]))
        assert finish == "stop", text
        if text.startswith("<tool_call>"):
            for call in tool_calls(text):
                jsonschema.validate(call["arguments"], ADD.parameters)
        else:
            jsonschema.validate(json.loads(text), POINT)


def test_two_schemas_in_one_batch_each_follow_their_own(demo):
    model, tokenizer, grammar_tokenizer = demo
    schemas = [PERSON, None, POINT]  # a free sequence in the middle: processors stay aligned
    constraints = [
        constraint_for(schema_request(s), grammar_tokenizer) if s else None for s in schemas
    ]
    mx.random.seed(3)
    generator = BatchGenerator(
        model,
        stop_tokens=[[i] for i in grammar_tokenizer.eos_ids],
        sampler=make_sampler(temp=1.0),
    )
    prompt = chat_prompt(tokenizer)
    uids = generator.insert(
        [prompt, prompt[:-3], prompt + prompt[-2:]],  # different lengths, one batch
        max_tokens=[MAX_TOKENS, 20, MAX_TOKENS],
        logits_processors=[[c.processor] if c else [] for c in constraints],
    )
    tokens = {uid: [] for uid in uids}
    finish = {}
    try:
        while len(finish) < len(uids):
            for response in generator.next_generated():
                if response.finish_reason != "stop":
                    tokens[response.uid].append(response.token)
                if response.finish_reason:
                    finish[response.uid] = response.finish_reason
    finally:
        generator.close()
    for uid, schema, constraint in zip(uids, schemas, constraints, strict=True):
        if schema is None:
            continue
        text = tokenizer.decode(tokens[uid])
        assert finish[uid] == "stop" and constraint.error is None, text
        jsonschema.validate(json.loads(text), schema)


# --------------------------------------------------------------------------- #
# The processor's contract with the engine
# --------------------------------------------------------------------------- #


def test_resumed_output_continues_from_tokens_already_sent(demo):
    _, tokenizer, grammar_tokenizer = demo
    sent = tokenizer.encode('{"name":"ab', add_special_tokens=False)
    constraint = constraint_for(schema_request(PERSON), grammar_tokenizer)
    assert constraint.advance(sent)  # the engine feeds resume_tokens before the first step
    text, finish, _ = generate(demo, constraint, 0, prompt=chat_prompt(tokenizer) + sent)
    assert finish == "stop"
    jsonschema.validate(json.loads('{"name":"ab' + text), PERSON)


def test_first_call_sees_the_prompt_and_masks_padding(demo):
    _, _, grammar_tokenizer = demo
    constraint = constraint_for(schema_request(POINT), grammar_tokenizer)
    prompt = mx.array([5, 6, 7, 8])  # the prompt is never fed to the grammar
    logits = mx.zeros((1, grammar_tokenizer.vocab_size))
    allowed = np.isfinite(np.array(constraint.processor(prompt, logits))[0])
    assert constraint.error is None and constraint.tokens_consumed == 0
    texts = {grammar_tokenizer.ll.decode_str([int(i)]) for i in np.flatnonzero(allowed)}
    assert texts and all(t.startswith("{") for t in texts), texts
    assert not allowed[grammar_tokenizer.text_vocab :].any()
    # A wider logits row than the config's (some checkpoints) is masked beyond it too.
    wide = constraint.copy().processor(prompt, mx.zeros((1, grammar_tokenizer.vocab_size + 64)))
    assert np.isfinite(np.array(wide)[0]).sum() == len(texts)


def test_a_token_outside_the_grammar_is_reported_and_ends_the_sequence(demo):
    _, tokenizer, grammar_tokenizer = demo
    constraint = constraint_for(schema_request(POINT), grammar_tokenizer)
    logits = mx.zeros((1, grammar_tokenizer.vocab_size))
    constraint.processor(mx.array([1, 2]), logits)
    bad = tokenizer.encode("hello", add_special_tokens=False)[0]
    masked = constraint.processor(mx.array([1, 2, bad]), logits)  # no exception into the batch
    assert constraint.error and "broke the grammar" in constraint.error
    assert "\n" not in constraint.error
    assert set(np.flatnonzero(np.isfinite(np.array(masked)[0]))) == set(grammar_tokenizer.eos_ids)
    assert constraint.is_stopped() and not constraint.is_accepting()


def test_copies_are_independent_fresh_sequences(demo):
    _, tokenizer, grammar_tokenizer = demo
    first = constraint_for(schema_request(PERSON), grammar_tokenizer)
    first.advance(tokenizer.encode('{"name":"a"', add_special_tokens=False))
    second = first.copy()
    text, finish, _ = generate(demo, second, 1)
    assert finish == "stop"
    jsonschema.validate(json.loads(text), PERSON)
    assert first.tokens_consumed > 0 and not first.is_accepting()
