"""The optional API key, through a real `supervisor start`: hostfile key or $MLXS_API_KEY."""

from __future__ import annotations

import httpx
import ollama
import openai
import pytest

from tests.conftest import demo_hostfile

MODEL = "demo:tiny"
USER = [{"role": "user", "content": "hi"}]
DENIED = "missing or wrong API key; send the header 'Authorization: Bearer <key>'"


def assert_guarded(url: str, key: str) -> None:
    """/v1 and /api refuse a missing or wrong key, each in its own shape; probes stay open."""
    with httpx.Client(base_url=url, timeout=30) as raw:
        v1 = raw.get("/v1/models")
        api = raw.post("/api/chat", json={"model": MODEL, "messages": USER, "stream": False})
        tags = raw.get("/api/tags", headers={"Authorization": "Bearer not-the-key"})
        assert raw.get("/health").status_code == 200
        assert raw.get("/").text == "Ollama is running"
    assert v1.status_code == 401 and v1.headers["www-authenticate"] == "Bearer"
    assert v1.json()["error"]["code"] == "invalid_api_key"
    assert v1.json()["error"]["message"] == DENIED
    assert (api.status_code, api.json()) == (401, {"error": DENIED})
    assert (tags.status_code, tags.json()) == (401, {"error": DENIED})

    wrong = openai.OpenAI(base_url=url + "/v1", api_key=key + "x", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    right = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)
    assert [m.id for m in right.models.list().data] == [MODEL]
    reply = right.chat.completions.create(model=MODEL, messages=USER, max_tokens=4)
    assert reply.choices[0].finish_reason in ("stop", "length")

    client = ollama.Client(host=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert [m.model for m in client.list().models] == [MODEL]
    assert client.chat(model=MODEL, messages=USER, options={"num_predict": 4}).done


def test_key_from_the_environment(start_supervisor):
    sup = start_supervisor(demo_hostfile(), env={"MLXS_API_KEY": "sk-from-env"})
    sup.wait_healthy()
    assert_guarded(sup.url, "sk-from-env")


def test_hostfile_key_wins_over_the_environment(start_supervisor):
    sup = start_supervisor(demo_hostfile(api_key="sk-from-file"), env={"MLXS_API_KEY": "sk-env"})
    sup.wait_healthy()
    assert_guarded(sup.url, "sk-from-file")
    with httpx.Client(base_url=sup.url) as raw:
        env_key = raw.get("/api/tags", headers={"Authorization": "Bearer sk-env"})
    assert env_key.status_code == 401
