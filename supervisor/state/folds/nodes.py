"""A node's memory health and figures, from its memory reporter's vitals and Ready.info.

``node_health`` is the rule (pure); ``health_change`` is what whoever receives a memory
reporter's heartbeat asks to know whether to apply a ``NodeHealth`` event: the health
lives in the state only (``NodeView.health``), never in a copy of the emitter's.
"""

from __future__ import annotations

from collections.abc import Mapping

from actors.protocol.messages import Vitals
from supervisor.state.events import NodeHealth
from supervisor.state.views import ActorView, NodeHealthName, NodeView

WARNING_USED = 0.70  # fraction of memory used from which a node is "warning"
CRITICAL_USED = 0.85  # ... and "critical"
HARDWARE_KEYS = ("chip", "cpu", "cpu_cores", "gpu_cores", "os", "python", "mlx", "mlx_lm",
                 "mlx_supervisor")  # fmt: skip


def mem_used(vitals: Vitals) -> int:
    """Bytes used: as reported, else total less available (a reporter that says no more)."""
    if vitals.mem_used:
        return vitals.mem_used
    return max(0, vitals.mem_total - vitals.mem_available) if vitals.mem_total else 0


def node_health(mem_total: int, used: int, pressure: str) -> tuple[NodeHealthName, str]:
    """ok / warning (>= 70 % used or pressure "warn") / critical (>= 85 % or "critical"),
    and why in words ("" when ok)."""
    fraction = used / mem_total if mem_total > 0 else 0.0
    share = f"{fraction:.0%} of memory used"
    if pressure == "critical":
        return "critical", f"memory pressure critical; {share}"
    if fraction >= CRITICAL_USED:
        return "critical", share
    if pressure == "warn":
        return "warning", f"memory pressure warn; {share}"
    if fraction >= WARNING_USED:
        return "warning", share
    return "ok", ""


def health_change(
    nodes: Mapping[str, NodeView], actor: ActorView | None, vitals: Vitals
) -> NodeHealth | None:
    """The event to apply when ``actor`` (a memory reporter) beat ``vitals``: its node's
    health if that differs from the state's; None otherwise (or not a memory reporter)."""
    if actor is None or actor.kind != "memory" or not vitals.mem_total:
        return None
    node = nodes.get(actor.node)
    if node is None:
        return None
    health, reason = node_health(vitals.mem_total, mem_used(vitals), vitals.pressure)
    return None if health == node.health else NodeHealth(actor.node, health, reason)


def memory_reporter(actors: Mapping[str, ActorView], node: str) -> ActorView | None:
    return next((a for a in actors.values() if a.kind == "memory" and a.node == node), None)


def node_json(node: NodeView, reporter: ActorView | None) -> dict:
    """/api/cluster/status's node: the view, its memory figures and its hardware."""
    v = reporter.vitals if reporter is not None else Vitals()
    info = reporter.info if reporter is not None else {}
    return {
        "name": node.name,
        "ssh": node.ssh,
        "local": node.local,
        "state": node.state,
        "reason": node.reason,
        "health": node.health,
        "mem_total": v.mem_total,
        "mem_used": mem_used(v),
        "mem_available": v.mem_available,
        "swap_used": v.swap_used,
        "pressure": v.pressure,
        "hardware": {k: info[k] for k in HARDWARE_KEYS if k in info},
    }


def rank_memory(actor: ActorView) -> dict:
    """A generation rank's memory figures (bytes) under /api/cluster/status's names."""
    v = actor.vitals
    return {
        "mlx_active_bytes": v.mlx_active_bytes,
        "mlx_cache_bytes": v.mlx_cache_bytes,
        "mlx_peak_bytes": v.mlx_peak_bytes,
        "model_bytes": v.model_bytes,
        "prompt_cache_bytes": v.prompt_cache_bytes,
    }
