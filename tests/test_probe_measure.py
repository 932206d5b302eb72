"""actors.probe.measure on a singleton group (no env: mx.distributed.init gives one rank).

Multi-rank runs over the ring are covered by tests/test_e2e_rdma_test.py.
"""

from __future__ import annotations

import mlx.core as mx
import pytest

from actors.probe import measure


@pytest.fixture(scope="module")
def group():
    g = mx.distributed.init()
    assert g.size() == 1
    return g


@pytest.mark.parametrize("stream", [None, "cpu"])
def test_correctness_passes_on_known_values(group, stream):
    s = mx.new_stream(mx.cpu) if stream else None
    ok, line = measure.correctness(group, s, n=1000)
    assert ok, line
    assert line == "1000 elements exact over 1 ranks"


def test_correctness_catches_a_corrupt_rank(group):
    ok, line = measure.correctness(group, None, n=300, corrupt=True)
    assert not ok
    assert line == "300/300 elements wrong over 1 ranks; [0] = 2, expected 1"


def test_correctness_values_stay_exact_for_large_tensors(group):
    # Values cycle so that float32 sums stay exact whatever the size.
    ok, line = measure.correctness(group, None, n=1 << 20)
    assert ok, line


def test_latency_is_a_positive_median(group):
    seconds = measure.latency(group, None, rounds=5)
    assert 0 < seconds < 1


def test_bandwidth_average_never_exceeds_peak(group):
    avg, peak = measure.bandwidth(group, mx.new_stream(mx.cpu), 256 * 1024, rounds=3)
    assert 0 < avg <= peak


def test_bandwidth_of_tiny_sizes_rounds_up_to_one_element(group):
    avg, peak = measure.bandwidth(group, None, 1, rounds=1)
    assert avg > 0 and peak > 0
