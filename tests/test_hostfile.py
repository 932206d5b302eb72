"""Hostfile parsing, validation messages, overrides, and parity with mlx.launch's rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from supervisor.config.load import (
    HostfileError,
    apply_overrides,
    is_local,
    load_hostfile,
    parse_hostfile,
)
from supervisor.config.spec import (
    ApiSpec,
    ClusterSpec,
    ControlSpec,
    HostSpec,
    RestartSpec,
    RouterSpec,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "hostfiles"
MAC1 = {"ssh": "mac1", "ips": ["10.0.0.1"]}
MAC2 = {"ssh": "mac2", "ips": ["10.0.0.2"]}


def parse(document: object) -> ClusterSpec:
    return parse_hostfile(json.dumps(document).encode(), "hostfile.json")


def error(document: object) -> str:
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    with pytest.raises(HostfileError) as info:
        parse_hostfile(data, "hostfile.json")
    message = str(info.value)
    assert "\n" not in message
    return message


def mesh(n: int, ring: bool = False) -> list[dict]:
    """n hosts with an rdma matrix: all pairs, or only ring neighbours."""
    hosts = []
    for i in range(n):
        peers = {(i - 1) % n, (i + 1) % n} if ring else set(range(n))
        rdma = [f"rdma_en{j}" if j != i and j in peers else None for j in range(n)]
        hosts.append({"ssh": f"mac{i}", "ips": [f"10.0.0.{i + 1}"], "rdma": rdma})
    return hosts


# -- examples and mlx.launch compatibility ----------------------------------------------------


@pytest.mark.parametrize("name", ["demo.json", "mlx-launch-2mac.json", "replicas.json"])
def test_every_example_hostfile_parses(name):
    spec = load_hostfile(EXAMPLES / name)
    assert spec.groups and all(g.hosts for g in spec.groups)


def test_demo_example_is_one_local_host_serving_demo_tiny():
    spec = load_hostfile(EXAMPLES / "demo.json")
    assert spec.api == ApiSpec(host="127.0.0.1", port=8080)
    [group] = spec.groups
    assert (group.model, group.world_size, is_local(group.hosts[0])) == ("demo:tiny", 1, True)


def test_replicas_example_is_two_single_host_groups_of_one_model():
    spec = load_hostfile(EXAMPLES / "replicas.json")
    assert [(g.name, g.world_size) for g in spec.groups] == [("replica-a", 1), ("replica-b", 1)]
    assert {g.model for g in spec.groups} == {spec.model}
    assert [n.name for n in spec.nodes] == ["mac1", "mac2"]


def test_bare_host_list_is_one_tensor_parallel_group_with_defaults():
    spec = parse([MAC1, MAC2])
    [group] = spec.groups
    assert (group.name, group.model, group.parallel, group.backend) == (
        "main",
        "demo:tiny",
        "tensor",
        "ring",
    )
    assert spec.api == ApiSpec() and spec.control == ControlSpec(host=None, port=0)
    assert (spec.queue_limit, spec.max_batch, spec.log_format) == (256, 32, "json")
    assert spec.stream_interval_ms == 20.0
    assert spec.restart == RestartSpec(
        intensity=5,
        period=60,
        backoff_initial=0.5,
        backoff_max=30,
        heartbeat_timeout=2,
        watchdog_interval=30,
    )
    assert spec.router == RouterSpec(policy="least_loaded", session_ttl=600)


def test_models_dir_becomes_each_nodes_hub_cache_and_the_models_section_is_read():
    from supervisor.cluster.cluster import Cluster

    spec = parse(
        {
            "hosts": [MAC1, {**MAC1, "ssh": "mac2", "name": "mac2", "models_dir": "/ext/hub"}],
            "models_dir": "~/models",
            "models": {"files_in_flight": 2, "pull_with_inference_key": True},
            "groups": [{"hosts": [0]}, {"hosts": [1]}],
        }
    )
    assert (spec.models.files_in_flight, spec.models.pull_with_inference_key) == (2, True)
    assert spec.models.jobs_kept == 50 and spec.models_dir == "~/models"
    cluster = Cluster.__new__(Cluster)
    cluster.spec = spec
    mac1, mac2 = spec.nodes
    assert cluster._env(mac1)["HF_HUB_CACHE"] == "~/models"  # expanded on that node
    assert cluster._env(mac2)["HF_HUB_CACHE"] == "/ext/hub"
    typo = error({"hosts": [MAC1], "models": {"files_in_fligth": 2}})
    assert typo.endswith('$.models: unknown key "files_in_fligth"; did you mean "files_in_flight"?')


def test_cluster_keys_are_read():
    spec = parse(
        {
            "$schema": "x",
            "comment": ["why", "not"],
            "hosts": [MAC1],
            "model": "org/m",
            "api": {"host": "0.0.0.0", "port": 9000},
            "control": {"host": "10.0.0.9", "port": 7000},
            "queue_limit": 8,
            "max_batch": 4,
            "prompt_cache_bytes": 1 << 30,
            "prompt_cache_entries": 8,
            "stream_interval_ms": 0,
            "api_key": "k",
            "log_format": "console",
            "restart": {"intensity": 2, "period": 5, "heartbeat_timeout": 1.5},
            "router": {"policy": "sticky", "session_ttl": 30},
            "parallel": "pipeline",
        }
    )
    assert (spec.api.port, spec.control, spec.queue_limit, spec.max_batch) == (
        9000,
        ControlSpec(host="10.0.0.9", port=7000),
        8,
        4,
    )
    assert (spec.api_key, spec.log_format, spec.groups[0].parallel) == ("k", "console", "pipeline")
    assert (spec.prompt_cache_bytes, spec.prompt_cache_entries) == (1 << 30, 8)
    assert (spec.restart.intensity, spec.restart.period, spec.restart.heartbeat_timeout) == (
        2,
        5.0,
        1.5,
    )
    assert spec.router == RouterSpec(policy="sticky", session_ttl=30)
    assert spec.stream_interval_ms == 0.0


def test_specs_are_frozen():
    spec = parse([MAC1])
    with pytest.raises(AttributeError):
        spec.model = "other"  # type: ignore[misc]


def test_host_hints_and_comment_are_kept():
    host = {
        **MAC1,
        "name": "big",
        "python": "/opt/py/bin/python",
        "workdir": "/srv",
        "env": {"A_1": "x"},
        "chip": "M2 Ultra",
        "gpu_cores": 76,
        "memory_gb": 192,
        "comment": "rack 2",
    }
    [node] = parse([host]).nodes
    assert (node.name, node.python, node.workdir, node.env) == (
        "big",
        "/opt/py/bin/python",
        "/srv",
        {"A_1": "x"},
    )
    assert (node.chip, node.gpu_cores, node.memory_gb) == ("M2 Ultra", 76, 192.0)


@pytest.mark.parametrize(("ssh", "name"), [("mac1", "mac1"), ("", "localhost")])
def test_host_name_defaults_to_its_ssh(ssh, name):
    assert parse([{"ssh": ssh}]).nodes[0].name == name


@pytest.mark.parametrize(
    ("ssh", "local"),
    [
        ("", True),
        ("localhost", True),
        ("LocalHost", True),
        ("127.0.0.1", True),
        ("::1", True),
        (" localhost ", True),
        ("mac1.local", False),
        ("10.0.0.1", False),
        ("root@localhost", False),
        ("127.0.0.2", False),
    ],
)
def test_is_local(ssh, local):
    assert is_local(HostSpec(ssh=ssh)) is local


# -- decode errors: one line, file, location, expectation -------------------------------------


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {"hosts": [MAC1], "restart": {"intensity": "5"}},
            "hostfile.json: $.restart.intensity: Expected int, got str",
        ),
        (
            {"hosts": [MAC1], "restart": {"intensity": -1}},
            "hostfile.json: $.restart.intensity: Expected int >= 0",
        ),
        (
            {"hosts": [MAC1], "api": {"port": 70000}},
            "hostfile.json: $.api.port: Expected int <= 65535",
        ),
        (
            {"hosts": [MAC1], "control": {"port": -1}},
            "hostfile.json: $.control.port: Expected int >= 0",
        ),
        (
            {"hosts": [{"ssh": "a", "ips": "10.0.0.1"}]},
            "hostfile.json: $.hosts[0].ips: Expected array, got str",
        ),
        ([{"ssh": "a"}, {"ips": []}], 'hostfile.json: $[1]: missing required key "ssh"'),
        ({"hosts": [{}]}, 'hostfile.json: $.hosts[0]: missing required key "ssh"'),
        ({"hosts": [MAC1], "queue_limit": 0}, "hostfile.json: $.queue_limit: Expected int >= 1"),
        (
            {"hosts": [MAC1], "prompt_cache_bytes": -1},
            "hostfile.json: $.prompt_cache_bytes: Expected int >= 0",
        ),
        (
            {"hosts": [MAC1], "prompt_cache_entries": 70000},
            "hostfile.json: $.prompt_cache_entries: Expected int <= 65536",
        ),
        (
            {"hosts": [MAC1], "stream_interval_ms": 5000},
            "hostfile.json: $.stream_interval_ms: Expected float <= 1000.0",
        ),
        (
            {"hosts": [MAC1], "groups": [{"hosts": [1.5]}]},
            "hostfile.json: $.groups[0].hosts[0]: Expected int | str | object, got float",
        ),
        (3, 'hostfile.json: $: expected a JSON list of hosts or an object with "hosts", got int'),
    ],
)
def test_type_errors_name_the_json_path(document, message):
    assert error(document) == message


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"hsots": []}, 'hostfile.json: $: unknown key "hsots"; did you mean "hosts"?'),
        ([{"ssh": "a", "ipz": []}], 'hostfile.json: $[0]: unknown key "ipz"; did you mean "ips"?'),
        (
            {"hosts": [MAC1], "restart": {"intensty": 3}},
            'hostfile.json: $.restart: unknown key "intensty"; did you mean "intensity"?',
        ),
        (
            {"hosts": [MAC1], "groups": [{"hosts": [{"ssh": "b", "rmda": []}]}]},
            'hostfile.json: $.groups[0].hosts[0]: unknown key "rmda"; did you mean "rdma"?',
        ),
        (
            {"hosts": [MAC1], "api": {"zzz": 1}},
            'hostfile.json: $.api: unknown key "zzz"; expected one of "host", "port", '
            '"max_body_bytes", "header_timeout", "body_timeout", "max_connections", "comment"',
        ),
    ],
)
def test_unknown_keys_are_refused_with_a_suggestion(document, message):
    assert error(document) == message


@pytest.mark.parametrize(
    ("document", "field", "choices"),
    [
        (
            {"hosts": [MAC1], "router": {"policy": "fastest"}},
            "$.router.policy",
            '"hardware_aware", "least_loaded", "round_robin", "sticky"',
        ),
        ({"hosts": [MAC1], "parallel": "expert"}, "$.parallel", '"pipeline", "tensor"'),
        (
            {"hosts": [MAC1], "groups": [{"hosts": [0], "parallel": "x"}]},
            "$.groups[0].parallel",
            '"pipeline", "tensor"',
        ),
    ],
)
def test_invalid_choices_list_the_valid_ones(document, field, choices):
    message = error(document)
    assert message.startswith(f'hostfile.json: {field}: invalid value "')
    assert message.endswith(f"; expected one of {choices}")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            b'{\n  "hosts": [],\n  "model": "x",\n}',
            "hostfile.json: invalid JSON at line 4, column 1: trailing comma in object",
        ),
        (
            b'[{"ssh": "a"}\n {"ssh": "b"}]',
            "hostfile.json: invalid JSON at line 2, column 2: expected ',' or ']'",
        ),
        (b'{"hosts": [', "hostfile.json: invalid JSON: the file ends early"),
        (b"  \n", "hostfile.json: the file is empty; expected a JSON list of hosts or an object"),
    ],
)
def test_malformed_json_says_where(data, message):
    assert error(data).startswith(message)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(HostfileError, match=r"nope\.json: no such file; pass the path"):
        load_hostfile(tmp_path / "nope.json")


def test_directory_is_not_a_hostfile(tmp_path):
    with pytest.raises(HostfileError, match="is a directory"):
        load_hostfile(tmp_path)


# -- semantic errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], 'no hosts; list at least one host under "hosts"'),
        ({"hosts": []}, 'no hosts; list at least one host under "hosts"'),
        ({"hosts": [MAC1], "groups": []}, '"groups" is empty'),
        (
            {"hosts": [MAC1], "groups": [{"name": "a", "hosts": []}]},
            'group 0 ("a") has no hosts; list at least one under "hosts"',
        ),
        (
            {"hosts": [MAC1], "groups": [{"name": "a", "hosts": [0]}, {"name": "a", "hosts": [0]}]},
            'groups 0 and 1 are both named "a"; group names must be unique',
        ),
        ({"hosts": [MAC1], "groups": [{"name": "a b", "hosts": [0]}]}, 'group 0 name "a b"'),
        ({"hosts": [MAC1], "model": " "}, '"model" is empty; name a model'),
        (
            {"hosts": [MAC1], "groups": [{"hosts": [0], "model": ""}]},
            'group 0 ("group-0") "model" is empty',
        ),
        ({"hosts": [MAC1], "backend": "mpi"}, '"backend" "mpi" is not supported'),
        ({"hosts": [MAC1], "backend": "nccl"}, '"backend" "nccl" is not supported'),
        ({"hosts": [MAC1], "backend": "rng"}, '"backend" "rng" is unknown'),
        (
            {"hosts": [MAC1], "groups": [{"hosts": [0], "backend": "x"}]},
            'group 0 ("group-0") "backend" "x" is unknown',
        ),
        ({"hosts": [MAC1], "envs": ["BAD-KEY=1"]}, '"envs"[0] "BAD-KEY=1" is not KEY=VALUE'),
        ({"hosts": [{**MAC1, "env": {"A B": "1"}}]}, 'host 0 "env" key "A B" is not a valid'),
        (
            {"hosts": [{**MAC1, "name": "x"}, {**MAC2, "name": "x"}]},
            'hosts 0 and 1 are both named "x"; host names must be unique',
        ),
        (
            {"hosts": [MAC1], "restart": {"backoff_initial": 5, "backoff_max": 1}},
            "restart.backoff_max (1) is below restart.backoff_initial (5)",
        ),
        (
            {"hosts": [MAC1, {"ssh": "mac2"}]},
            'host 1 ("mac2") has no "ips"; the ring backend needs one per host '
            "when hosts are remote",
        ),
        (
            {"hosts": [{"ssh": "localhost"}, MAC2]},
            'host 0 ("localhost") has no "ips"; the ring backend needs one per host',
        ),
        (
            {"hosts": [MAC1, MAC2], "control": {"host": "127.0.0.1"}},
            'control.host "127.0.0.1" is a loopback address but host "mac1" is remote',
        ),
        (
            {"hosts": [MAC1], "groups": [{"name": "g", "hosts": [0, {"ssh": "mac2"}]}]},
            'group 0 ("g") host 1 ("mac2") has no "ips"; the ring backend needs one per host',
        ),
    ],
)
def test_semantic_problems_are_one_line_with_the_fix(document, message):
    assert error(document).startswith(f"hostfile.json: {message}")


def test_ring_needs_no_ips_when_every_host_is_local_or_there_is_one_host():
    assert parse([{"ssh": "localhost"}, {"ssh": "127.0.0.1"}]).groups[0].world_size == 2
    assert parse([{"ssh": "far-away"}]).groups[0].world_size == 1


def test_loopback_control_host_is_fine_for_a_local_cluster():
    spec = parse({"hosts": [{"ssh": "localhost"}], "control": {"host": "127.0.0.1"}})
    assert spec.control.host == "127.0.0.1"


def test_envs_are_read_as_mlx_launch_exports_them():
    spec = parse({"hosts": [MAC1], "envs": ["A=1", "B=x=y", "EMPTY"]})
    assert spec.envs == {"A": "1", "B": "x=y", "EMPTY": ""}


# -- groups ------------------------------------------------------------------------------------


def test_groups_refer_to_hosts_by_index_name_or_inline():
    spec = parse(
        {
            "hosts": [{**MAC1, "name": "one"}, MAC2],
            "groups": [
                {"name": "a", "hosts": [0, "mac2"]},
                {"name": "b", "hosts": [{"ssh": "mac3", "ips": ["10.0.0.3"]}]},
            ],
        }
    )
    assert [[h.name for h in g.hosts] for g in spec.groups] == [["one", "mac2"], ["mac3"]]
    assert [n.name for n in spec.nodes] == ["one", "mac2", "mac3"]


def test_top_level_hosts_no_group_uses_are_not_nodes():
    spec = parse({"hosts": [MAC1, MAC2], "groups": [{"hosts": [1]}]})
    assert [n.name for n in spec.nodes] == ["mac2"]


def test_one_machine_in_two_groups_is_one_node():
    spec = parse({"hosts": [MAC1], "groups": [{"hosts": [0]}, {"hosts": ["mac1"]}]})
    assert [g.name for g in spec.groups] == ["group-0", "group-1"] and len(spec.nodes) == 1


def test_two_ranks_on_one_local_machine_share_a_node():
    spec = parse([{"ssh": "localhost"}, {"ssh": "localhost"}])
    assert spec.groups[0].world_size == 2 and len(spec.nodes) == 1


@pytest.mark.parametrize(
    ("hosts", "ref", "message"),
    [
        ([MAC1], 3, 'group 0 ("g") host 0 refers to host 3, but "hosts" has 1 entries'),
        ([], 0, 'group 0 ("g") host 0 refers to host 0, but "hosts" is empty'),
        (
            [MAC1],
            "mac9",
            'group 0 ("g") host 0 refers to "mac9", which is not a host name (known: "mac1")',
        ),
        (
            [{"ssh": "localhost"}] * 2,
            "localhost",
            'group 0 ("g") host 0 "localhost" matches hosts [0, 1]; give them distinct "name"s',
        ),
    ],
)
def test_bad_host_references_are_named(hosts, ref, message):
    document = {"hosts": hosts, "groups": [{"name": "g", "hosts": [ref]}]}
    assert error(document).startswith(f"hostfile.json: {message}")


def test_one_name_for_two_machines_is_refused():
    document = {
        "hosts": [{**MAC1, "name": "x"}],
        "groups": [{"hosts": [0]}, {"hosts": [{"ssh": "other", "name": "x"}]}],
    }
    assert 'host name "x" is used for two machines ("mac1" and "other")' in error(document)


def test_groups_inherit_or_override_model_backend_and_parallel():
    spec = parse(
        {
            "model": "org/base",
            "backend": "ring",
            "parallel": "pipeline",
            "hosts": [MAC1, MAC2],
            "groups": [
                {"name": "a", "hosts": [0]},
                {"name": "b", "hosts": [1], "model": "org/own", "parallel": "tensor"},
            ],
        }
    )
    a, b = spec.groups
    assert (a.model, a.parallel, a.inherits_model) == ("org/base", "pipeline", True)
    assert (b.model, b.parallel, b.inherits_model) == ("org/own", "tensor", False)


# -- overrides ---------------------------------------------------------------------------------


def test_overrides_replace_api_address_and_inherited_models_only():
    spec = parse({"hosts": [MAC1], "groups": [{"hosts": [0]}, {"hosts": [0], "model": "own"}]})
    changed = apply_overrides(spec, host="0.0.0.0", port=0, model="org/cli")
    assert changed.api == ApiSpec(host="0.0.0.0", port=0) and changed.model == "org/cli"
    assert [g.model for g in changed.groups] == ["org/cli", "own"]
    assert apply_overrides(spec) == spec


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"port": 70000}, "--port 70000 is out of range"),
        ({"port": -1}, "--port -1 is out"),
        ({"model": ""}, "--model is empty"),
    ],
)
def test_bad_overrides_are_refused(overrides, message):
    with pytest.raises(HostfileError, match=message):
        apply_overrides(parse([MAC1]), **overrides)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {"hosts": [MAC1], "api_key": ""},
            'hostfile.json: "api_key" is empty; leave the key out (no key) or set a long '
            "random string",
        ),
        (
            {"hosts": [MAC1], "admin_key": "  "},
            'hostfile.json: "admin_key" is empty; leave the key out (no key) or set a long '
            "random string",
        ),
        (
            {"hosts": [MAC1], "admin_key": "two words"},
            'hostfile.json: "admin_key" must not contain spaces or control characters',
        ),
        (
            {"hosts": [MAC1], "allowed_hosts": ["mac1.local:8080"]},
            'hostfile.json: "allowed_hosts"[0] "mac1.local:8080" is not a host name (e.g. '
            '"mac1.local", "10.0.0.5", "[fe80::1]"); leave the port out',
        ),
        (
            {"hosts": [MAC1], "cors_origins": ["http://app.local/chat"]},
            'hostfile.json: "cors_origins"[0] "http://app.local/chat" is not an origin like '
            '"http://localhost:3000" (scheme, host, optional port; no path) or "*"',
        ),
        (
            {"hosts": [MAC1], "stream_buffer_bytes": 10},
            "hostfile.json: $.stream_buffer_bytes: Expected int >= 65536",
        ),
        (
            {"hosts": [MAC1], "api": {"max_body_bytes": 0}},
            "hostfile.json: $.api.max_body_bytes: Expected int >= 1024",
        ),
    ],
)
def test_security_keys_are_checked(document, message):
    assert error(document) == message


def test_security_keys_are_read():
    spec = parse(
        {
            "hosts": [MAC1],
            "admin_key": "s3cret-admin",
            "allowed_hosts": ["Mac1.local", "[fe80::1]"],
            "cors_origins": ["http://localhost:3000"],
            "stream_buffer_bytes": 1 << 20,
            "ready_wait": 12,
            "api": {"max_body_bytes": 4096, "header_timeout": 2, "max_connections": 50},
            "control": {"max_pending": 8, "max_hello_bytes": 1024},
        }
    )
    assert spec.admin_key == "s3cret-admin"
    assert spec.allowed_hosts == ("mac1.local", "[fe80::1]")
    assert spec.cors_origins == ("http://localhost:3000",)
    assert (spec.stream_buffer_bytes, spec.ready_wait) == (1 << 20, 12)
    assert (spec.api.max_body_bytes, spec.api.header_timeout, spec.api.body_timeout) == (
        4096,
        2,
        30,
    )
    assert (spec.api.max_connections, spec.control.max_pending) == (50, 8)
    assert spec.control.max_hello_bytes == 1024


# -- restart types: cluster default, per group ------------------------------------------------


@pytest.mark.parametrize(
    ("restart", "groups", "expected"),
    [
        ({}, [{"name": "a", "hosts": [0]}], {"a": "permanent"}),
        ({"type": "transient"}, [{"name": "a", "hosts": [0]}], {"a": "transient"}),
        (
            {"type": "transient"},
            [{"name": "a", "hosts": [0]}, {"name": "b", "hosts": [0], "restart": "temporary"}],
            {"a": "transient", "b": "temporary"},
        ),
        ({"type": "temporary"}, None, {"main": "temporary"}),  # the implicit group too
    ],
)
def test_a_group_restart_type_is_its_own_or_the_cluster_default(restart, groups, expected):
    document = {"hosts": [MAC1], "restart": restart}
    if groups is not None:
        document["groups"] = groups
    assert {g.name: g.restart for g in parse(document).groups} == expected


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {"hosts": [MAC1], "restart": {"type": "sometimes"}},
            'hostfile.json: $.restart.type: invalid value "sometimes"; expected one of '
            '"permanent", "temporary", "transient"',
        ),
        (
            {"hosts": [MAC1], "groups": [{"hosts": [0], "restart": "never"}]},
            'hostfile.json: $.groups[0].restart: invalid value "never"; expected one of '
            '"permanent", "temporary", "transient"',
        ),
    ],
)
def test_a_bad_restart_type_is_named_in_one_line(document, message):
    assert error(document) == message
