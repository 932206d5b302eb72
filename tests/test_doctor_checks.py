"""The doctor's pure parts: each check's verdict and fix over made-up facts, the hostfile's
needs per host, the probe's parsing, and `start`'s cheap subset (real files and sockets)."""

from __future__ import annotations

import json
import socket
import sys
from dataclasses import replace

import msgspec
import pytest

from actors.doctor.facts import demo_weight_bytes, fake_versions, parse_ibv_devinfo
from actors.protocol.host_facts import HostFacts, ModelFacts, PortFacts, RdmaFacts
from supervisor.config.load import parse_hostfile
from supervisor.config.spec import HostSpec
from supervisor.doctor.checks import (
    host_verdicts,
    ports_verdict,
    python_verdict,
    rdma_verdict,
    skew_verdict,
    ssh_verdict,
    version_verdict,
)
from supervisor.doctor.gather import (
    WORKDIR_EXIT,
    Gathered,
    ProbeFailure,
    SSHFailure,
    classify_exit,
    probe_command,
)
from supervisor.doctor.model_checks import disk_verdict, memory_verdict, model_verdict
from supervisor.doctor.needs import HostNeeds, PortNeed, RankNeed, host_needs
from supervisor.doctor.preflight import preflight_problems
from supervisor.doctor.report import build_report

GB = 10**9
VERSIONS = {"mlx_supervisor": "0.1.0", "python": "3.11.7", "mlx": "0.30.0", "mlx_lm": "0.28.0"}


def facts(**changes) -> HostFacts:
    base = HostFacts(
        versions=dict(VERSIONS),
        info={"os": "macOS 26.2 (arm64)", "chip": "Apple M4 Pro", "gpu_cores": "20"},
        platform="darwin",
        mem_available=40 * GB,
        models=(ModelFacts("org/model", present=True, source="hub", size_bytes=8 * GB),),
    )
    return msgspec.structs.replace(base, **changes)


TWO_RANKS = (RankNeed("g", "org/model", 2),)


def host(
    *,
    ranks=TWO_RANKS,
    ports=(),
    rdma=(),
    where="root@mac2:22",
    **changes,
) -> Gathered:
    needs = HostNeeds(HostSpec(ssh="mac2", name="mac2"), tuple(ranks), tuple(ports), rdma, {})
    base = Gathered(
        needs, where, "/opt/venv/bin/python", ssh_target="ssh root@mac2", facts=facts(), skew=0.01
    )
    return replace(base, **changes)


REFERENCE = Gathered(
    HostNeeds(HostSpec(ssh="localhost", name="this machine"), (), (), (), {}),
    "local",
    sys.executable,
    facts=facts(),
)


# ------------------------------------------------------------------ ssh and python


@pytest.mark.parametrize(
    ("gathered", "status", "text", "fix"),
    [
        (host(), "ok", "root@mac2:22", ""),
        (host(where="local"), "ok", "local (no SSH)", ""),
        (
            host(
                ssh=SSHFailure("unknown_key", "node mac2 (...): unknown", "ssh-keyscan mac2 >> k")
            ),
            "problem",
            "unknown host key",
            'trust it: ssh-keyscan mac2 >> k (or set "accept_new_host_keys": true)',
        ),
        (
            host(
                ssh=SSHFailure("unknown_key", "unknown", "ssh-keyscan mac2 >> k"),
                accept_new_host_keys=True,
            ),
            "warn",
            "unknown host key (start will trust it)",
            "trust it: ssh-keyscan mac2 >> k, then run doctor again to check the rest",
        ),
        (
            host(ssh=SSHFailure("changed_key", "CHANGED", "ssh-keygen -R 'mac2' -f k")),
            "problem",
            "host key CHANGED",
            "if mac2 was reinstalled, remove the old key: ssh-keygen -R 'mac2' -f k; else find "
            "out who answers at that address",
        ),
        (
            host(ssh=SSHFailure("unreachable", "connection refused")),
            "problem",
            "unreachable",
            'power mac2 on and start sshd there, or correct its "ssh"; test: ssh root@mac2 true',
        ),
        (
            host(ssh=SSHFailure("refused", "authentication failed for root")),
            "problem",
            "refused",
            "make `ssh root@mac2 true` work (keys: ssh-copy-id)",
        ),
    ],
)
def test_ssh_verdicts(gathered, status, text, fix):
    verdict = ssh_verdict(gathered)
    assert (verdict.status, verdict.text, verdict.fix) == (status, text, fix)
    assert verdict.status == "ok" or verdict.detail == gathered.ssh.message


