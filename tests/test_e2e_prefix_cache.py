"""End to end: a shared system prompt is reused whatever ran, or still runs, in between.

A real `supervisor start` on the demo model and the official openai client; the figure
checked is ``usage.prompt_tokens_details.cached_tokens``, which must cover the system
prompt (issue 10).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from actors.models.demo import ensure_demo_model
from tests.clients import chat, client_for
from tests.conftest import demo_hostfile, wait_for

MODEL = "demo:tiny"


@pytest.fixture(scope="module")
def tokenizer():
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(ensure_demo_model("tiny"))


def system_prompt(topic: str) -> str:
    """A long system prompt (some hundreds of tokens) nobody else sends."""
    rules = " ".join(f"Rule {i} about {topic}: answer briefly and stay polite." for i in range(40))
    return f"You are the {topic} assistant. {rules}"


def system_tokens(tokenizer, system: str) -> int:
    """How many tokens the templated system message alone is."""
    return len(tokenizer.apply_chat_template([{"role": "system", "content": system}]))


@pytest.fixture
def client(start_supervisor):
    running = start_supervisor(demo_hostfile(max_batch=32))
    running.wait_healthy()
    return client_for(running, timeout=120)


def test_a_system_prompt_survives_a_burst_of_unrelated_requests(client, tokenizer):
    system = system_prompt("gardening")
    first = chat(client, "How deep do I plant tulips?", system=system, temperature=0, max_tokens=4)
    assert first.usage.prompt_tokens > system_tokens(tokenizer, system)

    def unrelated(i: int):
        return client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Unrelated question number {i}: " * 8}],
            temperature=0,
            max_tokens=4,
        )

    with ThreadPoolExecutor(max_workers=36) as pool:
        burst = list(pool.map(unrelated, range(36)))
    assert all(r.choices[0].finish_reason in ("stop", "length") for r in burst)

    again = chat(client, "And daffodils?", system=system, temperature=0, max_tokens=4)
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert cached >= system_tokens(tokenizer, system), again.usage


def test_a_follow_up_reuses_the_system_prompt_while_the_first_still_decodes(client, tokenizer):
    system = system_prompt("astronomy")
    first_token = threading.Event()
    first_done = threading.Event()

    def long_first():
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "system", "content": system},
                {"role": "user", "content": "Tell me everything about Jupiter."},
            ],
            temperature=0,
            max_tokens=3000,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first_token.set()
        first_done.set()

    runner = threading.Thread(target=long_first, daemon=True)
    runner.start()
    wait_for(first_token.is_set, 60, "the first stream's first token")
    follow_up = chat(client, "And Saturn?", system=system, temperature=0, max_tokens=4)
    still_decoding = not first_done.is_set()
    cached = follow_up.usage.prompt_tokens_details.cached_tokens
    assert cached >= system_tokens(tokenizer, system), follow_up.usage
    assert still_decoding, "the first request ended before the follow-up: nothing was shown"
    runner.join(120)
    assert not runner.is_alive()


def test_simultaneous_users_of_a_new_system_prompt_prefill_it_once(client, tokenizer):
    system = system_prompt("sailing")

    def ask(i: int):
        return chat(
            client, f"Question {i}: which knot?", system=system, temperature=0, max_tokens=4
        )

    with ThreadPoolExecutor(max_workers=10) as pool:
        replies = list(pool.map(ask, range(10)))
    cached = sorted(r.usage.prompt_tokens_details.cached_tokens for r in replies)
    # The first to arrive prefills the system prompt; every other one starts from it,
    # whether it waited for that prefill or came after it.
    assert cached[0] == 0
    assert all(c >= system_tokens(tokenizer, system) for c in cached[1:]), cached
