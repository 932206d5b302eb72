"""`supervisor status | nodes | monitor` drawing, from a canned /api/cluster/status body."""

from __future__ import annotations

import copy

import pytest
from rich.console import Console
from rich.text import Text

from supervisor.cli.observe import render as render

GIB = 2**30
STATUS = {
    "seq": 40,
    "uptime_seconds": 3723.4,
    "draining": False,
    "queue_depth": 2,
    "waiting": 1,
    "queue_size": 3,
    "queue_max": 256,
    "requests_total": 17,
    "tokens_total": 900,
    "tokens_per_second_avg_60s": 12.5,
    "tokens_per_second_peak_60s": 40.25,
    "latency_avg_ms": 812.4,
    "history": [
        {"groups": ["main"], "status": "ok", "tokens_per_second": 30.0},
        {"groups": ["other", "main"], "status": "ok", "tokens_per_second": 50.0},
        {"groups": ["main"], "status": "error", "tokens_per_second": 1.0},
    ],
    "links": [],
    "nodes": [
        {
            "name": "mac1",
            "state": "up",
            "reason": "",
            "health": "warning",
            "mem_total": 64 * GIB,
            "mem_used": 48 * GIB,
            "mem_available": 16 * GIB,
            "swap_used": 3 * 2**20,
            "pressure": "normal",
            "hardware": {
                "chip": "Apple M2 Ultra",
                "cpu_cores": "24",
                "gpu_cores": "76",
                "os": "macOS 15.1",
                "mlx": "0.32.4",
            },  # fmt: skip
        },
        {
            "name": "mac2",
            "state": "unreachable",
            "reason": "ssh root@10.0.0.2: connection refused; is sshd running on it?",
            "health": None,  # no memory report yet
            "mem_total": 0,
            "mem_used": 0,
            "mem_available": 0,
            "swap_used": 0,
            "pressure": "",
            "hardware": {},
        },
    ],
    "actors": [
        {
            "id": "mac1.memory",
            "kind": "memory",
            "node": "mac1",
            "group": None,
            "rank": 0,
            "pid": 101,
            "state": "running",
            "restarts": 0,
            "last_heartbeat_age": 0.4,
            "vitals": {"rss_bytes": 30 * 2**20},
        },
        {
            "id": "main.rank0",
            "kind": "generation",
            "node": "mac1",
            "group": "main",
            "rank": 0,
            "pid": 102,
            "state": "running",
            "restarts": 1,
            "last_heartbeat_age": None,
            "vitals": {"rss_bytes": 2 * GIB, "queued_requests": 4},
            "mlx_active_bytes": 5 * GIB,
        },
    ],  # fmt: skip
    "groups": [
        {
            "name": "main",
            "model": "mlx-community/Qwen3-8B-4bit",
            "state": "ready",
            "reason": "",
            "restarts": 1,
            "in_flight": 2,
            "tokens": 800,
            "leader": "main.rank0",
            "restart_budget": {"intensity": 5, "period": 60.0, "used": 1, "left": 4},
        },
        {
            "name": "spare",
            "model": "demo:tiny",
            "state": "failed",
            "reason": "restart intensity 1 in 60 s exceeds intensity 1",
            "restarts": 2,
            "in_flight": 0,
            "tokens": 100,
            "leader": None,
            "restart_budget": {"intensity": 1, "period": 60.0, "used": 2, "left": 0},
        },
    ],  # fmt: skip
    "warnings": [],
}


def text_of(*parts, width: int = 120) -> str:
    console = Console(record=True, width=width, color_system=None, file=open("/dev/null", "w"))
    for part in parts:
        console.print(part, soft_wrap=isinstance(part, Text))
    return console.export_text()


def bar_style(percent: float, pressure: str = "normal") -> str:
    bar = render.memory_bar(int(percent * GIB), 100 * GIB, pressure)
    styles = {span.style for span in bar.spans if span.style != "dim"}
    assert len(styles) == 1, bar.spans
    return styles.pop()


@pytest.mark.parametrize(
    ("percent", "pressure", "style"),
    [
        (0, "normal", "green"),
        (60, "normal", "green"),
        (69.9, "", "green"),
        (70, "normal", "yellow"),
        (75, "normal", "yellow"),
        (84.9, "normal", "yellow"),
        (85, "normal", "red"),
        (90, "normal", "red"),
        (100, "normal", "red"),
        (10, "warn", "yellow"),  # the OS's own word counts as much as the share used
        (10, "critical", "red"),
        (75, "critical", "red"),
    ],
)
def test_the_memory_bar_is_coloured_by_the_health_thresholds(percent, pressure, style):
    assert bar_style(percent, pressure) == style


def test_the_memory_bar_fills_in_proportion_and_says_the_figures():
    bar = render.memory_bar(75 * GIB, 100 * GIB, width=8)
    assert bar.plain == "██████░░ 75.0/100.0 GiB 75%"
    assert render.memory_bar(0, 0).plain == "— no memory report yet"


