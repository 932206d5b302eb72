"""Routing decisions as pure functions: policies, model filter, sessions, cooldowns."""

from __future__ import annotations

import pytest

from actors.protocol.messages import ChatMessage, GenerationRequest
from supervisor.serving.router import (
    Ask,
    GroupLoad,
    Hardware,
    RouterBook,
    RouterConfig,
    RouterMemory,
    Session,
    capacity,
    choose_group,
    combine_hardware,
    headroom,
    parse_chip,
    session_key,
)
from supervisor.state.folds.router_stats import RouterStats, percentile

M = "model-a"
NOW = 1000.0


def g(name: str, in_flight: int = 0, queued: int = 0, *, model: str = M, ready=True, **hw):
    return GroupLoad(name, model, ready, in_flight, queued, Hardware(**hw))


def pick(groups, policy="least_loaded", memory=None, now=NOW, **ask):
    config = RouterConfig(policy=policy, session_ttl=60.0, cooldown=5.0)
    ask = Ask(ask.pop("model", M), **ask)
    return choose_group(groups, ask, memory or RouterMemory(), config, now)


# --------------------------------------------------------------------------- least_loaded


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        ([g("a", 2), g("b", 1), g("c", 3)], "b"),
        ([g("a", 1, 900), g("b", 1, 100)], "b"),  # same requests: fewer queued tokens
        ([g("b"), g("a")], "a"),  # a tie goes to the name, whatever the order given
        ([g("a", 0, 5000), g("b", 1, 0)], "a"),  # requests first, then tokens
        ([g("a", 0, ready=False), g("b", 7)], "b"),  # not ready: never chosen
        ([g("a", 0, model="other"), g("b", 9)], "b"),  # another model: never chosen
    ],
)
def test_least_loaded(groups, expected):
    decision = pick(groups)
    assert (decision.group, decision.reason) == (expected, "least_loaded")


@pytest.mark.parametrize("policy", ["least_loaded", "round_robin", "hardware_aware", "sticky"])
def test_no_ready_group_of_the_model_is_no_decision(policy):
    groups = [g("a", ready=False), g("b", model="other")]
    decision = pick(groups, policy, session="s")
    assert decision.group is None and decision.reason == "no ready group"
    assert pick([], policy).group is None


@pytest.mark.parametrize("policy", ["least_loaded", "round_robin", "hardware_aware", "sticky"])
def test_model_aware_only_groups_serving_the_model(policy):
    groups = [g("x1", model="x"), g("y1", model="y"), g("x2", 5, model="x")]
    for _ in range(5):
        assert pick(groups, policy, model="y").group == "y1"
        assert pick(groups, policy, model="x").group in ("x1", "x2")


def test_least_loaded_ties_take_turns():
    book = RouterBook(RouterConfig())
    chosen = []
    for _ in range(5):  # requests that end before the next arrives: loads are always equal
        ask = Ask(M)
        decision = choose_group([g("b"), g("a"), g("c")], ask, book.memory(), book.config, NOW)
        book.record(ask, decision, NOW)
        chosen.append(decision.group)
    assert chosen == ["a", "b", "c", "a", "b"]
    memory = RouterMemory(cursors={M: "b"})
    assert pick([g("a"), g("b"), g("c", 1)], memory=memory).group == "a"  # c is busier


def test_excluded_groups_are_never_chosen():
    groups = [g("a"), g("b", 9), g("c", 9)]
    assert pick(groups, exclude=frozenset({"a"})).group == "b"
    assert pick(groups, exclude=frozenset({"a", "b", "c"})).group is None


# --------------------------------------------------------------------------- round_robin


def turns(groups, n, model=M, book=None):
    book = book or RouterBook(RouterConfig(policy="round_robin"))
    chosen = []
    for _ in range(n):
        ask = Ask(model)
        decision = choose_group(groups, ask, book.memory(), book.config, NOW)
        book.record(ask, decision, NOW)
        chosen.append(decision.group)
    return chosen


