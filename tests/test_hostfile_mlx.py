"""Hostfile parity with mlx.launch: what it reads, rdma rules, MLX_HOSTFILE and jaccl env."""

from __future__ import annotations

import argparse
import json

import msgspec
import pytest
from mlx._distributed_utils import launch as mlx_launch
from mlx._distributed_utils.common import Host, Hostfile

from supervisor.config.load import load_hostfile
from supervisor.config.mlx_launch import jaccl_env, ring_hostfile
from supervisor.config.spec import HostSpec
from tests.test_hostfile import EXAMPLES, error, mesh, parse


def test_mlx_launch_example_is_one_jaccl_group_that_mlx_itself_reads_the_same():
    spec = load_hostfile(EXAMPLES / "mlx-launch-2mac.json")
    theirs = Hostfile.from_file(EXAMPLES / "mlx-launch-2mac.json")
    [group] = spec.groups
    assert group.backend == theirs.backend == "jaccl"
    assert spec.envs == {"MLX_METAL_FAST_SYNCH": "1"} and theirs.envs == ["MLX_METAL_FAST_SYNCH=1"]
    ours = [(h.ssh, list(h.ips), list(h.rdma)) for h in group.hosts]
    assert ours == [(h.ssh_hostname, h.ips, h.rdma) for h in theirs.hosts]


def test_hostfile_written_by_mlx_to_json_parses_with_empty_backend_meaning_ring(tmp_path):
    written = Hostfile([Host(0, "mac1", ["10.0.0.1"], []), Host(1, "mac2", ["10.0.0.2"], [])])
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps(written.to_json(), indent=4))
    [group] = load_hostfile(path).groups
    assert (group.backend, [h.ssh for h in group.hosts]) == ("ring", ["mac1", "mac2"])


# -- jaccl rdma matrices ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "hosts", "message"),
    [
        (
            "jaccl",
            [{**h, "rdma": h["rdma"][:2]} for h in mesh(3)],
            'host 0 ("mac0") has 2 "rdma" entries; the jaccl backend needs one per host (3), null',
        ),
        (
            "jaccl",
            [{**h, "rdma": ["rdma_x"] * 2} for h in mesh(2)],
            'host 0 ("mac0") "rdma"[0] must be null: a host has no RDMA device to itself',
        ),
        (
            "jaccl",
            mesh(4, ring=True),
            'no RDMA device is listed from host 0 ("mac0") to host 2 ("mac2"), host 1 ("mac1") to '
            'host 3 ("mac3"), host 2 ("mac2") to host 0 ("mac0") and 1 more; the jaccl backend',
        ),
        (
            "jaccl",
            [{**mesh(2)[0], "ips": []}, mesh(2)[1]],
            'host 0 ("mac0") has no "ips"; the jaccl backend needs rank 0\'s address',
        ),
        (
            "jaccl-ring",
            [{**h, "rdma": [None] * 4} for h in mesh(4)],
            "no RDMA device is listed from host 0",
        ),
    ],
)
def test_malformed_rdma_matrices_are_refused(backend, hosts, message):
    assert error({"backend": backend, "hosts": hosts}).startswith(f"hostfile.json: {message}")


@pytest.mark.parametrize(("backend", "ring"), [("jaccl", False), ("jaccl-ring", True)])
def test_well_formed_rdma_matrices_are_accepted(backend, ring):
    [group] = parse({"backend": backend, "hosts": mesh(4, ring=ring)}).groups
    assert group.backend == backend and group.world_size == 4


def test_multi_device_rdma_entries_are_accepted():
    hosts = [
        {**h, "rdma": [None if d is None else [d, d + "b"] for d in h["rdma"]]} for h in mesh(2)
    ]
    [group] = parse({"backend": "jaccl", "hosts": hosts}).groups
    assert group.hosts[0].rdma == (None, ("rdma_en1", "rdma_en1b"))


def test_group_of_some_mesh_hosts_gets_its_rdma_matrix_reindexed():
    spec = parse(
        {
            "backend": "jaccl",
            "hosts": mesh(4),
            "groups": [{"name": "a", "hosts": [0, 2]}, {"name": "b", "hosts": [3, 1]}],
        }
    )
    a, b = spec.groups
    assert [h.rdma for h in a.hosts] == [(None, "rdma_en2"), ("rdma_en0", None)]
    assert [h.rdma for h in b.hosts] == [(None, "rdma_en1"), ("rdma_en3", None)]


# -- parity with mlx.launch ------------------------------------------------------------------


def _mlx_hosts(hosts: list[HostSpec]) -> list[Host]:
    return [
        Host(i, h.ssh, list(h.ips), [list(d) if isinstance(d, tuple) else d for d in h.rdma])
        for i, h in enumerate(hosts)
    ]


