"""The /health rule: 200 while at least one group serves; 503 with the reasons otherwise."""

from __future__ import annotations

from collections.abc import Mapping

from supervisor.state.views import GroupView


def health(groups: Mapping[str, GroupView], draining: bool) -> tuple[int, dict]:
    """The status code and body of /health for these groups.

    ``ok``: every group ready; ``degraded``: some; ``failed``: none, and none will come
    back (each failed or stopped, one failed at least); ``starting`` otherwise;
    ``draining`` (503) while the server shuts down.
    """
    states = {name: g.state for name, g in groups.items()}
    ready = [n for n, s in states.items() if s == "ready"]
    if draining:
        status = "draining"
    elif states and len(ready) == len(states):
        status = "ok"
    elif ready:
        status = "degraded"
    elif any(s == "failed" for s in states.values()) and all(
        s in ("failed", "stopped") for s in states.values()
    ):
        status = "failed"
    else:
        status = "starting"
    body = {
        "status": status,
        "groups": {name: {"state": g.state, "reason": g.reason} for name, g in groups.items()},
    }
    return (200 if ready and not draining else 503), body