def test_round_robin_takes_turns_in_name_order_and_wraps():
    groups = [g("c", 9), g("a"), g("b", 3)]
    assert turns(groups, 7) == ["a", "b", "c", "a", "b", "c", "a"]


def test_round_robin_keeps_its_turn_when_a_group_leaves_or_joins():
    book = RouterBook(RouterConfig(policy="round_robin"))
    assert turns([g("a"), g("b"), g("c")], 2, book=book) == ["a", "b"]
    assert turns([g("a"), g("c")], 1, book=book) == ["c"]  # b left: c is next, not a
    assert turns([g("a"), g("b"), g("c"), g("d")], 2, book=book) == ["d", "a"]


def test_round_robin_turns_are_per_model():
    book = RouterBook(RouterConfig(policy="round_robin"))
    groups = [g("a1"), g("a2"), g("b1", model="b"), g("b2", model="b")]
    seq = []
    for model in [M, "b", M, "b", M]:
        seq += turns(groups, 1, model=model, book=book)
    assert seq == ["a1", "b1", "a2", "b2", "a1"]


# --------------------------------------------------------------------------- hardware_aware


@pytest.mark.parametrize(
    ("chip", "expected"),
    [
        ("Apple M2 Ultra", (2, "ultra")),
        ("M4 Max", (4, "max")),
        ("m3 pro", (3, "pro")),
        ("M1", (1, "")),
        ("Apple M10", (10, "")),
        ("Intel Xeon", (1, "")),
        (None, (1, "")),
        ("", (1, "")),
    ],
)
def test_parse_chip(chip, expected):
    assert parse_chip(chip) == expected


def test_capacity_grows_with_cores_and_generation():
    assert capacity(Hardware("M1", 10)) == 10
    assert capacity(Hardware("M3", 10)) == pytest.approx(13)
    assert capacity(Hardware("M2 Ultra")) > capacity(Hardware("M2 Max")) > capacity(Hardware("M2"))
    assert capacity(Hardware()) == 8  # nothing known: a base M1


@pytest.mark.parametrize(
    ("free", "expected"), [(None, 1.0), (0.5, 1.0), (0.2, 1.0), (0.1, 0.5), (0.0, 0.05)]
)
def test_headroom(free, expected):
    assert headroom(Hardware(memory_free=free)) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        ([g("slow", chip="M1", gpu_cores=8), g("fast", chip="M4 Max", gpu_cores=40)], "fast"),
        # The big machine is busy enough that the idle small one scores higher.
        (
            [g("big", 12, chip="M2 Ultra", gpu_cores=76), g("small", 0, chip="M2", gpu_cores=10)],
            "small",
        ),
        (
            [g("big", 3, chip="M2 Ultra", gpu_cores=76), g("small", 0, chip="M2", gpu_cores=10)],
            "big",
        ),
        # Same chip: the one running out of memory loses.
        (
            [
                g("full", chip="M3 Max", memory_free=0.02),
                g("roomy", chip="M3 Max", memory_free=0.6),
            ],
            "roomy",
        ),
        # Same score: more memory, then the name.
        ([g("b", chip="M2", memory_gb=64), g("a", chip="M2", memory_gb=32)], "b"),
        ([g("b", chip="M2"), g("a", chip="M2")], "a"),
        # Queued tokens count as load too.
        ([g("a", 1, 4096, chip="M2"), g("b", 1, 0, chip="M2")], "b"),
    ],
)
def test_hardware_aware(groups, expected):
    decision = pick(groups, "hardware_aware")
    assert (decision.group, decision.reason) == (expected, "hardware_aware")


