"""Routing decisions: pure functions from the groups' observed load to one group.

``choose_group`` reads plain data (each group's load and hardware, what the router
remembers of sessions, cursors and cooldowns) and returns a ``Decision``; the service
owns a tiny ``RouterBook`` that records decisions, so every choice is testable alone.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import msgspec

from actors.protocol.messages import GenerationRequest

Policy = Literal["least_loaded", "round_robin", "hardware_aware", "sticky"]
POLICIES: tuple[str, ...] = get_args(Policy)

# queued tokens worth one request in flight, when load is turned into a single number
TOKENS_PER_REQUEST = 256
# below this fraction of free memory a node's score falls (KV caches need room to grow)
MEMORY_COMFORT = 0.2
# what the hostfile's chip names imply when gpu_cores is not given (first-generation counts)
TIER_GPU_CORES = {"": 8, "pro": 16, "max": 32, "ultra": 64}
_CHIP = re.compile(r"\bm(\d+)(?:\s+(pro|max|ultra))?\b", re.IGNORECASE)
# how much of a conversation names it when the client sends no session: the start of it
PROMPT_PREFIX_CHARS = 512


class Hardware(msgspec.Struct, frozen=True):
    """A group's hardware as the hostfile hints it, and its memory headroom now."""

    chip: str | None = None  # e.g. "M2 Ultra"; the oldest chip of a multi-host group
    gpu_cores: int | None = None  # summed over the group's hosts
    memory_gb: float | None = None  # summed over the group's hosts
    memory_free: float | None = None  # fraction of memory available, lowest over its nodes


class GroupLoad(msgspec.Struct, frozen=True):
    """What the router knows of one group at decision time."""

    name: str
    model: str
    ready: bool
    in_flight: int = 0
    queued_tokens: int = 0  # tokens promised to requests in flight, not yet delivered
    hardware: Hardware = Hardware()


class Ask(msgspec.Struct, frozen=True):
    """One routing question: a model, maybe a session key, groups this request already lost."""

    model: str
    session: str | None = None
    exclude: frozenset[str] = frozenset()


class RouterConfig(msgspec.Struct, frozen=True):
    policy: Policy = "least_loaded"
    session_ttl: float = 600.0
    cooldown: float = 5.0  # seconds a group that just failed is passed over


class Session(msgspec.Struct, frozen=True):
    group: str
    last_seen: float


class Decision(msgspec.Struct, frozen=True):
    """The chosen group (None: no ready group) and why; ``session`` is the binding to keep."""

    group: str | None
    reason: str
    session: Session | None = None


class RouterMemory(msgspec.Struct, frozen=True):
    """What decisions remember, as plain mappings: sessions, round-robin cursors, cooldowns."""

    sessions: Mapping[str, Session] = msgspec.field(default_factory=dict)
    cursors: Mapping[str, str] = msgspec.field(default_factory=dict)  # model -> last chosen
    cooldowns: Mapping[str, float] = msgspec.field(default_factory=dict)  # group -> until


# --------------------------------------------------------------------------- #
# Decisions
# --------------------------------------------------------------------------- #


def candidates(groups: Sequence[GroupLoad], ask: Ask) -> list[GroupLoad]:
    """Ready groups serving the asked model that this request has not already lost."""
    return [g for g in groups if g.model == ask.model and g.ready and g.name not in ask.exclude]


def choose_group(
    groups: Sequence[GroupLoad],
    ask: Ask,
    memory: RouterMemory,
    config: RouterConfig,
    now: float,
) -> Decision:
    """Pick a group for ``ask`` under ``config.policy``.

    A group cooling down after a failure is a last resort: chosen only when every
    ready group is cooling, since serving late beats refusing.
    """
    ready = candidates(groups, ask)
    if not ready:
        return Decision(None, "no ready group")
    fresh = [g for g in ready if memory.cooldowns.get(g.name, -math.inf) <= now]
    pool = fresh or ready
    keep = config.policy == "sticky" and ask.session is not None
    if keep:
        bound = memory.sessions.get(ask.session)
        if bound is not None and now - bound.last_seen <= config.session_ttl:
            if any(g.name == bound.group for g in fresh):
                return Decision(bound.group, "sticky", Session(bound.group, now))
    if config.policy == "round_robin":
        chosen, reason = next_in_turn(pool, memory.cursors.get(ask.model)), "round_robin"
    elif config.policy == "hardware_aware":
        chosen, reason = best_hardware(pool), "hardware_aware"
    else:
        chosen, reason = least_loaded(pool, memory.cursors.get(ask.model)), "least_loaded"
    if not fresh:
        reason += " (cooling)"
    return Decision(chosen.name, reason, Session(chosen.name, now) if keep else None)


def least_loaded(groups: Sequence[GroupLoad], last: str | None = None) -> GroupLoad:
    """Fewest requests in flight, then fewest queued tokens, then whose turn it is.

    Turns break ties so that a lightly loaded cluster still spreads its requests
    (and warms every replica) instead of always picking the first name.
    """
    turn = {g.name: i for i, g in enumerate(in_turn(groups, last))}
    return min(groups, key=lambda g: (g.in_flight, g.queued_tokens, turn[g.name]))


