"""add-host refuses a remote host whose actors would dial a loopback control address.

A remote machine dialing 127.0.0.1 reaches itself, and would hand the cluster token to
whatever listens on that port there; the hostfile check says the same for hostfile hosts.
"""

from __future__ import annotations

import json

import pytest

from supervisor.cluster import Cluster
from supervisor.hostfile import HostSpec, parse_hostfile
from supervisor.membership import ClusterMembership, dials_back_to
from supervisor.service import BadRequest, HostJoin

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