def test_hardware_aware_spreads_load_in_proportion_to_capacity():
    big = dict(chip="M2 Ultra", gpu_cores=60)
    small = dict(chip="M2", gpu_cores=20)
    load = {"big": 0, "small": 0}
    for _ in range(40):
        chosen = pick(
            [g("big", load["big"], **big), g("small", load["small"], **small)], "hardware_aware"
        ).group
        load[chosen] += 1
    assert load["big"] == 30 and load["small"] == 10


def test_combine_hardware_of_a_multi_host_group():
    combined = combine_hardware(
        [Hardware("M4 Max", 40, 128, 0.5), Hardware("M2 Ultra", 76, 192, 0.3), Hardware()]
    )
    assert combined == Hardware("M2 Ultra", 116, 320, 0.3)
    assert combine_hardware([]) == Hardware()
    assert combine_hardware([Hardware(), Hardware()]) == Hardware()


# --------------------------------------------------------------------------- sticky


def test_sticky_keeps_a_session_on_its_group_while_healthy():
    book = RouterBook(RouterConfig(policy="sticky", session_ttl=60.0))
    groups = [g("a"), g("b")]
    first = choose_group(groups, Ask(M, "s1"), book.memory(), book.config, NOW)
    assert (first.group, first.reason) == ("a", "least_loaded")
    book.record(Ask(M, "s1"), first, NOW)
    busier = [g("a", 10), g("b")]  # least_loaded alone would move it
    again = choose_group(busier, Ask(M, "s1"), book.memory(), book.config, NOW + 30)
    assert (again.group, again.reason) == ("a", "sticky")
    assert again.session == Session("a", NOW + 30)  # use refreshes the TTL
    other = choose_group(busier, Ask(M, "s2"), book.memory(), book.config, NOW + 30)
    assert other.group == "b"


@pytest.mark.parametrize(
    ("groups", "memory", "now", "expected", "reason"),
    [
        # Expired: placed afresh.
        (
            [g("a", 5), g("b")],
            RouterMemory({"s": Session("a", NOW - 61)}),
            NOW,
            "b",
            "least_loaded",
        ),
        # Within TTL.
        ([g("a", 5), g("b")], RouterMemory({"s": Session("a", NOW - 59)}), NOW, "a", "sticky"),
        # Its group is not ready: moves.
        (
            [g("a", ready=False), g("b", 5)],
            RouterMemory({"s": Session("a", NOW)}),
            NOW,
            "b",
            "least_loaded",
        ),
        # Its group left the cluster: moves.
        ([g("b", 5), g("c", 6)], RouterMemory({"s": Session("a", NOW)}), NOW, "b", "least_loaded"),
        # Its group is cooling down after a failure: moves.
        (
            [g("a"), g("b", 5)],
            RouterMemory({"s": Session("a", NOW)}, cooldowns={"a": NOW + 3}),
            NOW,
            "b",
            "least_loaded",
        ),
        # Bound to a group of another model (same session, other model): placed afresh.
        (
            [g("a", 5), g("b"), g("x", model="x")],
            RouterMemory({"s": Session("x", NOW)}),
            NOW,
            "b",
            "least_loaded",
        ),
    ],
)
def test_sticky_moves_when_its_group_is_not_healthy(groups, memory, now, expected, reason):
    decision = pick(groups, "sticky", memory, now, session="s")
    assert (decision.group, decision.reason) == (expected, reason)
    assert decision.session == Session(expected, now)


def test_sessions_bind_only_under_the_sticky_policy():
    memory = RouterMemory({"s": Session("a", NOW)})
    assert pick([g("a", 5), g("b")], "least_loaded", memory, session="s").group == "b"
    assert pick([g("a", 5), g("b")], "least_loaded", session="s").session is None
    assert pick([g("a", 5), g("b")], "sticky").session is None  # no key, nothing to keep


