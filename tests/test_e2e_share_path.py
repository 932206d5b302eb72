"""Model files over a group's mx.distributed link (``supervisor.models.share_path``): a real
two-rank ring group on loopback, rank 0 a local process, rank 1 started through a real sshd,
running ``python -m actors share`` (``mlx_lm.share.share_file``) over real ring sockets."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest
from structlog.testing import capture_logs

from supervisor.config.load import load_hostfile
from supervisor.models.asks import JobFailed
from supervisor.models.share_path import ShareFile, share_over_group
from supervisor.supervision.transient import ports_after_serving
from tests.conftest import ROOT
from tests.sshd import Sshd, sshd_fixture  # noqa: F401

ALIAS = "loopmac"
MB = 1024 * 1024


def pair_spec(sshd: Sshd, tmp: Path):
    """n0 here, n1 over SSH: one ring group of both, every rank on loopback."""
    config = sshd.write_ssh_config(tmp / "ssh_config", ALIAS)
    known = sshd.write_known_hosts(tmp / "known_hosts")
    remote = {"ssh": ALIAS, "ips": ["127.0.0.1"], "python": sys.executable, "workdir": str(ROOT)}
    doc = {
        "model": "demo:tiny",
        "hosts": [
            {"ssh": "localhost", "name": "n0", "ips": ["127.0.0.1"]},
            {**remote, "name": "n1"},
        ],
        "ssh": {"known_hosts": str(known), "config": str(config), "retries": 1},
    }
    path = tmp / "cluster.json"
    path.write_text(json.dumps(doc))
    spec = load_hostfile(path)
    return spec, spec.groups[0]


def write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for start in range(0, size, 4 * MB):
            f.write(os.urandom(min(4 * MB, size - start)))
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def share(spec, group, files, deadline=120.0, on_progress=lambda n, pids: None, seen=None):
    """share_over_group's result (or exception), the bytes progress saw, the rank PIDs;
    ``seen`` (a list) gets every log event."""
    moved: list[int] = []
    with capture_logs() as logs:

        def progress(n: int) -> None:
            moved.append(n)
            on_progress(n, pids_of(logs))

        try:
            result = asyncio.run(
                share_over_group(spec, group, "n0", files, deadline=deadline, progress=progress)
            )
        except JobFailed as exc:
            result = exc
    if seen is not None:
        seen.extend(logs)
    return result, moved, pids_of(logs)


def pids_of(logs: list[dict]) -> dict[int, int]:
    return {e["rank"]: e["pid"] for e in logs if e.get("event") == "share_rank_connected"}


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def pair(sshd, tmp_path):
    return pair_spec(sshd, tmp_path)


def test_files_reach_the_staging_paths_and_an_absent_node_keeps_nothing(sshd, pair, tmp_path):
    spec, group = pair
    src, dst = tmp_path / "src", tmp_path / "dst" / ".mlxs-staging" / "job"
    big = write(src / "blobs" / "a", 20 * MB + 12345)  # a chunk's tail, not a whole one
    empty = write(src / "blobs" / "b", 0)
    third = write(src / "blobs" / "c", 3 * MB)
    files = [
        ShareFile(big.stat().st_size, {"n0": str(big), "n1": str(dst / "a")}),
        ShareFile(0, {"n0": str(empty), "n1": str(dst / "b")}),
        ShareFile(third.stat().st_size, {"n0": str(third)}),  # n1 needs it not
    ]
    result, moved, pids = share(spec, group, files)
    for pid in pids.values():
        sshd.remember(pid)
    assert not isinstance(result, Exception), result
    total = big.stat().st_size + third.stat().st_size
    assert result == total and sum(moved) == total
    assert digest(dst / "a") == digest(big)
    assert (dst / "b").exists() and (dst / "b").stat().st_size == 0
    assert sorted(p.name for p in dst.iterdir()) == ["a", "b"]  # nothing of c anywhere
    assert sorted(pids) == [0, 1] and all(gone(p) for p in pids.values())


def test_a_rank_killed_mid_share_fails_the_job_within_the_deadline(sshd, pair, tmp_path):
    spec, group = pair
    blob = write(tmp_path / "src" / "big", 320 * MB)  # four 100 MB chunks
    files = [ShareFile(blob.stat().st_size, {"n0": str(blob), "n1": str(tmp_path / "d" / "b")})]
    killed: list[int] = []

    def kill_the_receiver(n: int, pids: dict[int, int]) -> None:
        if not killed and 1 in pids:
            os.kill(pids[1], signal.SIGKILL)
            killed.append(pids[1])

    deadline = 60.0
    began = time.monotonic()
    result, moved, pids = share(spec, group, files, deadline, kill_the_receiver)
    took = time.monotonic() - began
    for pid in pids.values():
        sshd.remember(pid)
    assert killed, "no progress was reported before the end"
    assert isinstance(result, JobFailed)
    assert str(result).startswith('group "main": share from n0 over ring: rank'), str(result)
    assert "\n" not in str(result)
    assert took < deadline
    assert all(gone(p) for p in pids.values()), "a rank outlived the share"


def test_a_frozen_rank_fails_the_job_at_the_deadline(sshd, pair, tmp_path):
    """MLX collectives have no timeout: a stopped peer hangs the others; the deadline ends
    them all by PID."""
    spec, group = pair
    blob = write(tmp_path / "src" / "big", 220 * MB)  # three chunks
    files = [ShareFile(blob.stat().st_size, {"n0": str(blob), "n1": str(tmp_path / "d" / "b")})]
    stopped: list[int] = []

    def freeze_the_receiver(n: int, pids: dict[int, int]) -> None:
        if not stopped and 1 in pids:
            os.kill(pids[1], signal.SIGSTOP)
            stopped.append(pids[1])

    deadline = 8.0
    began = time.monotonic()
    result, _, pids = share(spec, group, files, deadline, freeze_the_receiver)
    took = time.monotonic() - began
    for pid in pids.values():
        sshd.remember(pid)
    assert stopped, "no progress was reported before the end"
    assert isinstance(result, JobFailed)
    assert str(result) == (
        'group "main": share from n0 over ring: no end of the share within 8 s: stuck during '
        "share; a rank hangs or a link is down"
    )
    assert deadline <= took < deadline + 20
    assert all(gone(p) for p in pids.values()), "a rank outlived the share"


def test_serving_ports_are_left_to_the_serving_groups(tmp_path):
    hosts = [{"ssh": f"mac{i}", "ips": [f"10.0.0.{i}"], "name": f"mac{i}"} for i in (1, 2)]
    doc = {
        "model": "demo:tiny",
        "hosts": hosts,
        "groups": [{"name": "a", "hosts": [0, 1]}, {"name": "b", "hosts": [0, 1]}],
    }
    (tmp_path / "h.json").write_text(json.dumps(doc))
    spec = load_hostfile(tmp_path / "h.json")
    first, second = spec.groups
    assert (first.starting_port, second.starting_port) == (32323, 32325)
    assert ports_after_serving(spec, first) == ports_after_serving(spec, second) == 32327
    here = load_hostfile(write_json(tmp_path / "l.json", [{"ssh": "localhost"}] * 2))
    assert ports_after_serving(here, here.groups[0]) is None  # free ones, picked at spawn


def write_json(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_a_source_outside_the_group_is_refused_before_anything_starts(pair, tmp_path):
    spec, group = pair
    files = [ShareFile(1, {"n0": "/x", "elsewhere": "/y"})]
    result, moved, pids = share(spec, group, files)
    assert isinstance(result, JobFailed)
    assert str(result) == 'group "main": nodes elsewhere are not among its ranks'
    assert pids == {} and moved == []
