"""Link measurements over an MLX group: pure functions, no I/O.

Every rank of the group calls the same function with the same arguments, in the same
order (they are collectives). Each one evaluates and synchronizes its stream, so the
times are those of the data really crossing the link. ``stream=None`` is the default
stream; a serving group passes its own so that a probe is sequenced with its generation
collectives (MLX-NOTES: a collective on another stream while a step is in flight
corrupts logits).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import mlx.core as mx

LATENCY_BYTES = 1024  # the small all_sum whose round trip is the latency
_PATTERN = 251  # known values cycle 1..251: integer sums stay exact in float32 (< 2**24)


def _all_sum(x: mx.array, group: Any, stream: Any) -> mx.array:
    out = mx.distributed.all_sum(x, group=group, stream=stream)
    mx.eval(out)  # releases the GIL: heartbeats go on while a peer is slow
    mx.synchronize(stream)  # None: the default stream
    return out


def _timed(x: mx.array, group: Any, stream: Any) -> float:
    start = time.perf_counter()
    _all_sum(x, group, stream)
    return time.perf_counter() - start


def correctness(group: Any, stream: Any, n: int = 4096, corrupt: bool = False) -> tuple[bool, str]:
    """all_sum of known per-rank values, checked element by element: (passed, one line).

    Rank r contributes ``(r + 1) * base`` with ``base[i] = i % 251 + 1``, so the sum is
    ``size * (size + 1) / 2 * base`` exactly. ``corrupt`` (tests only) makes this rank add
    one to every element, as a rank with a broken link or buffer would.
    """
    rank, size = group.rank(), group.size()
    base = (mx.arange(n, dtype=mx.int32) % _PATTERN + 1).astype(mx.float32)
    mine = base * (rank + 1) + (1.0 if corrupt else 0.0)
    mx.eval(mine)
    out = _all_sum(mine, group, stream)
    expected = base * (size * (size + 1) // 2)
    wrong = out != expected
    bad = int(mx.sum(wrong).item())
    if bad == 0:
        return True, f"{n} elements exact over {size} ranks"
    first = int(mx.argmax(wrong).item())
    return False, (
        f"{bad}/{n} elements wrong over {size} ranks; "
        f"[{first}] = {out[first].item():g}, expected {expected[first].item():g}"
    )


def latency(group: Any, stream: Any, rounds: int) -> float:
    """The median seconds of a 1 KiB all_sum's round trip, after one warm-up round."""
    x = mx.ones(LATENCY_BYTES // 4, dtype=mx.float32)
    mx.eval(x)
    _all_sum(x, group, stream)
    return statistics.median(_timed(x, group, stream) for _ in range(max(1, rounds)))


def bandwidth(group: Any, stream: Any, nbytes: int, rounds: int) -> tuple[float, float]:
    """(average, peak) GB/s of an all_sum of ``nbytes``, after one warm-up round.

    Algorithm bandwidth, as the seed's ``rdma_test.py`` and nccl-tests report it:
    ``nbytes / seconds`` with GB = 1e9 bytes. The average is total bytes over total time
    (not the mean of the per-round rates); the peak is the fastest round's rate.
    """
    x = mx.ones(max(1, nbytes // 4), dtype=mx.float32)
    mx.eval(x)
    _all_sum(x, group, stream)
    times = [_timed(x, group, stream) for _ in range(max(1, rounds))]
    size = x.size * 4
    avg = size * len(times) / sum(times) / 1e9
    peak = size / min(times) / 1e9
    return avg, peak
