"""The pure side of issue 9: host validation, credentials, redaction, key comparison."""

from __future__ import annotations

import json
import os
import stat

import pytest

from api.edge.guards import host_name, same_key
from api.edge.redaction import redact, ssh_users
from supervisor.cli.credentials import (
    CredentialError,
    admin_key_file,
    credentials_for,
    exposure_warnings,
    find_admin_key,
    is_loopback,
    join_address,
    join_token_file,
    remove_secret,
    write_secret,
)
from supervisor.cluster.membership import host_from_join
from supervisor.config.checks import Problem, check_host
from supervisor.config.load import HostfileError, parse_hostfile
from supervisor.config.spec import HostSpec
from supervisor.serving.contract import BadRequest, HostJoin
from supervisor.ssh.target import SSHTargetError, parse_ssh_target


def problem(host: HostSpec, from_request: bool = False) -> str:
    with pytest.raises(Problem) as failed:
        check_host(host, "host 0", from_request=from_request)
    assert "\n" not in str(failed.value)
    return str(failed.value)


@pytest.mark.parametrize("name", ["mac1", "Mac-2.local", "a_b", "0"])
def test_plain_names_pass(name):
    check_host(HostSpec(ssh="localhost", name=name), "host 0")


@pytest.mark.parametrize("name", ["a b", "-x", ".hidden", "a/b", "a;b", "$(id)", "é"])
def test_other_names_are_refused(name):
    assert problem(HostSpec(ssh="localhost", name=name)).startswith(f'host 0 "name" "{name}"')


@pytest.mark.parametrize("path", ["/opt/venv/bin/python", "~", "~/venv/bin/python"])
def test_absolute_paths_pass(path):
    check_host(HostSpec(ssh="localhost", python=path, workdir=path), "host 0", from_request=True)


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("python3", "must be an absolute path"),
        ("venv/bin/python", "must be an absolute path"),
        ("~alice/venv", "must be an absolute path"),
        ("/usr/bin/python3\n", "control characters"),
        ("/usr/bin/python3\x00", "control characters"),
    ],
)
def test_relative_or_control_paths_are_refused(path, says):
    assert says in problem(HostSpec(ssh="localhost", python=path))
    assert says in problem(HostSpec(ssh="localhost", workdir=path))


@pytest.mark.parametrize(
    "key",
    [
        "BASH_ENV",
        "ENV",
        "PATH",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "DYLD_INSERT_LIBRARIES",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "PYTHONHOME",
        "HOME",
        "SHELLOPTS",
        "PS4",
        "BASH_FUNC_x",
        "GCONV_PATH",
        "OPENSSL_CONF",
        "MLXS_TOKEN",
    ],
)
def test_start_up_variables_are_refused_over_http_and_allowed_in_the_hostfile(key):
    host = HostSpec(ssh="localhost", env={key: "x"})
    assert problem(host, from_request=True) == (
        f'host 0 "env" key "{key}" changes how a shell, the loader or Python starts; '
        "only the hostfile may set it"
    )
    check_host(host, "host 0")  # written by the operator


@pytest.mark.parametrize(
    "key", ["MLX_METAL_FAST_SYNCH", "OMP_NUM_THREADS", "HF_HUB_OFFLINE", "path"]
)
def test_ordinary_variables_pass_over_http(key):
    check_host(HostSpec(ssh="localhost", env={key: "1"}), "", from_request=True)


def test_the_hostfile_uses_the_same_check():
    def load(host: dict) -> str:
        with pytest.raises(HostfileError) as failed:
            parse_hostfile(json.dumps({"hosts": [host]}).encode(), "h.json")
        return str(failed.value)

    assert load({"ssh": "localhost", "python": "python3"}).startswith(
        'h.json: host 0 "python" "python3" must be an absolute path'
    )
    assert load({"ssh": "localhost", "name": "a b"}).startswith('h.json: host 0 "name" "a b"')
    inline = {"groups": [{"hosts": [{"ssh": "localhost", "workdir": "rel"}]}]}
    with pytest.raises(HostfileError, match='group 0 \\("group-0"\\) host 0 "workdir" "rel"'):
        parse_hostfile(json.dumps(inline).encode(), "h.json")
    env = {"ssh": "localhost", "env": {"BASH_ENV": "/etc/profile", "PATH": "/opt/bin"}}
    spec = parse_hostfile(json.dumps({"hosts": [env]}).encode(), "h.json")
    assert spec.nodes[0].env["PATH"] == "/opt/bin"


def test_a_join_is_checked_with_the_request_rules():
    with pytest.raises(BadRequest) as failed:
        host_from_join(HostJoin(ssh="localhost", env={"BASH_ENV": "$(id)"}, python="/bin/bash"))
    assert failed.value.param == "env" and "BASH_ENV" in failed.value.message
    with pytest.raises(BadRequest) as failed:
        host_from_join(HostJoin(ssh="localhost", name="x", group="a/b"))
    assert failed.value.param == "group"
    with pytest.raises(BadRequest) as failed:
        host_from_join(HostJoin(ssh="-oProxyCommand=sh"))
    assert failed.value.param == "ssh" and "must not start with '-'" in failed.value.message
    assert host_from_join(HostJoin(ssh="alice@mac1.local:2222")).name == "mac1.local"
    assert host_from_join(HostJoin(ssh="localhost")).name == "localhost"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("-oProxyCommand=id", "must not start with '-'"),
        ("-p22@mac1", "must not start with '-'"),
        ("mac1;id", "is not a host name"),
        ("$(id)", "is not a host name"),
        ("mac`id`", "is not a host name"),
        ("alice bob@mac1", "spaces or control characters"),
    ],
)
def test_ssh_targets_cannot_carry_options_or_shell(text, says):
    with pytest.raises(SSHTargetError, match=says):
        parse_ssh_target(text)


