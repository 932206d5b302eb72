"""The live link probe, piece by piece: when rank 0 probes, what one probe reports, how the
state folds the figures into links (baseline, degraded, down), their ids and metrics."""

from __future__ import annotations

import itertools

import mlx.core as mx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors.generation.engine.inbox import Prompted, StepPlan
from actors.generation.engine.lockstep import Lockstep
from actors.generation.engine.probe_step import LinkProber, probe_due
from actors.protocol.messages import GenerationRequest, LinkProbe, ProbeSettings
from supervisor.config.load import HostfileError, parse_hostfile
from supervisor.config.spec import GroupSpec, HostSpec
from supervisor.observe.metrics import exposition, metrics_registry
from supervisor.state import ClusterState
from supervisor.state.events import GroupDeclared, GroupState, LinkDown, LinkMeasured
from supervisor.supervision.links import group_links, link_events, probe_settings

SETTINGS = ProbeSettings(latency_interval=10, bandwidth_interval=60, bandwidth_bytes=8192)


# --------------------------------------------------------------- the plan's decision


@pytest.mark.parametrize(
    ("now", "idle", "last_latency", "last_bandwidth", "expected"),
    [
        (0.0, True, None, None, "latency"),  # a new group: its baseline at once
        (0.0, False, None, None, None),  # busy: never
        (5.0, True, 0.0, None, "bandwidth"),  # latency measured, bandwidth never
        (5.0, True, 0.0, 0.0, None),  # both within their intervals
        (10.0, True, 0.0, 0.0, "latency"),  # the latency interval passed
        (10.0, False, 0.0, 0.0, None),  # ... but a sequence runs
        (59.0, True, 55.0, 0.0, None),
        (60.0, True, 55.0, 0.0, "bandwidth"),
        (70.0, True, 0.0, 0.0, "latency"),  # both due: the cheap one first
    ],
)
def test_probe_due_only_when_idle_and_the_interval_passed(
    now, idle, last_latency, last_bandwidth, expected
):
    assert probe_due(now, idle, last_latency, last_bandwidth, SETTINGS) == expected


def test_probe_due_never_when_disabled():
    off = ProbeSettings(enabled=False)
    assert probe_due(1e9, True, None, None, off) is None


# --------------------------------------------------- one probe, over a one-rank group


@pytest.fixture(scope="module")
def solo_group():
    return mx.distributed.init()  # no ring configured: a group of one, all_sum is a copy


def test_a_probe_reports_its_figure_and_times(solo_group):
    reports: list[LinkProbe] = []
    clock = itertools.count(100.0, 1.0)
    prober = LinkProber(SETTINGS, reports.append, clock=lambda: next(clock))
    assert prober.due(idle=True) == ("latency", 0)
    prober.run(solo_group, "latency", 0, leader=True)
    assert prober.due(idle=True) == ("bandwidth", 8192)
    prober.run(solo_group, "bandwidth", 8192, leader=True)
    assert prober.due(idle=True) is None and prober.due(idle=False) is None
    latency, bandwidth = reports
    assert (latency.kind, latency.ok, bandwidth.kind, bandwidth.ok) == (
        "latency", True, "bandwidth", True,
    )  # fmt: skip
    assert latency.latency_s > 0 and latency.seconds >= latency.latency_s
    assert bandwidth.bandwidth_gbps > 0 and bandwidth.peak_gbps >= bandwidth.bandwidth_gbps
    assert bandwidth.nbytes == 8192 and bandwidth.at >= latency.at


def test_a_follower_measures_and_says_nothing(solo_group):
    reports: list[LinkProbe] = []
    LinkProber(SETTINGS, reports.append).run(solo_group, "latency", 0, leader=False)
    assert reports == []


def test_a_probe_past_its_timeout_is_reported_down(solo_group):
    reports: list[LinkProbe] = []
    prober = LinkProber(ProbeSettings(timeout=1e-6, bandwidth_bytes=1 << 24), reports.append)
    prober.run(solo_group, "bandwidth", 1 << 24, leader=True)
    down = [r for r in reports if not r.ok]
    assert down and down[0].error == "bandwidth probe timed out after 1e-06 s"
    assert reports[-1].ok  # it ended after all: its figures follow


