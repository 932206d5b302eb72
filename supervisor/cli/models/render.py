"""What `supervisor models | download | swap` draw, from GET /api/cluster/models's body and
the job views of a model job (``state.folds.models.ModelJobView`` as JSON).

Pure functions from dicts to text and rich renderables: the commands fetch and print, these
only draw. Sizes are binary (GiB, like `supervisor status`), rates in MB/s (10^6 bytes, as
download tools say them).
"""

from __future__ import annotations

from rich import box
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from supervisor.cli.observe.render import duration, size

DASH = "—"
JOB_STYLE = {"running": "yellow", "done": "green", "failed": "red"}
PHASE_STYLE = {"done": "green", "failed": "red", "queued": "dim"}
NO_MODELS = "no models on any node's disk yet (supervisor download org/name puts one there)"


def rate(bytes_per_second: float | None) -> str:
    """``45.0 MB/s``; a dash while nothing has moved."""
    if not bytes_per_second:
        return DASH
    return f"{bytes_per_second / 1e6:.1f} MB/s"


def eta(seconds: float | None) -> str:
    return DASH if seconds is None else duration(max(0.0, seconds))


def nodes_mark(model: dict) -> Text:
    """``✅ 2/2``: complete copies over the nodes asked; ``⚠️ 1/2`` when some lack it or
    hold a partial copy, ``❌ 0/2`` when none is complete."""
    complete, total = model.get("complete_nodes", 0), model.get("total_nodes", 0)
    if total and complete >= total:
        return Text(f"✅ {complete}/{total}", style="green")
    if complete:
        return Text(f"⚠️ {complete}/{total}", style="yellow")
    return Text(f"❌ {complete}/{total}", style="red")


def partial_nodes(model: dict) -> list[str]:
    """The nodes holding some of the model's files but not all of them."""
    nodes = model.get("nodes") or {}
    return sorted(n for n, v in nodes.items() if v.get("present") and not v.get("complete"))


def _table(title: str) -> Table:
    return Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
                 pad_edge=False, show_edge=False)  # fmt: skip


def models_table(body: dict) -> RenderableType:
    models = body.get("models") or []
    if not models:
        return Text(NO_MODELS, style="dim")
    table = _table("models")
    for name in ("model", "size", "quant", "arch", "nodes", "groups"):
        table.add_column(name, no_wrap=name in ("size", "nodes"))
    for m in sorted(models, key=lambda m: m["id"]):
        nodes = nodes_mark(m)
        partial = partial_nodes(m)
        if partial:
            nodes.append(f" partial: {', '.join(partial)}", style="yellow")
        table.add_row(
            m["id"],
            size(m.get("size")),
            m.get("quantization") or DASH,
            m.get("architecture") or DASH,
            nodes,
            ", ".join(m.get("groups") or []) or DASH,
        )
    return table


def disks_table(body: dict) -> RenderableType | None:
    nodes = body.get("nodes") or {}
    if not nodes:
        return None
    table = _table("disks")
    for name in ("node", "models dir", "free", "state"):
        table.add_column(name, no_wrap=name != "models dir")
    for name in sorted(nodes):
        n = nodes[name]
        reachable = n.get("reachable", True)
        table.add_row(
            name,
            n.get("models_dir") or DASH,
            size(n.get("free_bytes")),
            Text("scanned", style="green") if reachable else Text("last scan", style="yellow"),
        )
    return table


def job_line(job: dict) -> Text:
    """``job 7f3a download org/name running: mac1 download 45% · mac2 queued``."""
    state = job.get("state", "running")
    head = f"job {job['id']} {job['action']} {job['model']}"
    if job.get("group"):
        head += f" on group {job['group']}"
    line = Text(head + " ")
    line.append(state, style=JOB_STYLE.get(state, ""))
    if state == "failed" and job.get("error"):
        line.append(f": {job['error']}")
    elif state == "running":
        steps = [f"{node} {_phase_short(p)}" for node, p in sorted(job.get("progress", {}).items())]
        if steps:
            line.append(": " + " · ".join(steps))
    return line


def _phase_short(p: dict) -> str:
    total = p.get("total") or 0
    if total and p.get("phase") not in ("queued", "done", "failed"):
        return f"{p['phase']} {min(100, 100 * (p.get('done') or 0) // total)}%"
    return p.get("phase", "queued")