def next_in_turn(groups: Sequence[GroupLoad], last: str | None) -> GroupLoad:
    """The first group by name after ``last``, wrapping: a fair turn even as groups come and go."""
    return in_turn(groups, last)[0]


def in_turn(groups: Sequence[GroupLoad], last: str | None) -> list[GroupLoad]:
    """Groups in name order, starting with the first one after ``last``."""
    ordered = sorted(groups, key=lambda g: g.name)
    if last is None:
        return ordered
    after = [g for g in ordered if g.name > last]
    return after + [g for g in ordered if g.name <= last]


def best_hardware(groups: Sequence[GroupLoad]) -> GroupLoad:
    """Highest hardware score; ties go to more memory, then name."""
    return min(groups, key=lambda g: (-hardware_score(g), -(g.hardware.memory_gb or 0), g.name))


def hardware_score(group: GroupLoad) -> float:
    """Capacity (chip generation x GPU cores) x memory headroom, shared by the load."""
    load = group.in_flight + group.queued_tokens / TOKENS_PER_REQUEST
    return capacity(group.hardware) * headroom(group.hardware) / (1 + load)


def capacity(hw: Hardware) -> float:
    """Relative decode speed: GPU cores, each ~15% faster per chip generation after M1."""
    generation, tier = parse_chip(hw.chip)
    cores = hw.gpu_cores or TIER_GPU_CORES[tier]
    return cores * (1 + 0.15 * (generation - 1))


def headroom(hw: Hardware) -> float:
    """1 with comfortable free memory, falling towards 0.05 as a node runs out."""
    if hw.memory_free is None:
        return 1.0
    return min(1.0, max(0.05, hw.memory_free / MEMORY_COMFORT))


def parse_chip(chip: str | None) -> tuple[int, str]:
    """``"Apple M2 Ultra"`` -> ``(2, "ultra")``; unknown chips count as a base M1."""
    found = _CHIP.search(chip or "")
    if found is None:
        return 1, ""
    return max(1, int(found.group(1))), (found.group(2) or "").lower()


def combine_hardware(hosts: Sequence[Hardware]) -> Hardware:
    """A group's hardware from its hosts': cores and memory add up, the oldest known chip counts."""
    if not hosts:
        return Hardware()
    chips = [h.chip for h in hosts if h.chip]
    oldest = min(chips, key=lambda c: parse_chip(c)[0]) if chips else None
    known_cores = [h.gpu_cores for h in hosts if h.gpu_cores]
    known_memory = [h.memory_gb for h in hosts if h.memory_gb]
    free = [h.memory_free for h in hosts if h.memory_free is not None]
    return Hardware(
        chip=oldest,
        gpu_cores=sum(known_cores) if known_cores else None,
        memory_gb=sum(known_memory) if known_memory else None,
        memory_free=min(free) if free else None,
    )


def session_key(request: GenerationRequest) -> str | None:
    """The conversation a request belongs to: its session, else a hash of how it starts.

    A chat is named by its messages up to the first user message, which every later
    turn repeats; a raw prompt by its first characters, the prefix a cache can reuse.
    """
    if request.session:
        return "session:" + request.session
    if request.messages:
        head = []
        for message in request.messages:
            head.append(message)
            if message.role == "user":
                break
        data = msgspec.msgpack.encode(head)
    elif request.prompt:
        data = request.prompt[:PROMPT_PREFIX_CHARS].encode()
    else:
        return None
    return "prefix:" + hashlib.blake2b(data, digest_size=12).hexdigest()


# --------------------------------------------------------------------------- #
# What the service keeps between decisions
# --------------------------------------------------------------------------- #


class RouterBook:
    """The router's memory, owned by the service: sessions, cursors and cooldowns."""

    PRUNE_EVERY = 256

    def __init__(self, config: RouterConfig):
        self.config = config
        self.sessions: dict[str, Session] = {}
        self.cursors: dict[str, str] = {}
        self.cooldowns: dict[str, float] = {}
        self._since_prune = 0

    def memory(self) -> RouterMemory:
        """A read-only view for ``choose_group`` (no copies: decisions never write)."""
        return RouterMemory(self.sessions, self.cursors, self.cooldowns)

    def record(self, ask: Ask, decision: Decision, now: float) -> None:
        if decision.group is None:
            return
        self.cursors[ask.model] = decision.group
        if decision.session is not None and ask.session is not None:
            self.sessions[ask.session] = decision.session
        self._since_prune += 1
        if self._since_prune >= self.PRUNE_EVERY:
            self.prune(now)

    def cool(self, group: str, now: float) -> None:
        """``group`` just failed a request: pass it over for ``config.cooldown`` seconds."""
        self.cooldowns[group] = now + self.config.cooldown

    def forget_group(self, group: str) -> None:
        """A group that left: drop its sessions and cooldown."""
        self.cooldowns.pop(group, None)
        for key in [k for k, s in self.sessions.items() if s.group == group]:
            del self.sessions[key]

    def prune(self, now: float) -> None:
        """Drop sessions idle past their TTL and cooldowns that ended."""
        self._since_prune = 0
        ttl = self.config.session_ttl
        self.sessions = {k: s for k, s in self.sessions.items() if now - s.last_seen <= ttl}
        self.cooldowns = {g: t for g, t in self.cooldowns.items() if t > now}