def test_status_shows_totals_nodes_groups_actors_and_links():
    shown = text_of(*render.status_parts(STATUS))
    lines = shown.splitlines()
    assert lines[0] == (
        "uptime 1h 02m 03s · requests 17 · tokens 900 · tok/s avg 12.5 peak 40.2 (60 s) · "
        "latency avg 812 ms · in flight 2 · queue 3/256"
    )
    mac1 = next(x for x in lines if x.startswith("mac1 "))
    assert "up" in mac1 and "warning" in mac1 and "48.0/64.0 GiB 75%" in mac1
    assert "3.0 MiB" in mac1 and "normal" in mac1
    mac2 = next(x for x in lines if x.startswith("mac2 "))
    assert "unreachable" in mac2 and "no memory report yet" in mac2
    main = next(x for x in lines if x.startswith("main "))
    # tok/s from the history tail: the group a request ended on, successful ones only
    assert main.split()[1:] == ["ready", "mlx-community/Qwen3-8B-4bit", "40.0", "2", "4",
                                "4/5", "per", "60s"]  # fmt: skip
    spare = next(x for x in lines if x.startswith("spare "))
    assert spare.split()[1:] == ["failed", "demo:tiny", "—", "0", "0", "0/1", "per", "60s"]
    rank = next(x for x in lines if x.startswith("main.rank0"))
    assert rank.split() == ["main.rank0", "mac1", "102", "running", "1", "—", "2.0", "GiB",
                            "5.0", "GiB"]  # fmt: skip
    assert render.NO_LINKS in lines
    # reasons and versions are whole lines however long, each naming its subject
    assert f"node mac2 unreachable: {STATUS['nodes'][1]['reason']}" in lines
    assert "group spare failed: restart intensity 1 in 60 s exceeds intensity 1" in lines
    assert "node mac1: Apple M2 Ultra · 24 CPU · 76 GPU; macOS 15.1, mlx 0.32.4" in lines


def test_notes_are_never_wrapped_on_a_narrow_terminal():
    shown = text_of(*render.status_parts(STATUS), width=40)
    assert f"node mac2 unreachable: {STATUS['nodes'][1]['reason']}" in shown.splitlines()


def test_status_colours_states_health_and_budget():
    table = render.groups_table(STATUS)
    states = {cell.plain: cell.style for cell in table.columns[1]._cells}
    assert states == {"ready": "green", "failed": "red"}
    budgets = [cell.style for cell in table.columns[-1]._cells]
    assert budgets == ["yellow", "red"]  # one restart used of five; none left


def test_with_a_previous_body_tok_s_is_the_tokens_between_them():
    before = copy.deepcopy(STATUS)
    before["uptime_seconds"] -= 2.0
    before["groups"][0]["tokens"] -= 50
    assert render.group_rates(STATUS, before) == {"main": 25.0, "spare": 0.0}
    header = [c.header for c in render.groups_table(STATUS, before).columns]
    assert "tok/s" in header
    restarted = {**before, "uptime_seconds": STATUS["uptime_seconds"] + 5}  # a new server
    assert render.group_rates(STATUS, restarted) == {"main": None, "spare": None}


def test_links_are_a_table_once_the_probe_reports_them():
    links = [
        {"id": "mac1↔mac2", "group": "main", "nodes": ["mac1", "mac2"],
         "interface": "rdma_en3↔rdma_en4", "status": "degraded", "latency_us": 9.1,
         "bandwidth_gbps": 3.5, "last_probe": 1.0, "baseline_latency_us": 8.8,
         "baseline_bandwidth_gbps": 8.05, "probes": 7, "reason": "bandwidth below half"},
        {"id": "mac2↔mac3", "group": "main", "nodes": ["mac2", "mac3"], "interface": "x",
         "status": "down", "latency_us": None, "bandwidth_gbps": None, "last_probe": 1.0,
         "baseline_latency_us": None, "baseline_bandwidth_gbps": None, "probes": 1,
         "reason": "latency probe timed out after 5 s"},
    ]  # fmt: skip
    shown = text_of(render.links_section({**STATUS, "links": links}))
    assert "mac1↔mac2" in shown and "rdma_en3↔rdma_en4" in shown and "degraded" in shown
    assert "9.1 (base 8.8)" in shown and "3.5 (base 8.05)" in shown
    assert "timed out" in shown and render.NO_LINKS not in shown


def test_nodes_view_has_nodes_and_actors_but_no_groups():
    shown = text_of(*render.nodes_parts(STATUS))
    assert "main.rank0" in shown and "48.0/64.0 GiB" in shown
    assert "spare" not in shown and "tok/s" not in shown


def test_a_lost_server_is_one_line_above_the_last_view():
    header = Text("supervisor monitor")
    shown = text_of(render.monitor_view(STATUS, None, header, "x: unreachable, retrying"))
    lines = shown.splitlines()
    assert lines[:2] == ["supervisor monitor", "x: unreachable, retrying"]
    assert any(x.startswith("mac1 ") for x in lines)
    nothing_yet = text_of(render.monitor_view(None, None, header, "x: unreachable, retrying"))
    assert nothing_yet.splitlines() == ["supervisor monitor", "x: unreachable, retrying"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (61, "1m 01s"), (3723, "1h 02m 03s"), (90061, "1d 01h 01m")],
)
def test_durations(seconds, text):
    assert render.duration(seconds) == text


@pytest.mark.parametrize(
    ("n", "text"), [(0, "—"), (None, "—"), (512, "512 B"), (3 * 2**20, "3.0 MiB"), (GIB, "1.0 GiB")]
)
def test_sizes(n, text):
    assert render.size(n) == text
