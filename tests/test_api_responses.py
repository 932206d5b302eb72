"""Generation events -> OpenAI responses, stream chunks and error wording: pure functions."""

from __future__ import annotations

import json

import msgspec
import pytest

from actors.protocol.messages import (
    Finished,
    GenerationFailed,
    TokenDelta,
    TokenLogprob,
    ToolCall,
    TopLogprob,
    Usage,
)
from api.edge.choices import ChoiceResult
from api.edge.errors import describe_validation, retry_after_seconds
from api.openai.replies import (
    chat_response,
    completion_response,
    finish_reason,
    total_usage,
)
from api.openai.stream import ChatStreamAssembler, CompletionStreamAssembler

# --------------------------------------------------------------------------- #
# Events -> responses
# --------------------------------------------------------------------------- #

LP = [
    TokenLogprob(1, "Hi", -0.5, [TopLogprob(1, "Hi", -0.5), TopLogprob(2, "Yo", -1.0)]),
    TokenLogprob(3, "é", -0.25, [TopLogprob(3, "é", -0.25)]),
]
CALL = ToolCall(id="call_a", name="get_weather", arguments='{"city":"Oslo"}')


def result(*events) -> ChoiceResult:
    r = ChoiceResult()
    for e in events:
        r.add(e)
    return r


def plain(struct) -> dict:
    return msgspec.to_builtins(struct)


def test_chat_response_shape_and_usage():
    a = result(
        TokenDelta("r-0", "Hel", [1]),
        TokenDelta("r-0", "lo", [2]),
        Finished("r-0", "stop", Usage(5, 2, cached_tokens=3)),
    )
    b = result(TokenDelta("r-1", "Hey", [1]), Finished("r-1", "length", Usage(5, 7)))
    body = plain(chat_response("chatcmpl-1", "m", 123, [a, b], None))
    assert body["object"] == "chat.completion" and body["id"] == "chatcmpl-1"
    assert body["created"] == 123 and body["model"] == "m"
    assert body["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "Hello"},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert body["choices"][1]["finish_reason"] == "length"
    assert body["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 9,
        "total_tokens": 14,
        "prompt_tokens_details": {"cached_tokens": 3},
    }


def test_chat_logprobs_shape():
    r = result(TokenDelta("r", "Hié", [1, 3], logprobs=LP), Finished("r", "stop", Usage(1, 2)))
    body = plain(chat_response("c", "m", 0, [r], 1))
    content = body["choices"][0]["logprobs"]["content"]
    assert content[0] == {
        "token": "Hi",
        "logprob": -0.5,
        "bytes": [72, 105],
        "top_logprobs": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105]}],
    }
    assert content[1]["bytes"] == [0xC3, 0xA9]


def test_chat_tool_calls_dedup_and_finish_reason():
    r = result(
        TokenDelta("r", "", [], tool_calls=[CALL]),
        Finished("r", "stop", Usage(1, 1), tool_calls=[CALL]),
    )
    choice = plain(chat_response("c", "m", 0, [r], None))["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
            }
        ],
    }


def test_empty_answer_has_empty_string_content():
    r = result(Finished("r", "stop", Usage(1, 0)))
    assert plain(chat_response("c", "m", 0, [r], None))["choices"][0]["message"]["content"] == ""


@pytest.mark.parametrize(
    ("reason", "calls", "expected"),
    [
        ("stop", False, "stop"),
        ("length", False, "length"),
        ("stop", True, "tool_calls"),
        ("tool_calls", True, "tool_calls"),
        ("length", True, "length"),
        ("cancelled", False, "stop"),
    ],
)
def test_finish_reason(reason, calls, expected):
    assert finish_reason(reason, calls) == expected


def test_completion_response_with_logprobs():
    r = result(TokenDelta("r", "Hié", [1, 3], logprobs=LP), Finished("r", "stop", Usage(4, 2)))
    body = plain(completion_response("cmpl-1", "m", 9, [r], 1))
    assert body["object"] == "text_completion"
    choice = body["choices"][0]
    assert choice["text"] == "Hié" and choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["logprobs"] == {
        "tokens": ["Hi", "é"],
        "token_logprobs": [-0.5, -0.25],
        "top_logprobs": [{"Hi": -0.5}, {"é": -0.25}],
        "text_offset": [0, 2],
    }
    assert body["usage"]["total_tokens"] == 6


def test_total_usage_of_nothing():
    assert total_usage([]).total_tokens == 0


def test_failure_is_recorded():
    r = result(TokenDelta("r", "x", [1]), GenerationFailed("r", "boom", status=503))
    assert r.failure.message == "boom" and r.finish_reason is None


# --------------------------------------------------------------------------- #
# Events -> SSE chunks
# --------------------------------------------------------------------------- #


def frames_json(frames: list[bytes]) -> list:
    out = []
    for f in frames:
        assert f.startswith(b"data: ") and f.endswith(b"\n\n")
        data = f[6:-2]
        out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return out


