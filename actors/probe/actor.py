"""Probe actor (`python -m actors probe`): one rank of a link test, no model loaded.

Every rank joins the group with the environment the supervisor gave it (as a generation
rank would), says ``LoadProgress(stage="joined")``, then all run the same collectives in
the same order: correctness, latency, the bandwidth sweep, and with ``stress`` 100 checked
rounds of the largest size. Rank 0 reports progress (``LoadProgress``) and the figures
(``ProbeReport``); the command that spawned the ranks ends them by PID.

Options (``ActorConfig.options``, strings): ``sizes`` comma-separated byte counts,
``rounds`` timed rounds per figure, ``stress`` "1" for the stress run.

``MLXS_PROBE_CORRUPT_RANK=N`` — TESTS ONLY: rank N adds one to every value of each
correctness check, so the group's check fails as a broken link would make it.
"""

from __future__ import annotations

import os

import structlog

from actors.protocol.messages import LoadProgress, ProbeBandwidth, ProbeReport
from actors.protocol.rank_env import join_transient_group, pin_to_cpu

log = structlog.get_logger()

CORRUPT_ENV = "MLXS_PROBE_CORRUPT_RANK"
STRESS_ROUNDS = 100
CORRECTNESS_ELEMENTS = 4096
DEFAULT_SIZES = (4096, 262144, 4194304, 67108864)
DEFAULT_ROUNDS = 20


def probe_options(options: dict[str, str]) -> tuple[list[int], int, bool]:
    """(sizes in bytes, rounds, stress) from the actor's options."""
    text = options.get("sizes", "")
    sizes = [int(s) for s in text.split(",") if s] or list(DEFAULT_SIZES)
    rounds = int(options.get("rounds", DEFAULT_ROUNDS))
    if rounds < 1 or any(s < 1 for s in sizes):
        raise ValueError(f"probe: sizes and rounds must be positive (sizes={text}, {rounds=})")
    return sizes, rounds, options.get("stress") == "1"


def corrupt_rank(environ) -> int | None:
    text = environ.get(CORRUPT_ENV, "")
    return int(text) if text.strip().lstrip("-").isdigit() else None


class ProbeActor:
    def __init__(self) -> None:
        self._runtime = None

    def start(self, runtime) -> None:
        core = pin_to_cpu(os.environ)  # before MLX starts its threads: they inherit it
        if core is not None:
            log.info("pinned_to_cpu", core=core)
        import mlx.core as mx

        from actors.probe import measure

        cfg = runtime.config
        sizes, rounds, stress = probe_options(cfg.options)
        group = join_transient_group(mx, cfg.world_size, "probe")
        rank = group.rank()
        corrupt = corrupt_rank(os.environ) == rank
        if corrupt:
            log.warning("probe_corrupting", rank=rank, reason=f"${CORRUPT_ENV} (tests only)")
        runtime.send(LoadProgress(stage="joined", detail=f"rank {rank} pid {os.getpid()}"))
        stream = mx.new_stream(mx.default_device())
        total = 2 + len(sizes) + (STRESS_ROUNDS if stress else 0)
        done = 0

        def step(stage: str, detail: str) -> None:
            nonlocal done
            done += 1
            if rank == 0:
                runtime.send(LoadProgress(stage=stage, fraction=done / total, detail=detail))

        correct, line = measure.correctness(group, stream, CORRECTNESS_ELEMENTS, corrupt)
        step("correctness", line)
        seconds = measure.latency(group, stream, rounds)
        step("latency", f"{seconds * 1e6:.1f} us")
        sweep = []
        for nbytes in sizes:
            avg, peak = measure.bandwidth(group, stream, nbytes, rounds)
            sweep.append(ProbeBandwidth(nbytes=nbytes, avg_gbps=avg, peak_gbps=peak))
            step("bandwidth", f"{nbytes} bytes: {avg:.3f} GB/s avg, {peak:.3f} peak")
        failed, first_failure = 0, ""
        for i in range(STRESS_ROUNDS if stress else 0):
            ok, said = measure.correctness(group, stream, max(sizes) // 4, corrupt)
            if not ok:
                failed += 1
                first_failure = first_failure or f"round {i + 1}: {said}"
            step("stress", f"round {i + 1}/{STRESS_ROUNDS}")
        if rank == 0:
            runtime.send(
                ProbeReport(
                    correct=correct,
                    correctness=line,
                    latency_us=seconds * 1e6,
                    bandwidth=sweep,
                    stress_rounds=STRESS_ROUNDS if stress else 0,
                    stress_failed=failed,
                    stress_detail=first_failure,
                )
            )
        log.info("probe_done", rank=rank, correct=correct, latency_us=round(seconds * 1e6, 1))

    def handle(self, msg) -> None:
        pass  # a probe takes no work: it runs once, then waits to be ended

    def vitals(self) -> dict[str, int | float]:
        return {}

    def stop(self) -> None:
        pass
