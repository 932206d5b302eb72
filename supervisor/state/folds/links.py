"""The links of the multi-rank groups, folded from the live probe's events.

A link is born with its group's first probe (before it, readers show "no probe yet"). Its
first latency and first bandwidth after the group was declared are its baseline, kept
across the group's restarts, so a cable that degrades and takes the group down with it
still shows degraded after the restart. Status:

- ``down``: the last probe failed or timed out, or the group was lost (restarting,
  waiting for a host, failed); a group stopped on purpose keeps its last figures;
- ``degraded``: bandwidth below ``DEGRADED_BANDWIDTH`` × its baseline, or latency above
  ``DEGRADED_LATENCY`` × its baseline;
- ``active`` otherwise.

Each status change is logged and recorded in the errors ring (kind ``link_<status>``).
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from msgspec import to_builtins
from msgspec.structs import replace

from supervisor.state.events import GroupDeclared, GroupRemoved, GroupState, LinkDown, LinkMeasured
from supervisor.state.views import LinkStatus, LinkView

log = structlog.get_logger()

DEGRADED_BANDWIDTH = 0.5  # of the baseline
DEGRADED_LATENCY = 3.0  # times the baseline
LOST = ("restarting", "waiting", "failed")  # group states that take its links down


def link_status(view: LinkView) -> tuple[LinkStatus, str]:
    """Active or degraded from the figures against the baselines, and why (degraded)."""
    why = []
    bandwidth, base_bw = view.bandwidth_gbps, view.baseline_bandwidth_gbps
    if bandwidth is not None and base_bw and bandwidth < DEGRADED_BANDWIDTH * base_bw:
        why.append(f"bandwidth {bandwidth:.3g} GB/s is below half its baseline {base_bw:.3g}")
    latency, base_lat = view.latency_us, view.baseline_latency_us
    if latency is not None and base_lat and latency > DEGRADED_LATENCY * base_lat:
        why.append(f"latency {latency:.3g} µs is over 3x its baseline {base_lat:.3g}")
    return ("degraded", "; ".join(why)) if why else ("active", "")


class Links:
    """The link views, by ``group:link``; ``error(kind, message, **where)`` records a change."""

    def __init__(self, error: Callable[..., None]) -> None:
        self.views: dict[str, LinkView] = {}
        self._error = error

    def fold(self, event) -> None:
        """Apply the events links follow (ClusterState.apply hands every event here)."""
        match event:
            case LinkMeasured():
                self._measured(event)
            case LinkDown(link, group, nodes, interface, at, reason):
                view, new = self._view(link, group, nodes, interface)
                view = replace(view, last_probe=at, probes=view.probes + 1)
                self._set(view, "down", reason, new)
            case GroupState(group, state, reason) if state in LOST:
                for view in self._of(group):
                    self._set(view, "down", f"group {state}: {reason}".rstrip(": "))
            case GroupDeclared(group) | GroupRemoved(group):  # a new group: a new baseline
                for view in self._of(group):
                    del self.views[f"{group}:{view.id}"]

    def json(self) -> list[dict]:
        return [to_builtins(v) for v in self.views.values()]

    def _measured(self, e: LinkMeasured) -> None:
        view, new = self._view(e.link, e.group, e.nodes, e.interface)
        changes: dict = {"last_probe": e.at, "probes": view.probes + 1}
        if e.latency_us is not None:
            changes["latency_us"] = e.latency_us
            if view.baseline_latency_us is None:
                changes["baseline_latency_us"] = e.latency_us
        if e.bandwidth_gbps is not None:
            changes["bandwidth_gbps"] = e.bandwidth_gbps
            if view.baseline_bandwidth_gbps is None:
                changes["baseline_bandwidth_gbps"] = e.bandwidth_gbps
        view = replace(view, **changes)
        self._set(view, *link_status(view), new)

    def _view(self, link: str, group: str, nodes: list, interface: str) -> tuple[LinkView, bool]:
        """The link's view, and whether it is new (its group's first probe)."""
        view = self.views.get(f"{group}:{link}")
        if view is None:
            return LinkView(link, group, list(nodes), interface), True
        return view, False

    def _of(self, group: str) -> list[LinkView]:
        return [v for v in self.views.values() if v.group == group]

    def _set(self, view: LinkView, status: LinkStatus, reason: str, new: bool = False) -> None:
        was = "none" if new else view.status
        self.views[f"{view.group}:{view.id}"] = replace(view, status=status, reason=reason)
        if status == was or was == "none" and status == "active":
            return  # no change; or a first probe that finds the link active
        message = f"link {view.id} of group {view.group} ({view.interface}) is {status}"
        message += f": {reason}" if reason else ""
        getattr(log, "info" if status == "active" else "warning")(
            "link_status", link=view.id, group=view.group, status=status, was=was, reason=reason
        )
        self._error("link_" + status, message, group=view.group)
