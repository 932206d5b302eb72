"""The request patterns of ``ops/bench prefix``: what a prefix cache and a scheduler meet.

Each pattern drives one HTTP contender (``bench_servers.HttpContender``) and fills a dict
of named figures as it goes, so a pattern that fails half-way keeps what it measured.
Every system prompt is new to the server (its first words name the round and the
pattern), so "cold" is cold and "warm" is warm only through what the server kept.
"""

from __future__ import annotations

import asyncio
import random
import statistics
from dataclasses import dataclass

from bench_lib import Batch, Stream

WORDS = (
    "cluster node memory model token batch cache prefix stream request actor supervisor "
    "router group rank tensor shard layer weight prompt user system answer question fast "
    "slow quiet busy machine network socket thread queue budget chunk step watchdog health "
    "progress restart replica host port key value store reuse share compute once many"
).split()


@dataclass
class Prompts:
    """Texts of a known size in the model's tokens."""

    tokenizer: object  # mlx_lm TokenizerWrapper

    def system(self, name: str, tokens: int) -> str:
        """A system prompt of ``tokens`` tokens whose start is unique to ``name``."""
        rng = random.Random(name)
        text = f"[{name}] You are the assistant of a cluster named {name}."
        # Grown by half of what is missing (a word is 1-3 tokens), not made far too long at
        # once: the tokenizer warns about text longer than the model's context.
        while len(ids := self.tokenizer.encode(text, add_special_tokens=False)) < tokens:
            missing = tokens - len(ids)
            text += " " + " ".join(rng.choice(WORDS) for _ in range(missing // 2 + 1))
        return self.tokenizer.decode(ids[:tokens])

    @staticmethod
    def user(name: str) -> str:
        return f"Question {name}: how do the nodes of the cluster share this work?"


def conversation(system: str, user: str) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


@dataclass
class Settings:
    system_tokens: int  # the shared long system prompt
    users_tokens: int  # the simultaneous users' new system prompt
    tokens: int  # reply tokens of the TTFT patterns
    burst: int  # unrelated requests between warm and "after burst"
    burst_tokens: int
    follow_ups: int
    users: int


async def _all(coroutines) -> list:
    """gather, but a failure cancels the rest instead of leaving them streaming."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


def shared_prompt(c, p: Prompts, s: Settings, rnd: str, out: dict) -> None:
    """Cold; the same system prompt with a new user turn; the same after a burst."""
    system = p.system(f"shared-{rnd}", s.system_tokens)
    ask = lambda i: c.stream("", s.tokens, conversation(system, p.user(f"{rnd}-{i}")))  # noqa: E731
    out["cold"] = c.run(ask(0))
    out["warm"] = c.run(ask(1))
    tags = [f"burst-{rnd}-{i}" for i in range(s.burst)]
    c.run(_all(c.stream(t, s.burst_tokens) for t in tags))
    out["after burst"] = c.run(ask(2))


def while_decoding(c, p: Prompts, s: Settings, rnd: str, out: dict) -> None:
    """A new system prompt; each next user turn is sent when the previous first token arrives."""
    system = p.system(f"decoding-{rnd}", s.system_tokens)

    async def chain() -> list[Stream]:
        tasks = []
        try:
            for i in range(s.follow_ups + 1):
                arrived = asyncio.Event()
                messages = conversation(system, p.user(f"{rnd}-d{i}"))
                tasks.append(asyncio.ensure_future(c.stream("", s.tokens, messages, arrived.set)))
                if i < s.follow_ups:
                    waiter = asyncio.ensure_future(arrived.wait())
                    await asyncio.wait({tasks[-1], waiter}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    if tasks[-1].done():
                        tasks[-1].result()  # raises its error; a clean end first is a no-op
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()

    streams = c.run(chain())
    out["leader"] = streams[0]
    out["follow-ups"] = streams[1:]


def simultaneous_users(c, p: Prompts, s: Settings, rnd: str, out: dict) -> None:
    """``users`` requests at once, all with one new system prompt and their own user turn."""
    system = p.system(f"users-{rnd}", s.users_tokens)
    messages = [conversation(system, p.user(f"{rnd}-u{i}")) for i in range(s.users)]
    out["users"] = c.run(_all(c.stream("", s.tokens, m) for m in messages))


def concurrent(streams: int, tokens: int):
    def pattern(c, p: Prompts, s: Settings, rnd: str, out: dict) -> None:
        out[f"{streams} streams"] = c.concurrent(
            [f"c{streams}-{rnd}-{i}" for i in range(streams)], tokens
        )

    return pattern


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Figure:
    """One number a pattern yields, how to compare it, and the issue's target for it."""

    kind: str  # the pattern yielding it: shared, decoding, users, streams
    key: str
    label: str
    unit: str  # "s" (lower is better) or "tok/s"
    target: float | None = None  # on ours / mlx_lm.server; <= for s, >= for tok/s


def figures(streams: list[int], s: Settings) -> list[Figure]:
    sys_, users = f"{s.system_tokens}-token system prompt", f"{s.users_tokens}-token"
    return [
        Figure("shared", "cold", f"cold TTFT, {sys_}", "s"),
        Figure("shared", "warm", "warm TTFT: same system prompt, new user turn", "s"),
        Figure("shared", "after burst", f"warm TTFT after {s.burst} unrelated requests", "s"),
        Figure("decoding", "leader", f"cold TTFT, {sys_} (leader of the follow-ups)", "s"),
        Figure(
            "decoding", "first follow-up", "TTFT of the 1st follow-up (at leader's 1st token)", "s"
        ),
        Figure(
            "decoding",
            "follow-ups",
            f"TTFT, median of {s.follow_ups} follow-ups sent while decoding",
            "s",
            1.0,
        ),
        Figure(
            "users",
            "users",
            f"{s.users} users at once, one new {users} system prompt: last TTFT",
            "s",
            0.3,
        ),
        *(
            Figure("streams", f"{n} streams", f"{n} concurrent streams, aggregate", "tok/s", 1.0)
            for n in streams
        ),
    ]


def value(key: str, out: dict) -> tuple[float, list[int]] | None:
    """(the figure, the cached_tokens behind it) from a pattern's output, or None if absent."""
    if key == "first follow-up":
        got = out.get("follow-ups")
        return (got[0].ttft, [got[0].cached]) if got else None
    got = out.get(key)
    if got is None:
        return None
    if isinstance(got, Batch):
        return got.aggregate_tps, []
    if isinstance(got, Stream):
        return got.ttft, [got.cached]
    ttfts = [x.ttft for x in got]
    figure = max(ttfts) if key == "users" else statistics.median(ttfts)
    return figure, [x.cached for x in got]
