"""The pure parts of `supervisor rdma-test` and the probe actor: sizes, links, verdicts."""

from __future__ import annotations

import argparse

import pytest
from rich.console import Console

from actors.probe.actor import corrupt_rank, probe_options
from actors.protocol.messages import ProbeBandwidth, ProbeReport
from supervisor.cli.links.probe_run import ProbeOptions, ProbeOutcome, ring_links, verdict
from supervisor.cli.links.rdma_test import as_json, parse_size, parse_sizes, render


@pytest.mark.parametrize(
    ("text", "value"),
    [("4K", 4096), ("256k", 262144), ("4M", 4 << 20), ("64MiB", 64 << 20), ("100", 100)],
)
def test_sizes_are_binary_units(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "K", "4Q", "1.5M", "-4K", "2G", "3"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


def test_a_size_list_keeps_its_order():
    assert parse_sizes("4M, 4K,") == (4 << 20, 4096)


def test_a_ring_of_two_is_one_link_and_of_three_is_three():
    assert ring_links(["a", "b"]) == [("a", "b")]
    assert ring_links(["a", "b", "c"]) == [("a", "b"), ("b", "c"), ("c", "a")]


def test_the_verdict_names_the_first_failed_check():
    good = ProbeReport(correct=True, correctness="ok", stress_rounds=100)
    assert verdict(good) == ("passed", "")
    assert verdict(ProbeReport(correct=False, correctness="3/4 wrong")) == (
        "failed",
        "correctness: 3/4 wrong",
    )
    stressed = ProbeReport(
        correct=True, correctness="ok", stress_rounds=100, stress_failed=2, stress_detail="r7"
    )
    assert verdict(stressed) == ("failed", "stress: 2 of 100 rounds wrong; r7")


def test_probe_options_and_the_test_only_corrupt_switch():
    assert probe_options({"sizes": "4096,65536", "rounds": "3", "stress": "1"}) == (
        [4096, 65536],
        3,
        True,
    )
    assert probe_options({}) == ([4096, 262144, 4194304, 67108864], 20, False)
    with pytest.raises(ValueError):
        probe_options({"rounds": "0"})
    assert corrupt_rank({"MLXS_PROBE_CORRUPT_RANK": "1"}) == 1
    assert corrupt_rank({}) is None and corrupt_rank({"MLXS_PROBE_CORRUPT_RANK": "x"}) is None


def _text(renderable) -> str:
    console = Console(width=120, record=True)
    console.print(renderable)
    return console.export_text()


def test_the_table_shows_figures_and_a_down_group_its_reason():
    options = ProbeOptions((4096, 64 << 20), 20, True, 60)
    report = ProbeReport(
        correct=True,
        correctness="4096 elements exact over 2 ranks",
        latency_us=25.5,
        bandwidth=[ProbeBandwidth(4096, 0.5, 0.6), ProbeBandwidth(64 << 20, 7.94, 8.05)],
        stress_rounds=100,
    )
    up = ProbeOutcome("g", "jaccl", ["m1", "m2"], [("m1", "m2")], "passed", "", report)
    shown = _text(render(up, options))
    assert "group g · jaccl · m1 ↔ m2 · passed" in shown
    assert "25.5 µs" in shown and "64 MB" in shown and "7.94 GB/s" in shown
    assert "8.05 GB/s" in shown and "✓ 100/100 rounds exact" in shown
    down = ProbeOutcome("g", "ring", ["a", "b"], [("a", "b")], "down", "no report within 5 s")
    shown = _text(render(down, options))
    assert "links down" in shown and "✗ down: no report within 5 s" in shown
    body = as_json([up, down], options)
    assert body["passed"] is False
    assert [g["status"] for g in body["groups"]] == ["passed", "down"]
    assert body["groups"][1]["links"] == [{"a": "a", "b": "b", "up": False}]
    assert body["groups"][0]["bandwidth"][1] == {
        "bytes": 64 << 20,
        "avg_gbps": 7.94,
        "peak_gbps": 8.05,
    }