def test_the_shared_plan_probes_an_idle_group_only(solo_group):
    reports: list[LinkProbe] = []
    lockstep = Lockstep(solo_group, prober=LinkProber(SETTINGS, reports.append))
    lockstep.agree(StepPlan(), idle=False)  # a sequence runs
    assert reports == []
    request = Prompted(GenerationRequest("r1", "m", prompt="hi"), [1, 2])
    plan = lockstep.agree(StepPlan(admit=[request]), idle=True)  # a request joins: no probe
    assert [p.request_id for p in plan.admit] == ["r1"] and reports == []
    lockstep.agree(StepPlan(), idle=True)
    assert [r.kind for r in reports] == ["latency"]
    lockstep.agree(StepPlan(), idle=True)
    assert [r.kind for r in reports] == ["latency", "bandwidth"]
    lockstep.agree(StepPlan(), idle=True)  # both within their intervals
    assert len(reports) == 2


# ------------------------------------------------------------------- the state's fold


def measured(at: float, latency_us=None, bandwidth_gbps=None, link="a↔b", group="g"):
    return LinkMeasured(link, group, ["a", "b"], "10.0.0.1↔10.0.0.2", at, 0.01,
                        latency_us, bandwidth_gbps)  # fmt: skip


def link(state: ClusterState, key: str = "g:a↔b"):
    return state.links.views[key]


def errors(state: ClusterState) -> list[tuple[str, str]]:
    return [(e.kind, e.message) for e in reversed(state.errors())]


def test_the_first_figures_are_the_baseline():
    state = ClusterState()
    state.apply(measured(1.0, latency_us=30.0))
    state.apply(measured(2.0, bandwidth_gbps=8.0))
    state.apply(measured(3.0, latency_us=40.0))
    view = link(state)
    assert (view.latency_us, view.baseline_latency_us) == (40.0, 30.0)
    assert (view.bandwidth_gbps, view.baseline_bandwidth_gbps) == (8.0, 8.0)
    assert (view.status, view.last_probe, view.probes) == ("active", 3.0, 3)
    assert view.interface == "10.0.0.1↔10.0.0.2" and view.nodes == ["a", "b"]
    assert errors(state) == []  # a link found active says nothing
    [shown] = state.snapshot()["links"]
    assert shown["id"] == "a↔b" and shown["group"] == "g" and shown["latency_us"] == 40.0
    assert state.live()["links"] == state.snapshot()["links"]


@pytest.mark.parametrize(
    ("latency_us", "bandwidth_gbps", "status"),
    [
        (30.0, 8.0, "active"),
        (90.0, 4.0, "active"),  # exactly 3x and exactly half: not yet
        (90.1, 8.0, "degraded"),
        (30.0, 3.99, "degraded"),
    ],
)
def test_degraded_past_3x_latency_or_below_half_bandwidth(latency_us, bandwidth_gbps, status):
    state = ClusterState()
    state.apply(measured(1.0, latency_us=30.0))
    state.apply(measured(2.0, bandwidth_gbps=8.0))
    state.apply(measured(3.0, latency_us=latency_us))
    state.apply(measured(4.0, bandwidth_gbps=bandwidth_gbps))
    assert link(state).status == status
    if status == "degraded":
        assert errors(state)[-1][0] == "link_degraded"
        assert "baseline" in link(state).reason


def test_down_when_a_probe_fails_and_back_when_one_passes():
    state = ClusterState()
    state.apply(measured(1.0, latency_us=30.0))
    state.apply(LinkDown("a↔b", "g", ["a", "b"], "x", 2.0, "latency probe timed out after 5 s"))
    view = link(state)
    assert (view.status, view.reason, view.latency_us, view.probes) == (
        "down", "latency probe timed out after 5 s", 30.0, 2,
    )  # fmt: skip
    state.apply(measured(3.0, latency_us=31.0))
    assert link(state).status == "active"
    assert errors(state) == [
        ("link_down", "link a↔b of group g (10.0.0.1↔10.0.0.2) is down: "
                      "latency probe timed out after 5 s"),
        ("link_active", "link a↔b of group g (10.0.0.1↔10.0.0.2) is active"),
    ]  # fmt: skip