def test_redaction_hides_users_and_paths_and_keeps_the_rest():
    status = {
        "nodes": [{"name": "mac1", "ssh": "alice@mac1.local:22"}],
        "groups": [
            {"model": "/Users/alice/models/qwen", "reason": "exited: ~/venv/bin/python missing"},
            {"model": "mlx-community/Qwen2.5-0.5B", "reason": "see http://host/x, 1/2 ranks"},
        ],
        "actors": [{"reason": "authentication failed for alice (denied); ~alice/.ssh/x"}],
        "count": 3,
    }
    seen = redact(status, ssh_users(status))
    assert seen["nodes"][0]["ssh"] == "<user>@mac1.local:22"
    assert seen["groups"][0] == {"model": "<path>", "reason": "exited: <path> missing"}
    assert seen["groups"][1] == status["groups"][1]
    assert seen["actors"][0]["reason"] == "authentication failed for <user> (denied); <path>"
    assert seen["count"] == 3


def test_keys_compare_by_digest():
    assert same_key("k" * 40, "k" * 40)
    assert not same_key("k", "k" * 40) and not same_key("", "k")


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost:8080", "localhost"),
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]:80", "[::1]"),
        ("LocalHost.", "localhost"),
        ("evil.example:8080", "evil.example"),
    ],
)
def test_host_header_names(header, name):
    assert host_name(header) == name


def spec(**keys):
    return parse_hostfile(json.dumps({"hosts": [{"ssh": "localhost"}], **keys}).encode(), "h")


def test_credentials_come_from_the_hostfile_then_the_environment():
    env = {"MLXS_API_KEY": "sk-env", "MLXS_ADMIN_KEY": "admin-env"}
    both = credentials_for(spec(api_key="sk-file", admin_key="admin-file"), env)
    assert (both.api_key, both.admin_key, both.admin_key_generated) == (
        "sk-file",
        "admin-file",
        False,
    )
    from_env = credentials_for(spec(), env)
    assert (from_env.api_key, from_env.admin_key) == ("sk-env", "admin-env")
    first, second = credentials_for(spec(), {}), credentials_for(spec(), {})
    assert first.api_key is None and first.admin_key_generated
    assert len(first.admin_key) >= 40 and first.admin_key != second.admin_key
    assert first.join_token != first.admin_key


@pytest.mark.parametrize("name", ["MLXS_API_KEY", "MLXS_ADMIN_KEY"])
def test_an_empty_environment_key_is_refused_even_beside_a_hostfile_key(name):
    with pytest.raises(CredentialError, match=f"^{name} is set but empty"):
        credentials_for(spec(api_key="k1", admin_key="k2"), {name: ""})
    with pytest.raises(CredentialError, match="spaces"):
        credentials_for(spec(), {name: "a b"})


def test_secrets_are_written_0600_whatever_the_umask_and_removed_only_if_ours(tmp_path):
    pidfile = tmp_path / "run" / "supervisor-8080.pid"
    path = admin_key_file(pidfile)
    assert path.name == "supervisor-8080.admin-key"
    assert join_token_file(pidfile).name == "supervisor-8080.join-token"
    path.parent.mkdir()
    path.write_text("someone else's\n")
    os.chmod(path, 0o644)
    old = os.umask(0)
    try:
        write_secret(path, "k1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "k1\n"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
    remove_secret(path, "another")
    assert path.exists()
    remove_secret(path, "k1")
    assert not path.exists()


def test_the_local_key_file_is_never_sent_to_another_machine(tmp_path):
    pidfile = tmp_path / "supervisor-8080.pid"
    write_secret(admin_key_file(pidfile), "local-key")
    assert find_admin_key("http://127.0.0.1:8080", None, {}, pidfile) == "local-key"
    assert find_admin_key("http://mac1.local:8080", None, {}, pidfile) is None
    assert find_admin_key("http://mac1.local:8080", None, {"MLXS_ADMIN_KEY": "e"}, pidfile) == "e"
    assert (
        find_admin_key("http://127.0.0.1:8080", "flag", {"MLXS_ADMIN_KEY": "e"}, pidfile) == "flag"
    )
    with pytest.raises(CredentialError, match="--admin-key is empty"):
        find_admin_key("http://127.0.0.1:8080", "", {}, pidfile)


def test_loopback_and_the_exposure_warning():
    for host in ("127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.5", "mac1.local"):
        assert not is_loopback(host), host
    assert exposure_warnings("127.0.0.1", None) == []
    assert exposure_warnings("0.0.0.0", "sk") == []
    assert "no api_key" in exposure_warnings("0.0.0.0", None)[0]
    assert join_address("127.0.0.1", 8080) == ("127.0.0.1:8080", True)
    assert join_address("10.0.0.5", 8080) == ("10.0.0.5:8080", False)
    assert join_address("fe80::1", 8080) == ("[fe80::1]:8080", False)