@pytest.mark.parametrize(
    ("failure", "text", "fix_part"),
    [
        (None, "/opt/venv/bin/python", ""),
        (
            ProbeFailure("python_missing", "not found"),
            "missing: /opt/venv/bin/python",
            'point host "mac2"\'s "python" at its venv',
        ),
        (ProbeFailure("workdir_missing", "cd"), "workdir missing: None", 'its "workdir"'),
        (
            ProbeFailure("not_installed", "No module named actors"),
            "cannot import mlx-supervisor",
            "/opt/venv/bin/python -m pip install -e",
        ),
        (ProbeFailure("failed", "boom"), "probe failed", "ssh root@mac2 /opt/venv/bin/python -m"),
    ],
)
def test_python_verdicts(failure, text, fix_part):
    verdict = python_verdict(host(probe=failure, facts=None if failure else facts()))
    assert verdict.text == text and fix_part in verdict.fix
    assert verdict.status == ("ok" if failure is None else "problem")


def test_python_is_skipped_when_ssh_failed():
    assert python_verdict(host(ssh=SSHFailure("unreachable", "x"), facts=None)).status == "skip"


@pytest.mark.parametrize(
    ("status", "stderr", "kind"),
    [
        (127, "sh: 1: /x/python: not found", "python_missing"),
        (126, "Permission denied", "python_missing"),
        (WORKDIR_EXIT, "can't cd to /nope", "workdir_missing"),
        (1, "/usr/bin/python3: No module named actors", "not_installed"),
        (1, "ModuleNotFoundError: No module named 'msgspec'", "not_installed"),
        (1, "Traceback ...", "failed"),
        (None, "", "failed"),
    ],
)
def test_probe_exits_are_classified(status, stderr, kind):
    failure = classify_exit(status, stderr, "/x/python")
    assert failure.kind == kind and (stderr in failure.message)


def test_the_probe_command_is_fixed_and_quoted():
    assert probe_command(None, None) == "/bin/sh -c 'python3 -u -m actors --host-facts; exit $?'"
    command = probe_command("~/v env/bin/python", "/srv/a;b")
    assert command.startswith("/bin/sh -c ")
    assert '"$HOME"/' in command and "a;b" in command and "|| exit 97" in command
    import shlex

    script = shlex.split(command)[2]  # sh's own argument: what sh parses
    assert shlex.split(script.split("||")[0]) == ["cd", "/srv/a;b"]


# ------------------------------------------------------------------ versions


@pytest.mark.parametrize(
    ("key", "have", "status", "text", "fix"),
    [
        ("mlx", "0.30.0", "ok", "0.30.0", ""),
        (
            "mlx_lm",
            "0.0.1",
            "problem",
            "0.0.1 (here 0.28.0)",
            "on mac2: /opt/venv/bin/python -m pip install 'mlx-lm==0.28.0'",
        ),
        (
            "mlx",
            "",
            "problem",
            "not installed",
            "on mac2: /opt/venv/bin/python -m pip install 'mlx==0.30.0'",
        ),
        (
            "python",
            "3.11.9",
            "warn",
            "3.11.9 (here 3.11.7)",
            "use Python 3.11.7 on mac2 to match exactly",
        ),
        (
            "python",
            "3.12.1",
            "problem",
            "3.12.1 (here 3.11.7)",
            'give mac2 a Python 3.11.7 venv and point its "python" at it',
        ),
        (
            "mlx_supervisor",
            "0.0.9",
            "problem",
            "0.0.9 (here 0.1.0)",
            "update mac2's checkout to this machine's 0.1.0: git pull; pip install -e .",
        ),
    ],
)
def test_version_verdicts(key, have, status, text, fix):
    gathered = host(facts=facts(versions={**VERSIONS, key: have}))
    verdict = version_verdict(gathered, key, VERSIONS[key])
    assert (verdict.status, verdict.text, verdict.fix) == (status, text, fix)


