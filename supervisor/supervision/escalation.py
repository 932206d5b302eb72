"""What the cluster does when a supervisor gives up: the escalation rule, as a pure function.

A supervisor whose set restarted more often than its intensity allows gives up and
escalates to the cluster (docs/architecture.md, Supervision):

- a node actor (the memory reporter) that gives up marks its node ``down``; the node's
  groups are left alone: they have supervisors of their own;
- a generation group that gives up stays down, marked ``failed``; the other groups go on
  serving (a request only it could serve gets 503 with Retry-After);
- when that leaves no group that could serve (each one failed or stopped), the cluster
  has failed: ``cluster_failed`` is logged and /health says ``failed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import msgspec

Supervised = Literal["node", "group"]


class NodeDown(msgspec.Struct, frozen=True, tag=True):
    """Mark the node down; its groups are not touched."""

    node: str
    reason: str


class GroupDown(msgspec.Struct, frozen=True, tag=True):
    """The group stays down (failed); the others serve on."""

    group: str
    reason: str


class ClusterDown(msgspec.Struct, frozen=True, tag=True):
    """No group is left to serve: the cluster has failed."""

    reason: str


Escalation = NodeDown | GroupDown | ClusterDown

# Group states in which a group will not serve again without an operator.
_DOWN = frozenset({"failed", "stopped"})


def escalate(
    kind: Supervised, name: str, reason: str, group_states: Mapping[str, str]
) -> Escalation:
    """The action for ``name`` giving up; ``group_states``: every group's state by name."""
    if kind == "node":
        return NodeDown(name, reason)
    states = {**group_states, name: "failed"}  # the group gives up now, whatever was said
    if all(state in _DOWN for state in states.values()):
        return ClusterDown(f"every group is down; the last, {name}, failed: {reason}")
    return GroupDown(name, reason)
