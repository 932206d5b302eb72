"""What `supervisor status | nodes | monitor` draw from /api/cluster/status's body, with rich.

Pure functions from the body (a dict) to rich renderables: the commands fetch and print,
these only draw. A node's memory colour is the state's own health rule
(``supervisor.state.folds.nodes.node_health``: green < 70 % used, yellow from 70 % or pressure
"warn", red from 85 % or pressure "critical"), so the bar and the node's health never differ.
"""

from __future__ import annotations

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from supervisor.state.folds.nodes import node_health

HEALTH_STYLE = {"ok": "green", "warning": "yellow", "critical": "red"}
STATE_STYLE = {
    "up": "green",
    "ready": "green",
    "running": "green",
    "starting": "yellow",
    "loading": "yellow",
    "waiting": "yellow",
    "restarting": "yellow",
    "connecting": "yellow",
    "unreachable": "red",
    "exited": "red",
    "killed": "red",
    "down": "red",
    "failed": "red",
    "stopped": "dim",
}
LINK_STYLE = {"active": "green", "degraded": "yellow", "down": "red"}
BAR_WIDTH = 12
NO_LINKS = "links: no link figures yet (the link probe adds bandwidth and latency per link)"


def memory_style(used: int, total: int, pressure: str) -> str:
    """The bar's colour: the node health rule over these figures."""
    return HEALTH_STYLE[node_health(total, used, pressure)[0]]


def memory_bar(used: int, total: int, pressure: str = "", width: int = BAR_WIDTH) -> Text:
    """``███░░░░░ 1.0/24.0 GiB  4%`` in the health colour; a dim dash with no report yet."""
    if total <= 0:
        return Text("— no memory report yet", style="dim")
    fraction = min(1.0, max(0.0, used / total))
    filled = round(fraction * width)
    style = memory_style(used, total, pressure)
    bar = Text("█" * filled, style=style)
    bar.append("░" * (width - filled), style="dim")
    bar.append(f" {gib(used)}/{gib(total)} GiB ")
    bar.append(f"{fraction:3.0%}", style=style)  # the colour shows even when nothing is filled
    return bar


def gib(n: int | float) -> str:
    return f"{n / 2**30:.1f}"


def size(n: int | float | None) -> str:
    """Bytes in the unit that reads best: 512 B, 3.4 MiB, 1.2 GiB."""
    if not n:
        return "—"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def duration(seconds: float) -> str:
    """``3d 04h 05m``, ``1h 02m 03s``, ``2m 05s``, ``7s``: seconds stay while they matter."""
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {s:02d}s"
    return f"{minutes}m {s:02d}s" if minutes else f"{s}s"


def hardware_summary(hardware: dict) -> str:
    """Chip and cores, short enough for a table cell."""
    parts = [hardware.get("chip") or hardware.get("cpu") or "—"]
    if hardware.get("cpu_cores"):
        parts.append(f"{hardware['cpu_cores']} CPU")
    if hardware.get("gpu_cores"):
        parts.append(f"{hardware['gpu_cores']} GPU")
    return " · ".join(parts)


def versions(hardware: dict) -> str:
    """The OS and the versions the memory actor reported once at start."""
    names = (("python", "Python"), ("mlx", "mlx"), ("mlx_lm", "mlx-lm"),
             ("mlx_supervisor", "mlx-supervisor"))  # fmt: skip
    parts = [hardware["os"]] if hardware.get("os") else []
    parts += [f"{label} {hardware[key]}" for key, label in names if hardware.get(key)]
    return ", ".join(parts)


def _table(title: str) -> Table:
    return Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
                 pad_edge=False, show_edge=False)  # fmt: skip


def _state(text: str) -> Text:
    return Text(text, style=STATE_STYLE.get(text, ""))


def nodes_table(status: dict) -> Table:
    table = _table("nodes")
    for name in ("node", "state", "health", "memory", "swap", "pressure"):
        table.add_column(name, no_wrap=True)
    for n in status["nodes"]:
        health = n.get("health") or "—"  # None until the node's memory actor reports
        table.add_row(
            n["name"],
            _state(n["state"]),
            Text(health, style=HEALTH_STYLE.get(health, "dim")),
            memory_bar(n.get("mem_used") or 0, n.get("mem_total") or 0, n.get("pressure") or ""),
            size(n.get("swap_used")),
            n.get("pressure") or "—",
        )
    return table


def actors_table(status: dict) -> Table:
    table = _table("actors")
    for name in ("actor", "node", "pid", "state", "restarts", "beat", "rss", "mlx"):
        table.add_column(name, no_wrap=True)
    for a in status["actors"]:
        age = a.get("last_heartbeat_age")
        table.add_row(
            a["id"],
            a["node"],
            str(a["pid"] or "—"),
            _state(a["state"]),
            str(a["restarts"]),
            "—" if age is None else f"{age:.1f}s",
            size((a.get("vitals") or {}).get("rss_bytes")),
            size(a.get("mlx_active_bytes")) if a.get("group") is not None else "",
        )
    return table


def group_rates(status: dict, previous: dict | None) -> dict[str, float | None]:
    """tok/s per group: the tokens between two bodies over the uptime between them; with
    one body only, the mean speed of the group's requests in the history tail (None: none)."""
    rates: dict[str, float | None] = {}
    if previous is not None:
        elapsed = status["uptime_seconds"] - previous["uptime_seconds"]
        before = {g["name"]: g["tokens"] for g in previous["groups"]}
        for g in status["groups"]:
            gained = g["tokens"] - before.get(g["name"], g["tokens"])
            rates[g["name"]] = max(0.0, gained / elapsed) if elapsed > 0 else None
        return rates
    for g in status["groups"]:
        speeds = [
            r["tokens_per_second"]
            for r in status.get("history", [])
            if r.get("groups")
            and r["groups"][-1] == g["name"]
            and r.get("status") == "ok"
            and r.get("tokens_per_second") is not None
        ]
        rates[g["name"]] = sum(speeds) / len(speeds) if speeds else None
    return rates