def notes(body: dict, jobs_shown: int = 5) -> list[Text]:
    """Whole lines, never cut: partial copies with what they lack, nodes that did not
    answer, and the newest jobs (running ones first)."""
    lines = []
    for m in sorted(body.get("models") or [], key=lambda m: m["id"]):
        for node in partial_nodes(m):
            missing = (m["nodes"][node].get("missing")) or []
            what = f"{len(missing)} file(s) missing: {', '.join(missing[:5])}" if missing else ""
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            text = f"model {m['id']} on {node}: partial" + (f", {what}{more}" if what else "")
            lines.append(Text(text, style="yellow"))
    for name, n in sorted((body.get("nodes") or {}).items()):
        if not n.get("reachable", True):
            line = f"node {name}: not answering; its last scan is shown"
            lines.append(Text(line, style="yellow"))
    jobs = body.get("jobs") or []
    running = [j for j in jobs if j.get("state") == "running"]
    ended = [j for j in jobs if j.get("state") != "running"]
    for job in (running + ended)[:jobs_shown]:
        lines.append(job_line(job))
    return lines


def models_parts(body: dict) -> list[RenderableType]:
    """`supervisor models`: the models, the nodes' disks, then the notes."""
    parts: list[RenderableType] = [models_table(body)]
    disks = disks_table(body)
    if disks is not None:
        parts.append(disks)
    return parts + notes(body)


def deleted_line(model: str, answer: dict) -> str:
    """DELETE's answer ``{"model", "deleted": {node: freed bytes}}`` in one line."""
    deleted = (answer.get("deleted") if isinstance(answer, dict) else None) or {}
    nodes = ", ".join(sorted(deleted)) or "no node"
    freed = sum(v for v in deleted.values() if isinstance(v, int))
    return f"removed {model} from {nodes}" + (f" ({size(freed)} freed)" if freed else "")


# ---------------------------------------------------------------- a job, as it runs


def bar_fields(node: str, p: dict) -> dict:
    """One rich.progress task's figures for a node: the bar's completed/total, and the
    text columns (the supervisor's own rate and ETA, not the terminal's estimate)."""
    total = p.get("total") or 0
    done = p.get("done") or 0
    phase = p.get("phase", "queued")
    if phase == "done" and not total:
        total = done = 1  # nothing had to move: a full bar, not an empty one
    via = f" via {p['path']}" if p.get("path") else ""
    amount = f"{size(done) if done else '0 B'}/{size(total)}" if p.get("total") else DASH
    return {
        "completed": min(done, total) if total else 0,
        "total": total or None,  # None: rich draws a pulsing bar (size not known yet)
        "node": node,
        "phase": phase + via,
        "amount": amount,
        "speed": rate(p.get("rate")) if phase not in ("done", "failed", "queued") else "",
        "eta": eta(p.get("eta")) if phase not in ("done", "failed", "queued") else "",
    }


def progress_line(node: str, p: dict) -> str:
    """The plain-text form of a node's figures (output that is not a terminal)."""
    f = bar_fields(node, p)
    parts = [node, f["phase"]]
    if f["amount"] != DASH:
        parts.append(f["amount"])
    parts += [x for x in (f["speed"], f["eta"] and f"ETA {f['eta']}") if x and x != DASH]
    if p.get("detail"):
        parts.append(p["detail"])
    return " ".join(parts)


def phase_changes(before: dict | None, job: dict) -> list[str]:
    """A line per node whose phase changed since the view ``before`` (all of them for the
    first view): what a log or a pipe gets instead of redrawn bars."""
    old = (before or {}).get("progress") or {}
    lines = []
    for node, p in sorted((job.get("progress") or {}).items()):
        if node not in old or old[node].get("phase") != p.get("phase"):
            lines.append(progress_line(node, p))
    return lines


def outcome(job: dict) -> tuple[int, str]:
    """The exit code and the one line that ends `download` / `swap`: 0 done, 1 failed."""
    group = f" on group {job['group']}" if job.get("group") else ""
    what = f"{job['action']} {job['model']}{group}"
    took = ""
    if job.get("ended_at") and job.get("started_at"):
        took = f" in {duration(job['ended_at'] - job['started_at'])}"
    if job.get("state") == "done":
        moved = job.get("moved_bytes") or 0
        nodes = ", ".join(job.get("nodes") or []) or DASH
        moved_text = f"{size(moved)} moved" if moved else "nothing to move"
        return 0, f"{what}: done on {nodes}; {moved_text}{took}"
    return 1, f"{what} failed: {job.get('error') or 'no reason given'}"
