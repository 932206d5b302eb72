"""The escalation rule: what the cluster does when a supervisor gives up."""

from __future__ import annotations

import pytest

from supervisor.supervision.escalation import ClusterDown, GroupDown, NodeDown, escalate

WHY = "3 restarts within 60 s exceeds intensity 2"
LAST = f"every group is down; the last, a, failed: {WHY}"


@pytest.mark.parametrize(
    ("kind", "name", "groups", "expected"),
    [
        # a node actor: the node is down, its groups are not touched, even the last one
        ("node", "mac1", {"a": "ready"}, NodeDown("mac1", WHY)),
        ("node", "mac1", {"a": "failed"}, NodeDown("mac1", WHY)),
        ("node", "mac1", {}, NodeDown("mac1", WHY)),
        # a group with others that serve, start or restart: it alone stays down
        ("group", "a", {"a": "restarting", "b": "ready"}, GroupDown("a", WHY)),
        ("group", "a", {"a": "failed", "b": "starting"}, GroupDown("a", WHY)),
        ("group", "a", {"a": "failed", "b": "waiting"}, GroupDown("a", WHY)),
        ("group", "a", {"a": "failed", "b": "restarting", "c": "failed"}, GroupDown("a", WHY)),
        # the last group that could serve: the cluster has failed
        ("group", "a", {"a": "failed"}, ClusterDown(LAST)),
        ("group", "a", {"a": "restarting"}, ClusterDown(LAST)),  # its state is not yet said
        ("group", "a", {"a": "failed", "b": "failed"}, ClusterDown(LAST)),
        ("group", "a", {"a": "failed", "b": "stopped"}, ClusterDown(LAST)),  # temporary, left
        ("group", "a", {}, ClusterDown(LAST)),  # removed meanwhile: it was the last
    ],
)
def test_escalate(kind, name, groups, expected):
    assert escalate(kind, name, WHY, groups) == expected


def test_escalate_does_not_change_the_states_it_was_given():
    groups = {"a": "restarting", "b": "ready"}
    escalate("group", "a", WHY, groups)
    assert groups == {"a": "restarting", "b": "ready"}
