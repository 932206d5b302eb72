"""No 5xx from bad input: each hostile body gets a 400 naming its field, on a real supervisor.

Token-id keys that only look like digits, seeds past int64, schemas nested thousands deep,
stop lists past the cap, bytes that are not UTF-8 and prompts that cannot fit the context
each get a one-line 400 naming the field, in either dialect; and the server serves on.
"""

from __future__ import annotations

import httpx
import pytest

from tests.clients import post_chat

MODEL = "demo:tiny"
USER = [{"role": "user", "content": "hi"}]
CONTEXT = 4096  # the demo model's
BYTES_PER_TOKEN = 64  # supervisor.serving.service.BYTES_PER_TOKEN_CEILING


@pytest.fixture(scope="module")
def http(sup):
    with httpx.Client(base_url=sup.url, timeout=60) as client:
        yield client


def ollama_chat(http, **fields) -> httpx.Response:
    body = {"model": MODEL, "messages": USER, "stream": False, **fields}
    return http.post("/api/chat", json=body)


def refused(response: httpx.Response, field: str, param: str | None = "") -> str:
    """The 400's one-line message, checked to name ``field`` (and ``param``, if given)."""
    assert response.status_code == 400, response.text
    body = response.json()
    error = body["error"] if isinstance(body["error"], str) else body["error"]["message"]
    assert field in error and "\n" not in error, error
    if param != "" and not isinstance(body["error"], str):
        assert body["error"]["param"] == param, body
    return error


def nested(depth: int, leaf: str = '"x"') -> str:
    """A JSON schema ``depth`` objects deep, as text (Python's json would overflow first)."""
    return '{"type":"array","items":' * depth + leaf + "}" * depth


def raw(http, path: str, body: str) -> httpx.Response:
    return http.post(path, content=body.encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize("key", ["²", "٣", "1" * 5000, "-1", " 7", "0x1f", "1e3"])
def test_logit_bias_keys_must_be_ascii_token_ids(http, key):
    refused(post_chat(http, logit_bias={key: 1}), "logit_bias", "logit_bias")


def test_logit_bias_ids_and_values_out_of_range(http):
    refused(post_chat(http, logit_bias={"999999999": 1}), "logit_bias")  # past the demo's 2048
    refused(post_chat(http, logit_bias={"5": 101}), "logit_bias", "logit_bias")
    refused(post_chat(http, logit_bias={str(i): 1 for i in range(301)}), "logit_bias", "logit_bias")
    assert post_chat(http, logit_bias={"5": -100}, max_tokens=2).status_code == 200


@pytest.mark.parametrize("seed", [-1, 2**63, 2**64, 10**30])
def test_seed_outside_int64_is_refused(http, seed):
    refused(post_chat(http, seed=seed, max_tokens=2), "seed", "seed")
    refused(post_chat(http, seed=seed, n=3, max_tokens=2), "seed", "seed")


def test_the_largest_seed_with_n_choices_wraps_instead_of_overflowing(http):
    r = post_chat(http, seed=2**63 - 1, n=3, max_tokens=2)
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == 3


def test_ollama_seed_outside_int64_is_refused(http):
    refused(ollama_chat(http, options={"seed": 2**64, "num_predict": 2}), "options.seed")
    r = ollama_chat(http, options={"seed": -1, "num_predict": 2})  # Ollama's "random"
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("depth", [65, 900, 5000])
def test_a_response_format_schema_nested_deep_is_refused(http, depth):
    body = (
        f'{{"model":"{MODEL}","messages":[{{"role":"user","content":"hi"}}],'
        f'"response_format":{{"type":"json_schema","json_schema":{{"name":"x",'
        f'"schema":{nested(depth)}}}}}}}'
    )
    field = "response_format.json_schema.schema"
    message = refused(raw(http, "/v1/chat/completions", body), field, field)
    assert "64 levels" in message


@pytest.mark.parametrize("depth", [65, 5000])
def test_tool_parameters_nested_deep_are_refused(http, depth):
    tools = (
        '[{"type":"function","function":{"name":"ok"}},'
        f'{{"type":"function","function":{{"name":"f","parameters":{nested(depth)}}}}}]'
    )
    body = f'{{"model":"{MODEL}","messages":[{{"role":"user","content":"hi"}}],"tools":{tools}}}'
    field = "tools[1].function.parameters"
    refused(raw(http, "/v1/chat/completions", body), field, field)
    refused(raw(http, "/api/chat", body), field)


@pytest.mark.parametrize("depth", [65, 5000])
def test_an_ollama_format_nested_deep_is_refused(http, depth):
    body = f'{{"model":"{MODEL}","prompt":"hi","stream":false,"format":{nested(depth)}}}'
    message = refused(raw(http, "/api/generate", body), "format")
    assert "64 levels" in message


def test_a_schema_too_large_is_refused(http):
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(6000)}}
    format_ = {"type": "json_schema", "json_schema": {"name": "x", "schema": wide}}
    message = refused(
        post_chat(http, response_format=format_), "response_format.json_schema.schema"
    )
    assert "10000 nodes" in message


def test_a_body_nested_deep_elsewhere_names_its_field(http):
    body = f'{{"model":"{MODEL}","messages":[],"metadata":{{"a":{nested(5000)}}}}}'
    refused(raw(http, "/v1/chat/completions", body), "metadata", "metadata")


def test_ollama_stop_is_capped_as_on_the_openai_side(http):
    many = [f"s{i}" for i in range(5000)]
    refused(ollama_chat(http, options={"stop": many, "num_predict": 2}), "options.stop")
    refused(post_chat(http, stop=many[:5]), "stop", "stop")
    long = "x" * 257
    refused(ollama_chat(http, options={"stop": [long], "num_predict": 2}), "options.stop")
    refused(ollama_chat(http, options={"stop": long, "num_predict": 2}), "options.stop")
    refused(post_chat(http, stop=[long]), "stop", "stop[0]")
    ok = ollama_chat(http, options={"stop": ["a", "b", "c", "d"], "num_predict": 2})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_invalid_utf8_is_400(http, path):
    body = b'{"model":"demo:tiny","stream":false,"messages":[{"role":"user","content":"\xff\xfe"}]}'
    for headers in ({"content-type": "application/json"}, {}):
        message = refused(http.post(path, content=body, headers=headers), "UTF-8")
        assert message.startswith("request body")


def test_a_prompt_past_the_byte_bound_is_refused_before_any_actor(http, sup):
    before = sup.status()["requests_total"]
    size = CONTEXT * BYTES_PER_TOKEN + 1
    r = post_chat(http, messages=[{"role": "user", "content": "x" * size}])
    message = refused(r, "messages", "messages")
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert f"{size} bytes" in message and f"{CONTEXT} tokens" in message
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": "y" * size})
    assert refused(r, "prompt", "prompt")
    r = http.post("/api/generate", json={"model": MODEL, "prompt": "y" * size, "stream": False})
    assert refused(r, "messages")  # Ollama's prompt is the user turn of a chat
    assert sup.status()["requests_total"] == before  # never routed to a group


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_under_the_byte_bound_but_over_the_context_is_refused_by_its_tokens(http, stream):
    r = post_chat(http, messages=[{"role": "user", "content": "river " * 20000}], stream=stream)
    message = refused(r, "context")
    assert "the model's context is 4096" in message
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert post_chat(http, max_tokens=2).status_code == 200  # and serving goes on
