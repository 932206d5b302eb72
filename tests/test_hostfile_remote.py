"""Hostfile keys for remote groups: the "ssh" section, ssh targets, and each group's ports."""

from __future__ import annotations

import json

import pytest

from supervisor.config.load import HostfileError, parse_hostfile
from supervisor.config.mlx_launch import listen_addresses
from supervisor.config.spec import RING_STARTING_PORT, ClusterSpec, SSHSpec

MAC1 = {"ssh": "mac1", "ips": ["10.0.0.1"]}
MAC2 = {"ssh": "mac2", "ips": ["10.0.0.2"]}
MAC3 = {"ssh": "mac3", "ips": ["10.0.0.3", "10.1.0.3"]}


def parse(document: object) -> ClusterSpec:
    return parse_hostfile(json.dumps(document).encode(), "hostfile.json")


def error(document: object) -> str:
    with pytest.raises(HostfileError) as info:
        parse(document)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_ssh_section_defaults_to_the_users_files():
    assert parse([MAC1]).ssh == SSHSpec()
    assert SSHSpec().known_hosts is None and SSHSpec().config is None
    assert not SSHSpec().accept_new_host_keys


def test_ssh_section_is_read():
    ssh = {
        "known_hosts": "~/cluster/known_hosts",
        "accept_new_host_keys": True,
        "connect_timeout": 3.5,
        "retries": 0,
        "config": "~/cluster/ssh_config",
    }
    assert parse({"hosts": [MAC1], "ssh": ssh}).ssh == SSHSpec(**ssh)


@pytest.mark.parametrize(
    "ssh, message",
    [
        ({"retries": -1}, "hostfile.json: $.ssh.retries: Expected int >= 0"),
        ({"connect_timeout": 0}, "hostfile.json: $.ssh.connect_timeout: Expected float > 0"),
        ({"know_hosts": "x"}, 'hostfile.json: $.ssh: unknown key "know_hosts"; did you mean'),
        ({"accept_new_host_keys": "yes"}, "$.ssh.accept_new_host_keys: Expected bool"),
    ],
)
def test_bad_ssh_options_are_named(ssh, message):
    assert message in error({"hosts": [MAC1], "ssh": ssh})


@pytest.mark.parametrize(
    "host, message",
    [
        ({"ssh": "root@"}, "host 0 \"ssh\": ssh target 'root@' names no host"),
        ({"ssh": "mac1:99999"}, "host 0 \"ssh\": ssh target 'mac1:99999': port '99999' is not"),
        ({"ssh": "a b"}, "host 0 \"ssh\": ssh target 'a b': 'a b' is not a host name"),
    ],
)
def test_remote_ssh_targets_are_checked_before_anything_starts(host, message):
    assert message in error({"hosts": [host]})


def test_inline_group_hosts_have_their_ssh_target_checked_too():
    document = {"groups": [{"name": "g", "hosts": [{"ssh": "[::1"}]}]}
    assert 'group 0 ("g") host 0 "ssh": ssh target' in error(document)


@pytest.mark.parametrize("ssh", ["localhost", "", "127.0.0.1", "user@mac1", "mac1:2222"])
def test_valid_targets_pass(ssh):
    assert parse([{"ssh": ssh}]).nodes[0].ssh == ssh


def test_groups_get_port_ranges_one_after_another():
    spec = parse(
        {
            "hosts": [MAC1, MAC2, MAC3],
            "groups": [
                {"name": "a", "hosts": [0, 1]},
                {"name": "solo", "hosts": [2]},
                {"name": "b", "hosts": [2, 0]},
                {"name": "c", "hosts": [0, 1], "starting_port": 50000},
            ],
        }
    )
    ports = {g.name: g.starting_port for g in spec.groups}
    # a: 2 ranks x 1 ip; b: mac3 has two ips, so 3 ports
    assert ports == {"a": RING_STARTING_PORT, "solo": None, "b": RING_STARTING_PORT + 2, "c": 50000}
    b = spec.groups[2]
    assert listen_addresses(b) == ["10.0.0.3:32325", "10.1.0.3:32326", "10.0.0.1:32327"]


def test_top_level_starting_port_moves_every_range():
    spec = parse({"starting_port": 40000, "hosts": [MAC1, MAC2]})
    assert spec.groups[0].starting_port == 40000


def test_a_jaccl_group_needs_one_port_for_its_coordinator():
    hosts = [{**MAC1, "rdma": [None, "rdma_en1"]}, {**MAC2, "rdma": ["rdma_en0", None]}]
    spec = parse(
        {
            "backend": "jaccl",
            "hosts": hosts,
            "groups": [{"name": "a", "hosts": [0, 1]}, {"name": "b", "hosts": [1, 0]}],
        }
    )
    assert [g.starting_port for g in spec.groups] == [32323, 32324]
    assert listen_addresses(spec.groups[1]) == ["10.0.0.2:32324"]


def test_groups_on_loopback_get_free_ports_at_start():
    spec = parse({"hosts": [{"ssh": "localhost", "name": "a"}, {"ssh": "localhost", "name": "b"}]})
    assert spec.groups[0].starting_port is None
    loop = {"ssh": "root@127.0.0.1:22", "ips": ["127.0.0.1"]}
    spec = parse({"hosts": [{**loop, "name": "a"}, {**loop, "name": "b"}]})
    assert spec.groups[0].starting_port is None


def test_two_groups_listening_on_one_address_are_refused():
    message = error(
        {
            "hosts": [MAC1, MAC2],
            "groups": [
                {"name": "a", "hosts": [0, 1]},
                {"name": "b", "hosts": [0, 1], "starting_port": RING_STARTING_PORT},
            ],
        }
    )
    assert message == (
        'hostfile.json: groups "a" and "b" both listen on 10.0.0.1:32323; give one of them '
        'its own "starting_port" past the other\'s ports'
    )


@pytest.mark.parametrize("port", [-1, 65536])
def test_starting_port_is_a_port(port):
    assert "starting_port: Expected int" in error({"hosts": [MAC1], "starting_port": port})


def test_four_mac_example_is_one_jaccl_group_of_four():
    from pathlib import Path

    from supervisor.config.load import load_hostfile

    spec = load_hostfile(Path(__file__).resolve().parent.parent / "hostfiles" / "4mac-jaccl.json")
    (group,) = spec.groups
    assert (group.backend, group.parallel, group.world_size) == ("jaccl", "tensor", 4)
    assert listen_addresses(group) == ["192.168.1.11:32323"]
    assert spec.ssh.known_hosts == "~/.ssh/known_hosts"
