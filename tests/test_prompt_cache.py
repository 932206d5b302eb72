"""The prefix cache: its eviction policy (a table), its bounds, and an engine kept within them."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.models.cache import KVCache

from actors.generation.cache.prompt_cache import HALF_LIFE, Entry, PromptCache, victim, worth
from tests.test_engine import demo, make_engine, request  # noqa: F401 - fixtures

# (kind, hits, tokens, age) of two entries, and which one must be evicted first.
POLICY = [
    # A shared system prompt outlives fresh one-off conversations of any length.
    (("system", 0, 1000, 40), ("assistant", 0, 1000, 0), "b"),
    (("system", 0, 200, 40), ("assistant", 0, 3000, 0), "b"),
    # Reuse counts: a conversation reused often outranks an unused earlier turn.
    (("user", 0, 500, 0), ("assistant", 6, 500, 0), "a"),
    # Among equals, the older goes.
    (("assistant", 0, 100, 10), ("assistant", 0, 100, 0), "a"),
    # Length counts: of two unused one-offs stored together, the shorter goes.
    (("assistant", 0, 20, 0), ("assistant", 0, 2000, 0), "a"),
    # A system prompt nobody has sent for many half-lives gives way.
    (("system", 0, 1000, 8 * HALF_LIFE), ("assistant", 0, 1000, 0), "a"),
    # ... unless it earned it.
    (("system", 200, 1000, 8 * HALF_LIFE), ("assistant", 0, 1000, 0), "b"),
]


def entry(kind: str, hits: int, tokens: int, age: int, now: int = 10_000) -> Entry:
    return Entry(
        cache=[], tokens=list(range(tokens)), kind=kind, nbytes=0, hits=hits, used=now - age
    )


@pytest.mark.parametrize(("a", "b", "evicted"), POLICY)
def test_eviction_weighs_kind_hits_length_and_age(a, b, evicted):
    first, second = entry(*a), entry(*b)
    assert victim([first, second], 10_000) is (first if evicted == "a" else second)
    assert worth(first, 10_000) != worth(second, 10_000) or first.used != second.used


def kv(tokens: int, layers: int = 2) -> list[KVCache]:
    """A real mlx_lm cache holding ``tokens`` positions."""
    caches = []
    for _ in range(layers):
        cache = KVCache()
        cache.update_and_fetch(mx.zeros((1, 2, tokens, 8)), mx.zeros((1, 2, tokens, 8)))
        caches.append(cache)
    return caches


def test_a_burst_of_one_offs_never_pushes_out_a_system_prompt():
    cache = PromptCache("m", max_bytes=1 << 40, max_entries=8)
    system = list(range(1000, 1300))
    cache.keep(system, kv(300), kind="system")
    for i in range(100):
        cache.keep([5, i, *range(50)], kv(52))
        cache.trim()
        assert len(cache) <= 8
    got, rest = cache.nearest([*system, 7, 8, 9])
    assert got is not None and rest == [7, 8, 9]


def test_a_checkpoint_is_kept_when_its_conversation_finishes():
    cache = PromptCache("m", max_bytes=1 << 40, max_entries=8)
    system = list(range(1000, 1300))
    cache.keep(system, kv(300), kind="system")
    cache.keep([*system, 1, 2, 3], kv(303))  # the conversation, finished
    assert len(cache) == 2  # mlx_lm's LRUPromptCache would have dropped the system prefix
    cache.keep([*system, 1, 2, 3, 4, 5], kv(305))  # its next turn, finished
    assert len(cache) == 2  # the earlier finished one is a prefix: it only took room


def test_the_byte_bound_counts_the_running_sequences():
    running = [0]
    cache = PromptCache("m", max_bytes=10 * 8192, max_entries=64, active_bytes=lambda: running[0])
    one = sum(c.nbytes for c in kv(1))  # the buffer is allocated in steps of 256 positions
    for i in range(30):
        cache.keep([i, *range(100)], kv(101))
        cache.trim()
        assert cache.nbytes <= 10 * 8192
    assert len(cache) == (10 * 8192) // one
    running[0] = 4 * one
    cache.trim()
    assert cache.nbytes <= 6 * one


def test_an_exact_hit_gives_back_one_token_to_feed():
    cache = PromptCache("m", max_bytes=1 << 40, max_entries=8)
    cache.keep([1, 2, 3, 4], kv(4))
    got, rest = cache.nearest([1, 2, 3, 4])
    assert rest == [4] and got[0].offset == 3


def test_many_distinct_long_prompts_stay_within_the_bytes_bound(make_engine):  # noqa: F811
    bound = 2 * 1024 * 1024
    engine, events = make_engine(prompt_cache_bytes=bound)
    mx.synchronize()
    baseline = mx.get_active_memory()
    for i in range(16):
        prompt = f"Distinct long prompt number {i} about ships. " * 60
        engine.submit(request(f"r{i}", prompt=prompt, max_tokens=4))
        events.end(f"r{i}")
        vitals = engine.vitals()
        assert 0 < vitals["prompt_cache_bytes"] <= bound
    assert vitals["prompt_cache_entries"] < 16  # some were evicted to stay within it
    mx.synchronize()
    # What the engine holds once idle: the cache, and no more than the bound again in
    # transient buffers (MLX's allocator keeps freed ones apart, as cache memory).
    assert mx.get_active_memory() - baseline <= 2 * bound


def test_a_follower_rank_holds_what_rank_zero_holds():
    leader = PromptCache("m", max_bytes=6 * 8192, max_entries=4)
    follower = PromptCache("m", max_bytes=1, max_entries=1, decides=False)  # its own: ignored
    for i in range(12):
        kind = "system" if i % 5 == 0 else "assistant"
        for cache in (leader, follower):
            cache.keep([i, *range(60)], kv(61), kind=kind)
        leader.nearest([0, *range(60), 9])  # hits move the leader's choices
        assert follower.trim() == []
        follower.evict(leader.trim())
        assert follower.stats() == leader.stats()
        assert [e.tokens for e in follower._entries.values()] == [
            e.tokens for e in leader._entries.values()
        ]


def test_simultaneous_requests_prefill_a_new_system_prompt_once(demo, make_engine):  # noqa: F811
    from actors.protocol.messages import ChatMessage

    system = ChatMessage(role="system", content="You answer about the sea and its ships. " * 40)
    system_tokens = len(
        demo[1].apply_chat_template([{"role": "system", "content": system.content}])
    )
    users = [f"Question {i} about harbours?" for i in range(4)]

    def ask(rid: str, text: str):
        return request(rid, messages=[system, ChatMessage(role="user", content=text)], max_tokens=8)

    alone, alone_events = make_engine()  # each on its own: the reference output and cost
    for i, text in enumerate(users):
        alone.submit(ask(f"a{i}", text))
        alone_events.end(f"a{i}")
    first = alone_events.by_id["a0"][-1].usage

    engine, events = make_engine(start=False)
    for i, text in enumerate(users):
        engine.submit(ask(f"s{i}", text))
    engine.start()  # all four in the first plan
    ends = [events.end(f"s{i}") for i in range(4)]
    assert ends[0].usage.cached_tokens == 0
    assert all(e.usage.cached_tokens >= system_tokens for e in ends[1:]), ends
    prefilled = engine.vitals()["prompt_tokens"]
    user_part = first.prompt_tokens - system_tokens
    assert prefilled <= first.prompt_tokens + 3 * user_part, prefilled  # the system prompt once
    assert [events.tokens(f"s{i}") for i in range(4)] == [
        alone_events.tokens(f"a{i}") for i in range(4)
    ]
