"""add-host refuses a remote host whose actors would dial a loopback control address.

A remote machine dialing 127.0.0.1 reaches itself, and would hand the cluster token to
whatever listens on that port there; the hostfile check says the same for hostfile hosts.
"""

from __future__ import annotations

import json

import pytest

from actors.runtime.control import ssh_client_address
from supervisor.cluster.cluster import Cluster
from supervisor.cluster.membership import ClusterMembership, dials_back_to
from supervisor.config.load import parse_hostfile
from supervisor.config.spec import HostSpec
from supervisor.serving.contract import BadRequest, HostJoin

FIX = "set control.host to this machine's address on the cluster network, then restart"


def cluster_spec(tmp_path, **extra):
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host far\n  HostName 192.0.2.7\n\nHost here\n  HostName 127.0.0.1\n  Port 2222\n"
    )
    doc = {"hosts": [{"ssh": "localhost"}], "model": "demo:tiny", "ssh": {"config": str(config)}}
    return parse_hostfile(json.dumps({**doc, **extra}).encode(), "hostfile.json")


async def test_add_host_of_a_remote_host_into_a_loopback_control_cluster_is_refused(tmp_path):
    cluster = Cluster(cluster_spec(tmp_path))
    membership = ClusterMembership(cluster)
    with pytest.raises(BadRequest) as refused:
        await membership.add_host(HostJoin(ssh="alice@192.0.2.7", name="mac9"))
    assert refused.value.status == 400 and refused.value.param == "ssh"
    assert str(refused.value) == (
        'control.host "127.0.0.1" is a loopback address but host "mac9" is remote; '
        f"{FIX} the supervisor"
    )
    # Nothing happened: no node, no group, no supervisor, no process.
    assert cluster.state.nodes == {} and cluster.groups == [] and cluster.supervisors == []


@pytest.mark.parametrize(
    ("control", "ssh", "refused"),
    [
        ("127.0.0.1", "alice@192.0.2.7", True),
        ("127.0.0.1", "far", True),  # an ssh_config alias for a remote address
        ("localhost", "mac9.local", True),
        ("::1", "[2001:db8::7]:22", True),
        ("127.0.0.1", "here", False),  # an alias for this machine: it dials itself
        ("127.0.0.1", "root@127.0.0.1:2222", False),
        ("127.0.0.1", "127.0.0.2", False),
        ("127.0.0.1", "localhost", False),
        ("192.168.1.10", "alice@192.0.2.7", False),  # a cluster address: reachable
    ],
)
def test_dials_back_to_refuses_only_remote_hosts_behind_loopback(tmp_path, control, ssh, refused):
    cluster_spec(tmp_path)  # writes the ssh_config
    problem = dials_back_to(control, HostSpec(ssh=ssh, name="n"), str(tmp_path / "ssh_config"))
    assert (problem is not None) is refused
    if refused:
        assert problem.endswith(f"{FIX} the supervisor") and "\n" not in problem


def test_with_remote_nodes_and_no_control_host_remote_actors_dial_their_ssh_client(tmp_path):
    spec = cluster_spec(
        tmp_path,
        hosts=[{"ssh": "localhost"}, {"ssh": "far", "name": "mac9"}],
        groups=[{"hosts": [0]}, {"hosts": [1]}],
    )
    cluster = Cluster(spec)
    assert cluster.control_host == "0.0.0.0"  # every interface: remote actors must reach it
    local, remote = spec.nodes
    assert cluster._dial_address(local) == "127.0.0.1"
    assert cluster._dial_address(remote) == ""  # actors.runtime.control: the SSH client's address
    # and a remote host may join such a cluster
    assert dials_back_to(cluster.control_host, HostSpec(ssh="alice@192.0.2.8"), None) is None


def test_an_explicit_control_host_is_what_every_actor_dials(tmp_path):
    spec = cluster_spec(
        tmp_path,
        hosts=[{"ssh": "localhost"}, {"ssh": "far"}],
        groups=[{"hosts": [0]}, {"hosts": [1]}],
        control={"host": "10.0.0.9"},
    )
    cluster = Cluster(spec)
    assert cluster.control_host == "10.0.0.9"
    assert {cluster._dial_address(h) for h in spec.nodes} == {"10.0.0.9"}


def test_a_local_only_cluster_listens_and_dials_on_loopback(tmp_path):
    cluster = Cluster(cluster_spec(tmp_path))
    assert cluster.control_host == "127.0.0.1"
    assert cluster._dial_address(cluster.spec.nodes[0]) == "127.0.0.1"


@pytest.mark.parametrize(
    ("environ", "address"),
    [
        ({"SSH_CONNECTION": "192.168.1.10 51234 192.168.1.11 22"}, "192.168.1.10"),
        ({"SSH_CONNECTION": "fe80::1%en0 51234 fe80::2%en0 22"}, "fe80::1%en0"),
        ({"SSH_CONNECTION": "127.0.0.1 40000 127.0.0.1 2222"}, "127.0.0.1"),
    ],
)
def test_a_remote_actor_takes_the_supervisor_address_from_its_ssh_session(environ, address):
    assert ssh_client_address(environ) == address


def test_no_ssh_session_and_no_control_host_is_a_clear_exit():
    with pytest.raises(SystemExit) as exited:
        ssh_client_address({})
    assert 'set "control": {"host": ...}' in str(exited.value)