def test_book_records_sessions_and_prunes_expired_ones():
    book = RouterBook(RouterConfig(policy="sticky", session_ttl=10.0))
    for i in range(5):
        ask = Ask(M, f"s{i}")
        book.record(ask, choose_group([g("a")], ask, book.memory(), book.config, i), float(i))
    assert set(book.sessions) == {f"s{i}" for i in range(5)}
    book.cool("a", 0.0)
    book.prune(12.5)  # s0..s2 idle for more than 10 s; the cooldown ended at 5
    assert set(book.sessions) == {"s3", "s4"} and book.cooldowns == {}
    book.forget_group("a")
    assert book.sessions == {}


def test_book_prunes_by_itself_as_decisions_go_by():
    book = RouterBook(RouterConfig(policy="sticky", session_ttl=1.0))
    for i in range(RouterBook.PRUNE_EVERY + 1):
        ask = Ask(M, f"s{i}")
        now = float(i)
        book.record(ask, choose_group([g("a")], ask, book.memory(), book.config, now), now)
    assert len(book.sessions) < 5


def msgs(*pairs):
    return [ChatMessage(role, content) for role, content in pairs]


def test_session_key_names_a_conversation_across_its_turns():
    turn1 = GenerationRequest("r1", M, messages=msgs(("system", "be brief"), ("user", "hi")))
    turn2 = GenerationRequest(
        "r2",
        M,
        messages=msgs(("system", "be brief"), ("user", "hi"), ("assistant", "yo"), ("user", "?")),
    )
    other = GenerationRequest("r3", M, messages=msgs(("system", "be brief"), ("user", "hello")))
    assert session_key(turn1) == session_key(turn2) != session_key(other)
    assert session_key(turn1).startswith("prefix:")


def test_session_key_prefers_the_clients_session_and_hashes_prompts_by_their_start():
    assert session_key(GenerationRequest("r", M, prompt="x", session="u1")) == "session:u1"
    long = "A" * 600
    a = GenerationRequest("r", M, prompt=long + "one")
    b = GenerationRequest("r", M, prompt=long + "two")
    c = GenerationRequest("r", M, prompt="B" + long)
    assert session_key(a) == session_key(b) != session_key(c)
    assert session_key(GenerationRequest("r", M)) is None


# --------------------------------------------------------------------------- cooldown


def test_a_cooling_group_is_passed_over_until_its_cooldown_ends():
    memory = RouterMemory(cooldowns={"a": NOW + 5})
    groups = [g("a"), g("b", 3)]
    assert pick(groups, memory=memory).group == "b"
    assert pick(groups, memory=memory, now=NOW + 5).group == "a"


@pytest.mark.parametrize("policy", ["least_loaded", "round_robin", "hardware_aware", "sticky"])
def test_a_cooling_group_is_a_last_resort_not_a_refusal(policy):
    memory = RouterMemory(cooldowns={"a": NOW + 5, "b": NOW + 5})
    decision = pick([g("a"), g("b", 2)], policy, memory)
    assert decision.group == "a"
    assert decision.reason.endswith("(cooling)")


def test_book_cool_uses_the_configured_cooldown():
    book = RouterBook(RouterConfig(cooldown=2.5))
    book.cool("a", NOW)
    assert book.memory().cooldowns == {"a": NOW + 2.5}


# --------------------------------------------------------------------------- stats


def test_percentile_nearest_rank():
    assert percentile([], 0.5) == 0.0
    assert percentile([3.0], 0.99) == 3.0
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0


def test_router_stats_json():
    stats = RouterStats("sticky", 30.0, 5.0)
    for seconds in (0.000010, 0.000020, 0.000030):
        stats.record("least_loaded", seconds, sessions=2)
    stats.record("sticky", 0.000040, sessions=2)
    out = stats.json()
    assert out["policy"] == "sticky" and out["session_ttl"] == 30.0
    assert out["decisions"] == {"least_loaded": 3, "sticky": 1}
    assert out["sessions"] == 2 and out["failovers"] == 0
    assert out["decision_cpu_us"] == {"p50": 20.0, "p99": 40.0, "samples": 4}
