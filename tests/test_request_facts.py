"""What the history needs to know of a request comes with it: its dialect, its endpoint, and
(only with history.keep_prompts) its prompt. The API sets them; the service states them."""

from __future__ import annotations

import msgspec
import pytest

from actors.protocol.messages import ChatMessage, GenerationRequest
from api.ollama.protocol import ChatRequest, GenerateRequest
from api.ollama.translate import chat_to_generation as ollama_chat
from api.ollama.translate import generate_to_generation
from api.openai.protocol import ChatCompletionRequest, CompletionRequest
from api.openai.translate import chat_to_generation, completion_to_generation
from supervisor.config.spec import HistorySpec
from supervisor.serving.contract import Unavailable
from supervisor.serving.service import ClusterService, last_prompt
from supervisor.state import ClusterState
from supervisor.state.events import GroupDeclared, GroupState, RequestAdmitted

USER = [{"role": "user", "content": "hi"}]


def body(kind, **fields):
    return msgspec.convert({"model": "m", **fields}, kind)


@pytest.mark.parametrize(
    ("made", "dialect", "endpoint"),
    [
        (lambda: chat_to_generation(body(ChatCompletionRequest, messages=USER), "c")[0],
         "openai", "/v1/chat/completions"),
        (lambda: completion_to_generation(body(CompletionRequest, prompt="hi"), "c")[0],
         "openai", "/v1/completions"),
        (lambda: ollama_chat(body(ChatRequest, messages=USER), "o", "m"),
         "ollama", "/api/chat"),
        (lambda: generate_to_generation(body(GenerateRequest, prompt="hi"), "o", "m"),
         "ollama", "/api/generate"),
        (lambda: generate_to_generation(body(GenerateRequest, prompt="hi", raw=True), "o", "m"),
         "ollama", "/api/generate"),
    ],
)  # fmt: skip
def test_every_translation_names_its_dialect_and_endpoint(made, dialect, endpoint):
    request = made()
    assert (request.dialect, request.endpoint) == (dialect, endpoint)


def test_fan_out_keeps_them_on_every_choice():
    choices = chat_to_generation(body(ChatCompletionRequest, messages=USER, n=2), "c")
    assert {(c.dialect, c.endpoint) for c in choices} == {("openai", "/v1/chat/completions")}


def test_the_prompt_kept_is_the_raw_prompt_or_the_last_user_message():
    chat = [ChatMessage("system", "be brief"), ChatMessage("user", "one"),
            ChatMessage("assistant", "ok"), ChatMessage("user", "two")]  # fmt: skip
    assert last_prompt(GenerationRequest("r", "m", messages=chat)) == "two"
    assert last_prompt(GenerationRequest("r", "m", prompt="raw")) == "raw"
    assert last_prompt(GenerationRequest("r", "m", messages=[ChatMessage("system", "s")])) == ""


class Group:
    def __init__(self, state: ClusterState):
        self.name, self.model = "a", "m"
        state.apply(GroupDeclared("a", "m", ["n"], "none", "ring"))
        state.apply(GroupState("a", "failed", "gave up"))


@pytest.mark.parametrize("keep", [False, True])
async def test_the_service_states_them_on_admission(keep):
    state = ClusterState(history=HistorySpec(keep_prompts=keep))
    svc = ClusterService(state, [Group(state)], queue_limit=4, ready_wait=0.1)
    before = state.seq
    request = GenerationRequest(
        "r", "m", messages=[ChatMessage("user", "secret")], dialect="ollama", endpoint="/api/chat"
    )
    with pytest.raises(Unavailable):
        await svc.submit(request)
    admitted = [e for _, e in state._log.since(before) if isinstance(e, RequestAdmitted)]
    assert admitted == [
        RequestAdmitted("r", "m", "ollama", "/api/chat", "secret" if keep else None)
    ]
    (record,) = state.requests()
    assert (record.status, record.endpoint, record.prompt) == (
        "error", "/api/chat", "secret" if keep else None
    )  # fmt: skip