def test_a_lost_group_takes_its_links_down_and_a_new_one_takes_a_new_baseline():
    state = ClusterState()
    state.apply(GroupDeclared("g", "m", ["a", "b"], "tensor", "ring"))
    state.apply(measured(1.0, latency_us=30.0))
    state.apply(measured(1.0, latency_us=30.0, group="other"))
    state.apply(GroupState("g", "starting"))  # says nothing of the link
    assert link(state).status == "active"
    state.apply(GroupState("g", "restarting", "rank 1 exited"))
    assert link(state).status == "down" and link(state).reason == "group restarting: rank 1 exited"
    assert link(state, "other:a↔b").status == "active"
    state.apply(measured(2.0, latency_us=200.0))  # kept across the restart: degraded
    assert link(state).status == "degraded" and link(state).baseline_latency_us == 30.0
    state.apply(GroupDeclared("g", "m", ["a", "b"], "tensor", "ring"))  # declared anew
    assert list(state.links.views) == ["other:a↔b"]


def test_metrics_show_each_link():
    state = ClusterState()
    state.apply(measured(1.0, latency_us=25.5))
    state.apply(measured(2.0, bandwidth_gbps=8.05))
    state.apply(LinkDown("b↔c", "g", ["b", "c"], "x", 2.0, "latency probe failed: lost"))
    text, _ = exposition(metrics_registry(state))
    samples = {
        (s.name, s.labels["link"]): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
        if "link" in s.labels
    }
    assert samples == {
        ("mlx_cluster_rdma_latency_us", "a↔b"): 25.5,
        ("mlx_cluster_rdma_bandwidth_gbps", "a↔b"): 8.05,
        ("mlx_cluster_link_up", "a↔b"): 1.0,
        ("mlx_cluster_link_up", "b↔c"): 0.0,
    }


# ----------------------------------------------------- link ids and the rank's report


def group(n: int, backend: str = "ring", **host) -> GroupSpec:
    hosts = tuple(
        HostSpec(ssh=f"h{i}", name=f"n{i}", ips=(f"10.0.0.{i}",), **host) for i in range(n)
    )
    return GroupSpec(name="g", model="m", hosts=hosts, backend=backend)


def test_two_ranks_make_one_link_and_a_ring_of_three_makes_three():
    assert group_links(group(1), ["n0"]) == []
    [one] = group_links(group(2), ["n0", "n1"])
    assert (one.id, one.nodes, one.interface) == ("n0↔n1", ["n0", "n1"], "10.0.0.0↔10.0.0.1")
    ring = group_links(group(3), ["n0", "n1", "n2"])
    assert [k.id for k in ring] == ["n0↔n1", "n1↔n2", "n2↔n0"]


def test_a_jaccl_link_is_named_by_its_rdma_devices():
    hosts = (
        HostSpec(ssh="m1", name="m1", ips=("10.0.0.1",), rdma=(None, "rdma_en3")),
        HostSpec(ssh="m2", name="m2", ips=("10.0.0.2",), rdma=("rdma_en4", None)),
    )
    jaccl = GroupSpec(name="g", model="m", hosts=hosts, backend="jaccl")
    [one] = group_links(jaccl, ["m1", "m2"])
    assert one.interface == "rdma_en3↔rdma_en4"


def test_one_report_is_one_event_per_link():
    links = group_links(group(3), ["n0", "n1", "n2"])
    ok = LinkProbe(kind="latency", at=5.0, seconds=0.002, latency_s=25.5e-6)
    events = link_events("g", links, ok)
    assert [type(e).__name__ for e in events] == ["LinkMeasured"] * 3
    assert events[0].latency_us == pytest.approx(25.5) and events[0].bandwidth_gbps is None
    bad = LinkProbe(kind="bandwidth", at=6.0, seconds=5.0, ok=False, error="timed out")
    assert {(type(e).__name__, e.reason) for e in link_events("g", links, bad)} == {
        ("LinkDown", "timed out")
    }


# ---------------------------------------------------------------------- the hostfile


def test_the_probe_section_reaches_the_ranks_and_its_bounds_are_one_line():
    hosts = b'"hosts": [{"ssh": "localhost"}]'
    spec = parse_hostfile(b'{%s, "probe": {"latency_interval": 0.5, "timeout": 2}}' % hosts, "h")
    assert probe_settings(spec.probe) == ProbeSettings(latency_interval=0.5, timeout=2.0)
    assert probe_settings(parse_hostfile(b"{%s}" % hosts, "h").probe) == ProbeSettings()
    for bad in (b'"latency_interval": 0', b'"bandwidth_bytes": 100', b'"timeout": 0'):
        with pytest.raises(HostfileError) as raised:
            parse_hostfile(b'{%s, "probe": {%s}}' % (hosts, bad), "h")
        message = str(raised.value)
        assert "probe" in message and "\n" not in message
