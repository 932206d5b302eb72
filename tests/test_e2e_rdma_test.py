"""`supervisor rdma-test` end to end: real probe ranks (ring backend) as local processes and
over a real loopback sshd with two and three "hosts"; a corrupt rank; a frozen rank.

Multi-rank CPU runs are slow on this VM: small sizes, few rounds.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, run_cli
from tests.sshd import Sshd, sshd_fixture  # noqa: F401

ALIAS = "loopmac"
QUICK = ("--sizes", "4K,256K", "--rounds", "3")


def local_hostfile(tmp: Path, ranks: int = 2, **extra) -> Path:
    hosts = [{"ssh": "localhost", "name": f"n{i}"} for i in range(ranks)]
    path = tmp / "local.json"
    path.write_text(json.dumps({"model": "demo:tiny", "hosts": hosts, **extra}))
    return path


def ssh_hostfile(sshd: Sshd, tmp: Path, ranks: int, env: dict | None = None) -> Path:
    """``ranks`` hosts reached over SSH (one sshd on loopback), one group of them all."""
    config = sshd.write_ssh_config(tmp / "ssh_config", ALIAS)
    known = sshd.write_known_hosts(tmp / "known_hosts")
    host = {"ssh": ALIAS, "ips": ["127.0.0.1"], "python": sys.executable, "workdir": str(ROOT)}
    doc = {
        "model": "demo:tiny",
        "hosts": [{**host, "name": f"mac{i + 1}", "env": env or {}} for i in range(ranks)],
        "ssh": {"known_hosts": str(known), "config": str(config), "retries": 1},
    }
    path = tmp / "cluster.json"
    path.write_text(json.dumps(doc))
    return path


class Probe:
    """A `supervisor rdma-test --verbose --json` child; its log lines read as they come,
    the rank PIDs it reports kept, every one of them ended by PID at the end."""

    def __init__(self, *args: str, on_connected=None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "rdma-test", *args, "--verbose", "--json"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pids: dict[int, int] = {}  # rank -> PID
        self._processes: list[psutil.Process] = []
        self.lines: queue.Queue[str] = queue.Queue()
        self._on_connected = on_connected or (lambda rank, pid: None)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "probe_rank_connected":
                self.pids[event["rank"]] = event["pid"]
                try:  # kept with its start time: a reused PID is not taken for it
                    self._processes.append(psutil.Process(event["pid"]))
                except psutil.NoSuchProcess:
                    pass  # already ended: a quick run reads its log late
                self._on_connected(event["rank"], event["pid"])

    def result(self, timeout: float) -> tuple[int, dict]:
        try:
            self.proc.wait(timeout)  # the JSON on stdout is far below a pipe's buffer
        except subprocess.TimeoutExpired:
            self.end()
            raise
        self._reader.join(5)
        assert self.proc.stdout is not None
        return self.proc.returncode, json.loads(self.proc.stdout.read())

    def end(self) -> None:
        for process in self._processes:
            try:
                process.kill()
            except psutil.Error:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def ranks_gone(self) -> bool:
        return all(_gone(p) for p in self._processes)


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def probe(*args: str, timeout: float = 120, **kw) -> tuple[int, dict, Probe]:
    p = Probe(*args, **kw)
    try:
        code, body = p.result(timeout)
    finally:
        p.end()
    return code, body, p


def assert_passed(body: dict, ranks: int, sizes: list[int]) -> None:
    assert body["passed"] is True
    (group,) = body["groups"]
    assert group["status"] == "passed", group["reason"]
    assert group["correct"] is True
    assert group["correctness"] == f"4096 elements exact over {ranks} ranks"
    assert group["latency_us"] > 0
    assert [b["bytes"] for b in group["bandwidth"]] == sizes
    assert all(0 < b["avg_gbps"] <= b["peak_gbps"] for b in group["bandwidth"])
    assert len(group["links"]) == (1 if ranks == 2 else ranks)
    assert all(link["up"] for link in group["links"])


def test_local_ranks_pass_with_figures_and_a_table(tmp_path):
    hostfile = local_hostfile(tmp_path)
    code, body, p = probe(str(hostfile), *QUICK)
    assert code == 0, body
    assert_passed(body, 2, [4096, 262144])
    assert sorted(p.pids) == [0, 1] and p.ranks_gone()
    shown = run_cli("rdma-test", str(hostfile), *QUICK)
    assert shown.returncode == 0, shown.stderr
    assert "group main · ring · n0 ↔ n1 · passed" in shown.stdout
    assert "✓ 4096 elements exact over 2 ranks" in shown.stdout
    assert "256 KB" in shown.stdout and "GB/s" in shown.stdout and "µs" in shown.stdout


@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_over_ssh_pass(sshd, tmp_path, ranks):
    code, body, p = probe(str(ssh_hostfile(sshd, tmp_path, ranks)), *QUICK, "--stress")
    for pid in p.pids.values():
        sshd.remember(pid)
    assert code == 0, body
    assert_passed(body, ranks, [4096, 262144])
    stress = body["groups"][0]["stress"]
    assert stress == {"rounds": 100, "failed": 0, "detail": ""}
    assert sorted(p.pids) == list(range(ranks)) and p.ranks_gone()


def test_a_corrupt_rank_fails_the_check(sshd, tmp_path):
    # MLXS_PROBE_CORRUPT_RANK is a test-only switch of the probe actor (actors/probe/actor.py).
    hostfile = ssh_hostfile(sshd, tmp_path, 2, env={"MLXS_PROBE_CORRUPT_RANK": "1"})
    code, body, p = probe(str(hostfile), "--sizes", "4K", "--rounds", "2", "--stress")
    for pid in p.pids.values():
        sshd.remember(pid)
    assert code == 1
    (group,) = body["groups"]
    assert body["passed"] is False and group["status"] == "failed"
    assert group["correct"] is False
    assert group["correctness"] == "4096/4096 elements wrong over 2 ranks; [0] = 4, expected 3"
    assert group["reason"].startswith("correctness: 4096/4096 elements wrong")
    assert group["stress"]["failed"] == 100
    assert group["latency_us"] > 0  # the other figures are still measured
    assert p.ranks_gone()


def test_a_frozen_rank_is_reported_down_within_the_deadline(sshd, tmp_path):
    hostfile = ssh_hostfile(sshd, tmp_path, 3)
    stopped: list[int] = []

    def freeze(rank: int, pid: int) -> None:
        sshd.remember(pid)
        if rank == 2:  # the last rank: the one that connects the ring
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)

    deadline = 8.0
    began = time.monotonic()
    code, body, p = probe(str(hostfile), *QUICK, "--deadline", str(deadline), on_connected=freeze)
    took = time.monotonic() - began
    assert stopped, "the last rank never connected"
    assert code == 1
    (group,) = body["groups"]
    assert group["status"] == "down"
    assert group["reason"].startswith(f"no report within {deadline:g} s")
    assert all(not link["up"] for link in group["links"]) and len(group["links"]) == 3
    assert group["correct"] is None and group["bandwidth"] == []
    assert deadline <= group["seconds"] < deadline + 5
    assert took < deadline + 30  # the command ended: spawns and kills included
    assert p.ranks_gone(), "a rank outlived the command"


def test_a_rank_that_dies_takes_the_group_down_at_once(tmp_path):
    hostfile = local_hostfile(tmp_path)

    def kill(rank: int, pid: int) -> None:
        if rank == 1:
            os.kill(pid, signal.SIGKILL)

    code, body, p = probe(str(hostfile), *QUICK, "--deadline", "60", on_connected=kill)
    assert code == 1
    (group,) = body["groups"]
    assert group["status"] == "down"
    assert group["reason"].startswith("rank 1 (n1) exited with status -9"), group["reason"]
    assert group["seconds"] < 30
    assert p.ranks_gone()


def _groups_file(tmp: Path) -> Path:
    path = tmp / "groups.json"
    path.write_text(
        json.dumps(
            {
                "model": "demo:tiny",
                "hosts": [{"ssh": "localhost", "name": "a"}, {"ssh": "localhost", "name": "b"}],
                "groups": [{"name": "solo", "hosts": [0]}, {"name": "pair", "hosts": [0, 1]}],
            }
        )
    )
    return path


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--sizes", "4Q"], "size '4Q' is not a byte count like 4096, 4K, 256K, 4M or 64M"),
        (["--sizes", "2G"], "size '2G' is outside 4 bytes .. 1G"),
        (["--rounds", "0"], "expected a whole number of at least 1, got '0'"),
        (["--deadline", "-1"], "deadline -1 s is outside 0 .. 86400"),
        (["--group", "nope"], 'no group named "nope" (groups: solo, pair)'),
        (["--group", "solo"], 'group "solo" has one rank: there is no link to test'),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, said):
    done = run_cli("rdma-test", str(_groups_file(tmp_path)), *args, timeout=30)
    assert done.returncode == 2
    assert said in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""


def test_a_hostfile_without_a_multi_rank_group_is_exit_2(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"model": "demo:tiny", "hosts": [{"ssh": "localhost"}]}))
    done = run_cli("rdma-test", str(path), timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"supervisor: {path}: no group has two or more ranks: no link to test"
    )
    missing = run_cli("rdma-test", str(tmp_path / "none.json"), timeout=30)
    assert missing.returncode == 2 and "no such file" in missing.stderr
