"""ToolCallReader: content and tool calls split out of decoded text, whatever the chunking."""

from __future__ import annotations

import json
import re

import pytest
from mlx_lm.tool_parsers import json_tools, qwen3_coder

from actors.generation.requests.tool_calls import ToolCallReader, call_id

TOOLS = [
    {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
]
ADD = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
WEATHER = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


def reader(**options) -> ToolCallReader:
    return ToolCallReader("req-1", TOOLS, parse=json_tools.parse_tool_call, **options)


def read(text: str, pieces: int = 1, **options) -> tuple[str, ToolCallReader]:
    """Feed ``text`` cut into ``pieces`` nearly equal parts, then close; returns the content."""
    r = reader(**options)
    size = max(1, -(-len(text) // pieces))
    content = "".join(r.feed(text[i : i + size]) for i in range(0, len(text), size))
    return content + r.close(), r


def calls(r: ToolCallReader) -> list[tuple[str, dict]]:
    return [(c.name, json.loads(c.arguments)) for c in r.calls]


@pytest.mark.parametrize("pieces", [1, 3, 7, 1000])
def test_content_and_calls_split_the_same_way_however_text_arrives(pieces):
    text = "Let me add.\n" + ADD + "\n" + WEATHER + "\n"
    content, r = read(text, pieces)
    assert content == "Let me add."
    assert calls(r) == [("add", {"a": 1, "b": 2}), ("get_weather", {"city": "Oslo"})]
    assert [c.id for c in r.calls] == [call_id("req-1", 0), call_id("req-1", 1)]


def test_call_ids_look_random_and_are_stable_per_request_and_index():
    assert re.fullmatch(r"call_[0-9a-f]{24}", call_id("req-1", 0))
    assert call_id("req-1", 0) == call_id("req-1", 0) != call_id("req-1", 1)
    assert call_id("req-1", 0) != call_id("req-2", 0)


def test_a_reply_of_calls_only_has_no_content():
    content, r = read("\n" + ADD + "\n\n" + WEATHER + "  \n", pieces=5)
    assert content == "" and len(r.calls) == 2


def test_plain_text_is_released_untouched_whitespace_included():
    text = "  two spaces lead, a newline ends <b>tags</b> and < signs\n"
    for pieces in (1, 4, len(text)):
        assert read(text, pieces)[0] == text


@pytest.mark.parametrize(
    "block",
    [
        "<tool_call>\nnot json at all\n</tool_call>",
        '<tool_call>\n{"name": "fly", "arguments": {}}\n</tool_call>',  # undeclared function
        '<tool_call>\n{"name": "add", "arguments": [1, 2]}\n</tool_call>',  # not an object
        '<tool_call>\n{"name": "add", "arguments": "{oops"}\n</tool_call>',
        "<tool_call></tool_call>",
    ],
)
def test_a_block_that_is_not_a_valid_call_stays_content(block):
    text = "before " + block + " after"
    content, r = read(text, pieces=4)
    assert content == text and r.calls == []


def test_an_unfinished_block_is_a_call_if_its_body_is_complete_else_content():
    content, r = read(ADD.removesuffix("</tool_call>"))
    assert content == "" and calls(r) == [("add", {"a": 1, "b": 2})]
    cut = 'x <tool_call>\n{"name": "add", "argu'  # max_tokens ended it mid-call
    content, r = read(cut, pieces=3)
    assert content == cut and r.calls == []


def test_a_partial_marker_is_held_until_it_is_known():
    r = reader()
    assert r.feed("sum: <tool") == "sum:"
    assert r.feed("box>") == " <toolbox>"
    assert r.feed(" <tool_") == ""
    assert r.close() == " <tool_"


def test_arguments_given_as_a_json_string_are_kept_as_sent():
    block = '<tool_call>\n{"name": "add", "arguments": "{\\"a\\": 1}"}\n</tool_call>'
    _, r = read(block)
    assert r.calls[0].arguments == '{"a": 1}'


def test_one_call_only_without_parallel_calls():
    r = reader(max_calls=1)
    assert r.feed(ADD + "\n" + WEATHER) == ""
    assert r.done and calls(r) == [("add", {"a": 1, "b": 2})]
    assert r.feed("more") == "" and r.close() == ""


def test_new_calls_are_taken_once_and_replayed_ones_never():
    r = reader()
    r.replay("Sure." + ADD)  # another group streamed these already
    assert not r.has_new_calls and len(r.calls) == 1
    assert r.feed("\n" + WEATHER) == ""
    assert [c.name for c in r.take_new_calls()] == ["get_weather"]
    assert r.take_new_calls() == []
    assert [c.id for c in r.calls] == [call_id("req-1", 0), call_id("req-1", 1)]


def test_the_models_own_parser_first_then_the_json_that_grammars_write():
    xml = (
        "<tool_call>\n<function=add>\n<parameter=a>\n1\n</parameter>\n"
        "<parameter=b>\n2\n</parameter>\n</function>\n</tool_call>"
    )
    tools = [
        {
            "type": "function",
            "function": {
                "name": "add",
                "parameters": {
                    "type": "object",
                    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                },
            },
        }
    ]
    r = ToolCallReader("r", tools, parse=qwen3_coder.parse_tool_call)
    r.feed(xml + "\n" + ADD)
    r.close()
    assert [(c.name, json.loads(c.arguments)) for c in r.calls] == [("add", {"a": 1, "b": 2})] * 2