def test_chat_stream_sequence_with_usage():
    asm = ChatStreamAssembler("chatcmpl-s", "m", 1, 2, include_usage=True)
    frames = asm.opening()
    frames += asm.on_event(1, TokenDelta("r-1", "B", [1]))
    frames += asm.on_event(0, TokenDelta("r-0", "A", [1]))
    frames += asm.on_event(0, TokenDelta("r-0", "", []))  # nothing new: no chunk
    frames += asm.on_event(0, Finished("r-0", "stop", Usage(3, 1)))
    assert not asm.done
    frames += asm.on_event(1, Finished("r-1", "length", Usage(3, 1)))
    assert asm.done
    frames += asm.closing()
    chunks = frames_json(frames)
    assert chunks[-1] == "[DONE]"
    assert [c["choices"][0]["delta"] for c in chunks[:2]] == [
        {"role": "assistant", "content": ""}
    ] * 2
    assert [c["choices"][0]["index"] for c in chunks[:2]] == [0, 1]
    assert chunks[2]["choices"][0] == {
        "index": 1,
        "delta": {"content": "B"},
        "logprobs": None,
        "finish_reason": None,
    }
    assert (
        chunks[4]["choices"][0]["finish_reason"] == "stop"
        and chunks[4]["choices"][0]["delta"] == {}
    )
    assert chunks[5]["choices"][0]["finish_reason"] == "length"
    usage_chunk = chunks[6]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 2
    assert all(
        c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-s" for c in chunks[:-1]
    )
    assert "usage" not in chunks[2]


def test_chat_stream_without_usage_ends_with_done():
    asm = ChatStreamAssembler("c", "m", 1, 1)
    asm.on_event(0, Finished("r", "stop", Usage(1, 1)))
    assert frames_json(asm.closing()) == ["[DONE]"]


def test_chat_stream_tool_calls_sent_once_with_indices():
    other = ToolCall(id="call_b", name="now", arguments="{}")
    asm = ChatStreamAssembler("c", "m", 1, 1)
    first = frames_json(asm.on_event(0, TokenDelta("r", "", [], tool_calls=[CALL])))
    last = frames_json(
        asm.on_event(0, Finished("r", "stop", Usage(1, 1), tool_calls=[CALL, other]))
    )
    assert first[0]["choices"][0]["delta"]["tool_calls"] == [
        {
            "index": 0,
            "id": "call_a",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
        }
    ]
    assert [t["index"] for t in last[0]["choices"][0]["delta"]["tool_calls"]] == [1]
    assert last[1]["choices"][0]["finish_reason"] == "tool_calls"


def test_chat_stream_logprobs_only_when_asked():
    asked = ChatStreamAssembler("c", "m", 1, 1, top_logprobs=0)
    [chunk] = frames_json(asked.on_event(0, TokenDelta("r", "Hi", [1], logprobs=LP[:1])))
    assert chunk["choices"][0]["logprobs"]["content"][0]["top_logprobs"] == []
    silent = ChatStreamAssembler("c", "m", 1, 1)
    [chunk] = frames_json(silent.on_event(0, TokenDelta("r", "Hi", [1], logprobs=LP[:1])))
    assert chunk["choices"][0]["logprobs"] is None


def test_stream_failure_is_an_error_event_then_done():
    asm = ChatStreamAssembler("c", "m", 1, 2)
    frames = frames_json(asm.on_event(1, GenerationFailed("r-1", "replica lost", status=503)))
    assert asm.done and asm.failed
    assert frames[0]["error"]["message"] == "replica lost"
    assert frames[0]["error"]["type"] == "service_unavailable_error"
    assert frames[1] == "[DONE]"


def test_completion_stream_offsets_and_usage():
    asm = CompletionStreamAssembler("cmpl-s", "m", 1, 1, top_logprobs=1, include_usage=True)
    frames = asm.on_event(0, TokenDelta("r", "Hi", [1], logprobs=LP[:1]))
    frames += asm.on_event(0, TokenDelta("r", "é", [3], logprobs=LP[1:]))
    frames += asm.on_event(0, Finished("r", "stop", Usage(2, 2)))
    frames += asm.closing()
    chunks = frames_json(frames)
    assert [c["object"] for c in chunks[:-1]] == ["text_completion"] * 4
    assert chunks[0]["choices"][0]["logprobs"]["text_offset"] == [0]
    assert chunks[1]["choices"][0]["logprobs"]["text_offset"] == [2]
    assert chunks[2]["choices"][0] == {
        "index": 0,
        "text": "",
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert chunks[3]["choices"] == [] and chunks[3]["usage"]["total_tokens"] == 4


# --------------------------------------------------------------------------- #
# Error wording
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("message", "key", "expected"),
    [
        (
            "Expected `float` <= 2.0",
            "temperature",
            ("temperature: expected a number <= 2.0", "temperature"),
        ),
        ("Expected `int` >= 1", "n", ("n: expected an integer >= 1", "n")),
        (
            "Expected `array`, got `str`",
            "messages",
            ("messages: expected an array, got a string", "messages"),
        ),
        (
            "Expected `str | array | null`, got `int`",
            "messages[0].content",
            (
                "messages[0].content: expected a string, an array or null, got an integer",
                "messages[0].content",
            ),
        ),
        (
            "Object missing required field `messages`",
            "data",
            ("messages: required field is missing", "messages"),
        ),
        (
            "Object missing required field `role`",
            "messages[2]",
            ("messages[2].role: required field is missing", "messages[2].role"),
        ),
        (
            "Invalid enum value 'bob'",
            "messages[0].role",
            ("messages[0].role: invalid value 'bob'", "messages[0].role"),
        ),
        (
            "Expected `float` <= 100.0",
            "logit_bias[...]",
            ("logit_bias: expected a number <= 100.0", "logit_bias"),
        ),
        (
            "Expected `object`, got `array`",
            "data",
            ("request body: expected a JSON object, got an array", None),
        ),
        ("'data'", "data", ("request body is missing; send a JSON object", None)),
    ],
)
def test_validation_messages(message, key, expected):
    assert describe_validation(message, key) == expected


@pytest.mark.parametrize(
    ("given", "header"), [(None, "1"), (0, "1"), (0.2, "1"), (2.5, "3"), (7, "7")]
)
def test_retry_after(given, header):
    assert retry_after_seconds(given) == header