def test_fake_versions_switch_parses_known_keys_only():
    assert fake_versions("mlx_lm=0.0.1, mlx=0.1,bogus=1,junk") == {"mlx_lm": "0.0.1", "mlx": "0.1"}
    assert fake_versions("") == {}


# ------------------------------------------------------------------ model, memory, disk


SIZES = {"org/model": 8 * GB}


@pytest.mark.parametrize(
    ("mem", "ranks", "status", "text"),
    [
        (40 * GB, [RankNeed("g", "org/model", 2)], "ok", "40.0 GB free, needs 6.0 GB"),
        (5 * GB, [RankNeed("g", "org/model", 2)], "problem", "5.0 GB free, needs 6.0 GB"),
        (  # two groups' ranks on one host: both shares count, one margin
            9 * GB,
            [RankNeed("g", "org/model", 2), RankNeed("h", "org/model", 1)],
            "problem",
            "9.0 GB free, needs 14.0 GB",
        ),
        (5 * GB, [RankNeed("g", "other/model", 1)], "info", "5.0 GB free (model size unknown)"),
    ],
)
def test_memory_verdicts(mem, ranks, status, text):
    verdict = memory_verdict(host(ranks=ranks, facts=facts(mem_available=mem)), SIZES, 2 * GB)
    assert (verdict.status, verdict.text) == (status, text)
    assert status != "problem" or verdict.fix.startswith("free memory on mac2")


@pytest.mark.parametrize(
    ("model", "status", "text", "fix_part"),
    [
        (ModelFacts("org/model", True, "hub", size_bytes=8 * GB), "ok", "present", ""),
        (ModelFacts("demo:tiny", False, "demo", path="/c/demo"), "ok", "built at start", ""),
        (ModelFacts("demo:huge", False, "demo"), "problem", "unknown demo size", '"demo:tiny"'),
        (ModelFacts("fake:x", True, "fake"), "ok", "present", ""),
        (
            ModelFacts("org/model", False, "hub", path="/hf"),
            "warn",
            "not in the HF cache",
            "on mac2: hf download org/model",
        ),
        (
            ModelFacts("/models/q", False, "local", path="/models/q"),
            "problem",
            "missing at /models/q",
            "rsync -a <the model dir>/ mac2:/models/q/",
        ),
    ],
)
def test_model_verdicts(model, status, text, fix_part):
    verdict = model_verdict(host(facts=facts(models=(model,))))
    assert (verdict.status, verdict.text) == (status, text) and fix_part in verdict.fix


@pytest.mark.parametrize(
    ("model", "status", "text"),
    [
        (ModelFacts("org/model", True, "hub", size_bytes=8 * GB), "ok", "model already here"),
        (
            ModelFacts("org/model", False, "hub", path="/hf", disk_free=100 * GB),
            "ok",
            "100.0 GB free, model 8.0 GB",
        ),
        (
            ModelFacts("org/model", False, "hub", path="/hf", disk_free=3 * GB),
            "problem",
            "3.0 GB free, model 8.0 GB",
        ),
        (ModelFacts("x/y", False, "hub", disk_free=3 * GB), "info", "x/y: size unknown"),
    ],
)
def test_disk_verdicts(model, status, text):
    verdict = disk_verdict(host(facts=facts(models=(model,))), SIZES)
    assert (verdict.status, verdict.text) == (status, text)
    assert status != "problem" or verdict.fix.startswith("free 5.0 GB on mac2 under /hf")


