"""Routing decisions: pure functions from the groups' observed load to one group."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GroupLoad:
    """What the router knows of one group at decision time."""

    name: str
    model: str
    ready: bool
    in_flight: int = 0
    queued_tokens: int = 0


def candidates(groups: list[GroupLoad], model: str) -> list[GroupLoad]:
    """Ready groups serving ``model``."""
    return [g for g in groups if g.model == model and g.ready]


def choose_least_loaded(groups: list[GroupLoad]) -> GroupLoad | None:
    """Fewest requests in flight, then fewest queued tokens, then name (stable)."""
    if not groups:
        return None
    return min(groups, key=lambda g: (g.in_flight, g.queued_tokens, g.name))