def _mlx_launch(monkeypatch, launcher, hosts, backend="ring", **options):
    """Run mlx's launch_* up to the point it would start processes; return (files, env)."""
    calls = []
    monkeypatch.setattr(mlx_launch, "_launch_with_io", lambda *args: calls.append(args[1]))
    defaults = {"starting_port": 32323, "connections_per_ip": 1}
    args = argparse.Namespace(
        env=[], verbose=False, cwd=None, python=None, backend=backend, **{**defaults, **options}
    )
    parser = argparse.ArgumentParser()
    launcher(parser, _mlx_hosts(hosts), args, ["true"])
    (_rank, _ssh, _python, _cwd, files, env, _command), _ = calls[0][0]
    return files, env


@pytest.mark.parametrize(
    ("ips", "connections", "port"),
    [
        ([["10.0.0.1"], ["10.0.0.2"]], 1, 32323),
        ([["10.0.0.1", "10.1.0.1"], ["10.0.0.2"], ["10.0.0.3", "10.1.0.3"]], 2, 40000),
        ([["10.0.0.1"], ["10.0.0.2"], ["10.0.0.3"], ["10.0.0.4"]], 3, 5000),
    ],
)
def test_ring_hostfile_matches_mlx_launch_ring(monkeypatch, ips, connections, port):
    hosts = [HostSpec(ssh=f"mac{i}", ips=tuple(h)) for i, h in enumerate(ips)]
    files, _ = _mlx_launch(
        monkeypatch,
        mlx_launch.launch_ring,
        hosts,
        starting_port=port,
        connections_per_ip=connections,
    )
    ours = ring_hostfile(hosts, starting_port=port, connections_per_ip=connections)
    assert json.loads(files["MLX_HOSTFILE"]) == ours


def test_ring_hostfile_uses_loopback_for_local_hosts_without_ips():
    hosts = [HostSpec(ssh="localhost"), HostSpec(ssh="127.0.0.1")]
    assert ring_hostfile(hosts) == [["127.0.0.1:32323"], ["127.0.0.1:32324"]]


def test_ring_hostfile_refuses_a_remote_host_without_ips():
    with pytest.raises(ValueError, match='has no "ips"'):
        ring_hostfile([HostSpec(ssh="mac1", name="mac1"), HostSpec(ssh="mac2", ips=("1.2.3.4",))])


@pytest.mark.parametrize(("backend", "n"), [("jaccl", 2), ("jaccl", 4), ("jaccl-ring", 4)])
def test_jaccl_env_matches_mlx_launch_jaccl(monkeypatch, backend, n):
    hosts = parse({"backend": backend, "hosts": mesh(n, ring=backend == "jaccl-ring")}).nodes
    files, env = _mlx_launch(monkeypatch, mlx_launch.launch_jaccl, list(hosts), backend=backend)
    ours = jaccl_env(hosts, backend=backend)
    assert ours.ibv_devices == files["MLX_IBV_DEVICES"]
    variables = ours.variables("/tmp/devices.json")
    expected = dict(e.split("=", 1) for e in env)
    assert variables == {**expected, "MLX_IBV_DEVICES": "/tmp/devices.json"}


def test_jaccl_env_serialises_multi_device_entries_like_mlx(monkeypatch):
    hosts = [
        HostSpec(ssh="a", ips=("10.0.0.1",), rdma=(None, ("r1", "r2"))),
        HostSpec(ssh="b", ips=("10.0.0.2",), rdma=(("r3", "r4"), None)),
    ]
    files, _ = _mlx_launch(monkeypatch, mlx_launch.launch_jaccl, hosts, backend="jaccl")
    assert jaccl_env(hosts).ibv_devices == files["MLX_IBV_DEVICES"]


@pytest.mark.parametrize(
    ("backend", "hosts"),
    [
        ("jaccl", [{**h, "rdma": h["rdma"][:2]} for h in mesh(3)]),
        ("jaccl", [{**h, "rdma": ["x"] * 2} for h in mesh(2)]),
        ("jaccl", mesh(4, ring=True)),
        ("jaccl-ring", [{**h, "rdma": [None] * 4} for h in mesh(4)]),
        ("jaccl", [{**mesh(2)[0], "ips": []}, mesh(2)[1]]),
    ],
)
def test_rdma_matrices_we_refuse_mlx_launch_refuses_too(monkeypatch, backend, hosts):
    error({"backend": backend, "hosts": hosts})
    specs = [msgspec.convert(h, HostSpec) for h in hosts]
    with pytest.raises(SystemExit):
        _mlx_launch(monkeypatch, mlx_launch.launch_jaccl, specs, backend=backend)
