"""What each rank is started with: mlx.launch's variables, its files, ports and a core."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys

import mlx._distributed_utils.launch as mlx_launch
import pytest
from mlx._distributed_utils.common import Host

from actors.protocol.rank_env import CPU_ENV, FILE_PREFIX, write_rank_files
from supervisor.config.load import parse_hostfile
from supervisor.config.spec import GroupSpec, HostSpec
from supervisor.supervision.ranks import (
    THIS_MACHINE,
    cpu_environment,
    cpu_slots,
    free_starting_port,
    machine_name,
    rank_environments,
)


def mlx_launch_ranks(monkeypatch, launcher, hosts, backend, port) -> list[dict[str, str]]:
    """Every rank's environment as mlx.launch builds it, files given by their content."""
    calls = []
    monkeypatch.setattr(mlx_launch, "_launch_with_io", lambda *args: calls.append(args[1]))
    args = argparse.Namespace(
        env=[], verbose=False, cwd=None, python=None, backend=backend,
        starting_port=port, connections_per_ip=1,
    )  # fmt: skip
    mlx_hosts = [
        Host(i, h.ssh, list(h.ips), [list(d) if isinstance(d, tuple) else d for d in h.rdma])
        for i, h in enumerate(hosts)
    ]
    launcher(argparse.ArgumentParser(), mlx_hosts, args, ["true"])
    ranks = []
    for (rank, _ssh, _python, _cwd, files, env, _command), _ in calls[0]:
        variables = dict(e.split("=", 1) for e in env)
        variables.update({FILE_PREFIX + k: v for k, v in files.items()})
        ranks.append({**variables, "MLX_RANK": str(rank)})
    return ranks


def group_of(document: dict) -> GroupSpec:
    return parse_hostfile(json.dumps(document).encode(), "h.json").groups[0]


def mesh(n: int) -> list[dict]:
    return [
        {"ssh": f"mac{i}", "ips": [f"10.0.0.{i + 1}"],
         "rdma": [None if j == i else f"rdma_en{j}" for j in range(n)]}
        for i in range(n)
    ]  # fmt: skip


@pytest.mark.parametrize("n, port", [(2, 32323), (3, 40000), (4, 5000)])
def test_ring_ranks_get_what_mlx_launch_exports(monkeypatch, n, port):
    group = group_of({"hosts": [{"ssh": f"mac{i}", "ips": [f"10.0.0.{i}"]} for i in range(n)]})
    theirs = mlx_launch_ranks(monkeypatch, mlx_launch.launch_ring, group.hosts, "ring", port)
    ours = rank_environments(group, port)
    for rank, (mine, mlx) in enumerate(zip(ours, theirs, strict=True)):
        assert {k: mine[k] for k in mlx} == mlx
        assert mine["MLX_WORLD_SIZE"] == str(n) and mine["MLXS_DISTRIBUTED_BACKEND"] == "ring"
        assert json.loads(mine["MLXS_FILE_MLX_HOSTFILE"])[rank] == [f"10.0.0.{rank}:{port + rank}"]


@pytest.mark.parametrize("backend, n", [("jaccl", 2), ("jaccl", 4), ("jaccl-ring", 4)])
def test_jaccl_ranks_get_what_mlx_launch_exports(monkeypatch, backend, n):
    group = group_of({"backend": backend, "hosts": mesh(n)})
    theirs = mlx_launch_ranks(monkeypatch, mlx_launch.launch_jaccl, group.hosts, backend, 32323)
    ours = rank_environments(group, 32323)
    for mine, mlx in zip(ours, theirs, strict=True):
        assert {k: mine[k] for k in mlx} == mlx
        assert mine["MLXS_DISTRIBUTED_BACKEND"] == "jaccl"
    assert ours[0]["MLX_JACCL_COORDINATOR"] == "10.0.0.1:32323"


def test_a_one_rank_group_gets_no_distributed_variables():
    assert rank_environments(group_of({"hosts": [{"ssh": "localhost"}]}), None) == [{}]


def test_rank_files_are_written_and_pointed_at(tmp_path):
    env = {"MLXS_FILE_MLX_HOSTFILE": '[["127.0.0.1:1"], ["127.0.0.1:2"]]', "OTHER": "x"}
    (path,) = write_rank_files(env, str(tmp_path))
    assert env["MLX_HOSTFILE"] == path and path.startswith(str(tmp_path))
    assert json.loads(open(path).read()) == [["127.0.0.1:1"], ["127.0.0.1:2"]]
    assert env["OTHER"] == "x"


def test_free_starting_port_gives_consecutive_free_ports():
    first = free_starting_port(3)
    for port in range(first, first + 3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_ranks_sharing_a_machine_get_a_core_each():
    doc = {
        "hosts": [
            {"ssh": "localhost", "name": "a"},
            {"ssh": "localhost", "name": "b"},
            {"ssh": "mac1", "ips": ["10.0.0.1"]},
            {"ssh": "mac2", "ips": ["10.0.0.2"]},
        ],
        "groups": [
            {"name": "local", "hosts": ["a", "b"]},
            {"name": "macs", "hosts": ["mac1", "mac2"]},
            {"name": "solo", "hosts": ["a"]},
        ],
    }
    spec = parse_hostfile(json.dumps(doc).encode(), "h.json")
    slots = cpu_slots(spec.groups, lambda h: machine_name(h))
    assert slots == {("local", 0): 0, ("local", 1): 1}  # one Mac per rank: nothing to pin
    assert cpu_environment(slots.get(("local", 1))) == {CPU_ENV: "1", "OPENBLAS_NUM_THREADS": "1"}
    assert cpu_environment(None) == {}


def test_machine_names_see_through_ssh_config_and_loopback(tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text("Host loop\n  HostName 127.0.0.1\n  Port 2222\nHost big\n  HostName Mac1\n")
    name = str(config)
    assert machine_name(HostSpec(ssh="localhost")) == THIS_MACHINE
    assert machine_name(HostSpec(ssh="loop"), name) == THIS_MACHINE
    assert machine_name(HostSpec(ssh="root@127.0.0.1:2200"), name) == THIS_MACHINE
    assert machine_name(HostSpec(ssh="big"), name) == "mac1"
    assert machine_name(HostSpec(ssh="mac2.local"), name) == "mac2.local"


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_a_pinned_rank_runs_every_thread_on_its_core():
    code = (
        "import os, threading; from actors.protocol.rank_env import pin_to_cpu; "
        "core = pin_to_cpu(os.environ); t = threading.Thread(target=lambda: None); t.start(); "
        "print(core, sorted(os.sched_getaffinity(0)))"
    )
    cores = sorted(os.sched_getaffinity(0))
    env = {**os.environ, CPU_ENV: str(len(cores) + 1)}  # wraps around the usable cores
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split(maxsplit=1)
    expected = cores[(len(cores) + 1) % len(cores)]
    assert int(out[0]) == expected and out[1].strip() == f"[{expected}]"