def test_demo_sizes_come_from_the_shape():
    assert 1_400_000 < demo_weight_bytes("tiny") < 1_500_000  # built: 1,446,854 bytes
    assert demo_weight_bytes("small") > 50 * demo_weight_bytes("tiny")


# ------------------------------------------------------------------ rdma, clock, ports

IBV = """hca_id:\trdma_en3
\ttransport:\t\t\tInfiniBand (0)
\t\tport:\t1
\t\t\tstate:\t\t\tPORT_ACTIVE (4)
hca_id:\trdma_en5
\t\tport:\t1
\t\t\tstate:\t\t\tPORT_DOWN (1)
"""


def test_ibv_devinfo_is_parsed():
    assert parse_ibv_devinfo(IBV) == {"rdma_en3": "PORT_ACTIVE", "rdma_en5": "PORT_DOWN"}
    assert parse_ibv_devinfo("") == {}


@pytest.mark.parametrize(
    ("names", "rdma", "platform", "status", "text", "fix_part"),
    [
        ((), RdmaFacts(), "linux", "info", "n/a (none named)", ""),
        (
            ("rdma_en3",),
            RdmaFacts(parse_ibv_devinfo(IBV)),
            "darwin",
            "ok",
            "rdma_en3 PORT_ACTIVE",
            "",
        ),
        (
            ("rdma_en5",),
            RdmaFacts(parse_ibv_devinfo(IBV)),
            "darwin",
            "problem",
            "rdma_en5 PORT_DOWN",
            "reseat the Thunderbolt cable",
        ),
        (
            ("rdma_en2",),
            RdmaFacts(parse_ibv_devinfo(IBV)),
            "darwin",
            "problem",
            "rdma_en2 missing (found: rdma_en3, rdma_en5)",
            "rdma_ctl enable",
        ),
        (
            ("rdma_en3",),
            RdmaFacts(None, "ibv_devinfo not found"),
            "darwin",
            "problem",
            "ibv_devinfo missing",
            "macOS 26.2+",
        ),
        (
            ("rdma_en3",),
            RdmaFacts(None, "ibv_devinfo not found"),
            "linux",
            "problem",
            "ibv_devinfo missing",
            "ibverbs-utils",
        ),
    ],
)
def test_rdma_verdicts(names, rdma, platform, status, text, fix_part):
    verdict = rdma_verdict(host(rdma=names, facts=facts(rdma=rdma, platform=platform)))
    assert (verdict.status, verdict.text) == (status, text) and fix_part in verdict.fix


@pytest.mark.parametrize(
    ("skew", "platform", "status", "fix_part"),
    [
        (0.2, "darwin", "ok", ""),
        (-0.9, "linux", "ok", ""),
        (3.5, "darwin", "problem", "sudo sntp -sS time.apple.com"),
        (-2.0, "linux", "problem", "sudo timedatectl set-ntp true"),
        (None, "linux", "skip", ""),
    ],
)
def test_skew_verdicts(skew, platform, status, fix_part):
    verdict = skew_verdict(host(skew=skew, facts=facts(platform=platform)))
    assert verdict.status == status and fix_part in verdict.fix


def test_port_verdicts():
    ports = (PortNeed("g", "10.0.0.2", 32323), PortNeed("g", "10.0.0.2", 32324))
    free = facts(ports=(PortFacts("10.0.0.2", 32323), PortFacts("10.0.0.2", 32324)))
    assert (
        ports_verdict(host(ports=ports, facts=free)).text == "10.0.0.2:32323, 10.0.0.2:32324 free"
    )
    busy = facts(ports=(PortFacts("10.0.0.2", 32323, "Address already in use"),))
    verdict = ports_verdict(host(ports=ports, facts=busy))
    assert verdict.status == "problem" and verdict.text == "10.0.0.2:32323 Address already in use"
    assert verdict.fix == (
        'free port 32323 on mac2 (who holds it: lsof -i :32323) or give group "g" another '
        '"starting_port"'
    )
    elsewhere = facts(ports=(PortFacts("10.0.0.2", 32323, "Cannot assign requested address"),))
    assert ports_verdict(host(ports=ports, facts=elsewhere)).fix == (
        '10.0.0.2 is not an address of mac2: correct host "mac2"\'s "ips"'
    )
    assert ports_verdict(host()).text == "picked at start (loopback)"
    assert ports_verdict(host(ranks=[RankNeed("g", "m", 1)])).text == "none (one rank)"


