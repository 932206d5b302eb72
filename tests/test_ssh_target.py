"""The pure side of SSH spawning: target parsing, ssh_config, the remote command, boot."""

from __future__ import annotations

import io
import os
import socket

import paramiko
import pytest

from actors.runtime.boot import present_preloads, read_environment
from supervisor.ssh.target import (
    Endpoint,
    SSHError,
    SSHTarget,
    SSHTargetError,
    describe_failure,
    exit_code,
    is_unreachable,
    parse_ssh_target,
    remote_command,
    resolve_endpoint,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mac1", SSHTarget("mac1")),
        ("  mac1.local ", SSHTarget("mac1.local")),
        ("alice@mac1", SSHTarget("mac1", user="alice")),
        ("mac1:2222", SSHTarget("mac1", port=2222)),
        ("alice@10.0.0.2:2222", SSHTarget("10.0.0.2", user="alice", port=2222)),
        ("[::1]", SSHTarget("::1")),
        ("[fe80::1%en0]:22", SSHTarget("fe80::1%en0", port=22)),
        ("bob@[2001:db8::7]:2200", SSHTarget("2001:db8::7", user="bob", port=2200)),
        ("2001:db8::7", SSHTarget("2001:db8::7")),
        ("ssh://carol@mac3:2022/", SSHTarget("mac3", user="carol", port=2022)),
        ("dom\\user@corp@mac4", SSHTarget("mac4", user="dom\\user@corp")),
    ],
)
def test_parse_ssh_target(text, expected):
    assert parse_ssh_target(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("@mac1", 'nothing before "@"'),
        ("alice@", "names no host"),
        ("mac1:", "port '' is not a number"),
        ("mac1:ssh", "port 'ssh' is not a number"),
        ("mac1:0", "port '0' is not a number 1..65535"),
        ("mac1:65536", "port '65536'"),
        ("[::1", '"[" without "]"'),
        ("[::1]2222", 'expected ":port"'),
        ("[]:22", "names no host"),
        ("mac 1", "is not a host name"),
    ],
)
def test_parse_ssh_target_rejects(text, says):
    with pytest.raises(SSHTargetError) as failed:
        parse_ssh_target(text)
    assert says in str(failed.value) and "\n" not in str(failed.value)


def test_resolve_endpoint_applies_ssh_config_and_the_target_wins():
    config = paramiko.SSHConfig.from_text(
        "Host mac2\n  HostName 10.0.0.2\n  User admin\n  Port 2222\n"
        "  IdentityFile ~/.ssh/mac2_ed25519\n"
        "Host *\n  User everyone\n"
    )
    assert resolve_endpoint(SSHTarget("mac2"), config) == Endpoint(
        "10.0.0.2", 2222, "admin", (os.path.expanduser("~/.ssh/mac2_ed25519"),)
    )
    assert resolve_endpoint(SSHTarget("mac2", user="bob", port=22), config) == Endpoint(
        "10.0.0.2", 22, "bob", (os.path.expanduser("~/.ssh/mac2_ed25519"),)
    )
    assert resolve_endpoint(SSHTarget("other"), config) == Endpoint("other", 22, "everyone")
    empty = paramiko.SSHConfig()
    assert resolve_endpoint(SSHTarget("h"), empty, default_user="me") == Endpoint("h", 22, "me")
    v6 = resolve_endpoint(SSHTarget("::1", port=2200), empty, default_user="me")
    assert v6.address == "[::1]:2200" and v6.known_hosts_name == "[::1]:2200"


def test_remote_command_carries_no_secret_and_keeps_home_paths():
    command = remote_command("memory", "~/venv/bin/python", "~/mlx supervisor")
    assert command == (
        "/bin/sh -c 'cd \"$HOME\"/'\"'\"'mlx supervisor'\"'\"' && "
        '"$HOME"/venv/bin/python -u -m actors.runtime.boot memory; exit $?\''
    )
    assert (
        remote_command("memory", None, None)
        == "/bin/sh -c 'python3 -u -m actors.runtime.boot memory; exit $?'"
    )


@pytest.mark.parametrize(
    ("status", "code"), [(0, 0), (1, 1), (3, 3), (128, 128), (137, -9), (143, -15), (255, 255)]
)
def test_exit_code_maps_signal_deaths(status, code):
    assert exit_code(status) == code


def test_describe_failure_says_what_to_do():
    ep = Endpoint("mac2.local", 2222, "alice")
    refused = paramiko.ssh_exception.NoValidConnectionsError(
        {("10.0.0.2", 2222): ConnectionRefusedError(111, "Connection refused")}
    )
    assert describe_failure(refused, ep) == (
        "connection refused; is sshd running and listening on port 2222?"
    )
    dns = socket.gaierror(-2, "Name or service not known")
    assert (
        describe_failure(dns, ep) == "cannot resolve host name mac2.local (Name or service "
        "not known)"
    )
    assert describe_failure(TimeoutError(), ep, 10.0) == "no answer within 10 s"
    denied = describe_failure(paramiko.AuthenticationException("Authentication failed."), ep)
    assert denied.startswith("authentication failed for alice (Authentication failed.)")
    assert "~alice/.ssh/authorized_keys" in denied
    assert describe_failure(paramiko.SSHException("Error reading SSH protocol banner")) == (
        "Error reading SSH protocol banner"
    )


@pytest.mark.parametrize(
    ("exc", "unreachable"),
    [
        (ConnectionRefusedError(111, "Connection refused"), True),
        (TimeoutError("timed out"), True),
        (socket.gaierror(-2, "Name or service not known"), True),
        (OSError(113, "No route to host"), True),
        (OSError(101, "Network is unreachable"), True),
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (EOFError(), True),
        (
            paramiko.ssh_exception.NoValidConnectionsError(
                {("127.0.0.1", 22): ConnectionRefusedError(111, "refused")}
            ),
            True,
        ),
        (paramiko.SSHException("Error reading SSH protocol banner"), True),
        # The host answered: waiting cannot help, these are failures.
        (paramiko.AuthenticationException("Authentication failed."), False),
        (paramiko.SSHException("No authentication methods available"), False),
        (SSHError("node n (h:22): unknown SSH host key"), False),
        (FileNotFoundError(2, "No such file or directory"), False),
        (PermissionError(13, "Permission denied"), False),
        (ValueError("bad"), False),
    ],
)
def test_is_unreachable_tells_a_missing_host_from_a_refusing_one(exc, unreachable):
    assert is_unreachable(exc) is unreachable


def test_boot_reads_one_json_line_of_strings():
    assert read_environment(io.BytesIO(b'{"A": "1", "B": "x y"}\n{"ignored": "1"}\n')) == {
        "A": "1",
        "B": "x y",
    }
    for bad, says in [
        (b"", "no environment"),
        (b"{oops\n", "not JSON"),
        (b'{"A": 1}\n', "of strings"),
    ]:
        with pytest.raises(SystemExit, match=says):
            read_environment(io.BytesIO(bad))


def test_boot_keeps_only_preloads_present_here(tmp_path):
    lib = tmp_path / "libblas.so.3"
    lib.write_bytes(b"")
    assert present_preloads(f"{lib}:/nope/libx.so") == (str(lib), ["/nope/libx.so"])
    assert present_preloads("") == ("", [])