def groups_table(status: dict, previous: dict | None = None) -> Table:
    table = _table("groups")
    rate_header = "tok/s" if previous is not None else "tok/s (recent)"
    for name in ("group", "state", "model", rate_header, "in flight", "queue", "restarts left"):
        table.add_column(name, no_wrap=name != "model")
    actors = {a["id"]: a for a in status["actors"]}
    rates = group_rates(status, previous)
    for g in status["groups"]:
        leader = actors.get(g.get("leader") or "")
        queued = ((leader or {}).get("vitals") or {}).get("queued_requests", 0)
        rate = rates.get(g["name"])
        table.add_row(
            g["name"],
            _state(g["state"]),
            g.get("model") or "—",
            "—" if rate is None else f"{rate:.1f}",
            str(g["in_flight"]),
            str(queued),
            _budget(g.get("restart_budget")),
        )
    return table


def _budget(budget: dict | None) -> Text:
    """``4/5 per 60s``: restarts left of the intensity within the period."""
    if not budget:
        return Text("—")
    left, intensity = budget["left"], budget["intensity"]
    style = "red" if left <= 0 else "yellow" if left < intensity else "green"
    return Text(f"{left}/{intensity} per {budget['period']:g}s", style=style)


def links_section(status: dict) -> RenderableType:
    """Each link's live figures against its baseline (state.links), coloured by status."""
    links = status.get("links") or []
    if not links:
        return Text(NO_LINKS, style="dim")
    table = _table("links")
    for header in ("link", "group", "interface", "status", "latency µs", "GB/s", "reason"):
        table.add_column(header)
    for link in links:
        table.add_row(
            link.get("id", "—"),
            link.get("group", "—"),
            link.get("interface", "—"),
            Text(link.get("status", "—"), style=LINK_STYLE.get(link.get("status"), "")),
            _figure(link.get("latency_us"), link.get("baseline_latency_us")),
            _figure(link.get("bandwidth_gbps"), link.get("baseline_bandwidth_gbps")),
            Text(link.get("reason", ""), style="dim"),
        )
    return table


def _figure(value: float | None, baseline: float | None) -> str:
    """``25.5 (base 24.9)``; a dash before the first figure."""
    if value is None:
        return "—"
    return f"{value:.3g}" + ("" if baseline is None else f" (base {baseline:.3g})")


def totals(status: dict) -> Text:
    """Uptime, requests, tokens, 60 s tok/s, latency, queue: the cluster in one line."""
    latency = status.get("latency_avg_ms") if status["requests_total"] else None
    parts = [
        f"uptime {duration(status['uptime_seconds'])}",
        f"requests {status['requests_total']}",
        f"tokens {status['tokens_total']}",
        f"tok/s avg {status.get('tokens_per_second_avg_60s', 0):.1f} "
        f"peak {status.get('tokens_per_second_peak_60s', 0):.1f} (60 s)",
        "latency avg " + ("—" if latency is None else f"{latency:.0f} ms"),
        f"in flight {status['queue_depth']}",
        f"queue {status.get('queue_size', status['queue_depth'])}/{status.get('queue_max', '—')}",
    ]
    line = Text(" · ".join(parts), style="bold")
    if status.get("draining"):
        line.append(" · draining", style="yellow")
    return line


def notes(status: dict, with_versions: bool = True) -> list[Text]:
    """Why a node or group is not well, each node's hardware and versions: whole lines, never
    cut (`status | grep` finds a reason in one piece), each starting with its subject."""
    lines = []
    for n in status["nodes"]:
        if n.get("reason"):
            lines.append(Text(f"node {n['name']} {n['state']}: {n['reason']}", style="red"))
        hardware = n.get("hardware") or {}
        if with_versions and hardware:
            about = f"node {n['name']}: {hardware_summary(hardware)}; {versions(hardware)}"
            lines.append(Text(about, style="dim"))
    for g in status["groups"]:
        if g.get("reason"):
            style = STATE_STYLE.get(g["state"], "")
            lines.append(Text(f"group {g['name']} {g['state']}: {g['reason']}", style=style))
    for warning in status.get("warnings") or []:
        lines.append(Text(f"warning: {warning}", style="yellow"))
    return lines


def status_parts(status: dict, previous: dict | None = None) -> list[RenderableType]:
    """`supervisor status`: the totals, nodes, groups, actors, links, then the notes."""
    return [
        totals(status),
        nodes_table(status),
        groups_table(status, previous),
        actors_table(status),
        links_section(status),
        *notes(status),
    ]


def nodes_parts(status: dict) -> list[RenderableType]:
    """`supervisor nodes`: the nodes and their actors."""
    return [nodes_table(status), actors_table(status), *notes({**status, "groups": []})]


def monitor_view(
    status: dict | None, previous: dict | None, header: Text, trouble: str = ""
) -> RenderableType:
    """`supervisor monitor`'s frame: its header, a one-line trouble (a lost server: the last
    view stays under it), then the status view."""
    parts: list[RenderableType] = [header]
    if trouble:
        parts.append(Text(trouble, style="bold red"))
    if status is not None:
        parts += status_parts(status, previous)
    return Group(*parts)