def test_an_unreached_host_has_only_its_ssh_problem():
    gathered = host(ssh=SSHFailure("unreachable", "refused"), facts=None, skew=None)
    verdicts = host_verdicts(gathered, REFERENCE, SIZES, 2 * GB)
    assert [r for r, v in verdicts.items() if v.status == "problem"] == ["ssh"]
    assert {v.status for r, v in verdicts.items() if r != "ssh"} == {"skip"}


# ------------------------------------------------------------------ needs, report, start


JACCL = {
    "backend": "jaccl",
    "model": "org/model",
    "hosts": [
        {"ssh": "mac1", "name": "mac1", "ips": ["10.0.0.1"], "rdma": [None, "rdma_en3"]},
        {"ssh": "mac2", "name": "mac2", "ips": ["10.0.0.2"], "rdma": ["rdma_en4", None]},
    ],
    "envs": ["HF_HOME=/data/hf"],
}


def test_needs_per_host_from_a_jaccl_hostfile():
    spec = parse_hostfile(json.dumps(JACCL).encode(), "h.json")
    mac1, mac2 = host_needs(spec)
    assert mac1.ports == (PortNeed("main", "10.0.0.1", 32323),)  # the coordinator, rank 0
    assert mac2.ports == ()
    assert (mac1.rdma, mac2.rdma) == (("rdma_en3",), ("rdma_en4",))
    assert mac1.ranks == (RankNeed("main", "org/model", 2),)
    request = mac2.request()
    assert request.models == ("org/model",) and request.env == {"HF_HOME": "/data/hf"}


def test_a_report_counts_problems_not_warnings():
    warned = host(facts=facts(models=(ModelFacts("org/model", False, "hub", path="/hf"),)))
    clean = build_report(parse_hostfile(json.dumps(JACCL).encode(), "h"), REFERENCE, [warned])
    assert clean.clean and len(clean.findings) == 1 and clean.as_json()["warnings"] == 1
    broken = replace(warned, ssh=SSHFailure("unreachable", "x"), facts=None)
    dirty = build_report(parse_hostfile(json.dumps(JACCL).encode(), "h"), REFERENCE, [broken])
    assert not dirty.clean and dirty.as_json()["problems"] == 1


def test_start_subset_flags_a_local_python_and_a_busy_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        hostfile = {
            "model": "demo:tiny",
            "hosts": [
                {"ssh": "localhost", "name": "a", "python": str(tmp_path / "nope")},
                {"ssh": "localhost", "name": "b", "python": sys.executable},
            ],
            "groups": [{"name": "g", "hosts": [0, 1], "starting_port": port - 1}],
        }
        lines = preflight_problems(parse_hostfile(json.dumps(hostfile).encode(), "h"))
    assert lines == [
        f'node a: "python" {tmp_path / "nope"} does not exist; install Python with '
        'mlx-supervisor on a, or point host "a"\'s "python" at its venv\'s python '
        "(e.g. ~/mlx-supervisor/.venv/bin/python)",
        f"node b: 127.0.0.1:{port} Address already in use; free port {port} on b (who holds "
        f'it: lsof -i :{port}) or give group "g" another "starting_port"',
    ]
    hostfile["hosts"][0]["python"] = sys.executable
    hostfile["groups"][0]["starting_port"] = None
    assert preflight_problems(parse_hostfile(json.dumps(hostfile).encode(), "h")) == []
