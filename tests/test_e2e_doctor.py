"""`supervisor doctor` end to end: two "hosts" reached through a real sshd on loopback, the
real CLI, real probes (``python -m actors --host-facts``) on the far side of SSH."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

from supervisor.supervision.ranks import free_starting_port
from tests.conftest import ROOT, run_cli
from tests.sshd import Sshd, sshd_fixture  # noqa: F401

ALIAS = "loopmac"


def two_hosts(sshd: Sshd, tmp: Path, *, known: bool = True, **mac2) -> tuple[Path, int]:
    """A hostfile of mac1 and mac2 (both the loopback sshd) in one ring group on free ports."""
    config = sshd.write_ssh_config(tmp / "ssh_config", ALIAS)
    known_hosts = tmp / "known_hosts"
    if known:
        sshd.write_known_hosts(known_hosts)
    host = {"ssh": ALIAS, "ips": ["127.0.0.1"], "python": sys.executable, "workdir": str(ROOT)}
    port = free_starting_port(2)
    hostfile = {
        "model": "demo:tiny",
        "hosts": [{**host, "name": "mac1"}, {**host, "name": "mac2", **mac2}],
        "groups": [{"name": "g", "hosts": [0, 1], "starting_port": port}],
        "ssh": {"known_hosts": str(known_hosts), "config": str(config), "retries": 0},
    }
    path = tmp / "hostfile.json"
    path.write_text(json.dumps(hostfile))
    return path, port


def doctor_json(hostfile: Path) -> tuple[int, dict]:
    done = run_cli("doctor", str(hostfile), "--json", timeout=120)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def column(report: dict, name: str) -> dict:
    return next(h["checks"] for h in report["hosts"] if h["name"] == name)


def installed(key: str, report: dict) -> str:
    return column(report, "this machine")[key]["text"]


def test_a_clean_cluster_passes_and_shows_versions(sshd, tmp_path):
    hostfile, _ = two_hosts(sshd, tmp_path)
    done = run_cli("doctor", str(hostfile), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all checks passed" in done.stdout
    import mlx_lm

    assert done.stdout.count(mlx_lm.__version__) >= 3, "this machine, mac1 and mac2"
    assert f"root@127.0.0.1:{sshd.port}" in done.stdout


def test_json_report_parses_and_every_check_passes(sshd, tmp_path):
    hostfile, port = two_hosts(sshd, tmp_path)
    code, report = doctor_json(hostfile)
    assert code == 0 and report["ok"] and report["problems"] == 0, report["findings"]
    for name in ("mac1", "mac2"):
        checks = column(report, name)
        for row in ("ssh", "python", "mlx-supervisor", "python version", "mlx", "mlx-lm"):
            assert checks[row]["status"] == "ok", (name, row, checks[row])
        assert checks["mlx"]["text"] == installed("mlx", report)
        assert checks["clock skew"]["status"] == "ok"
        assert abs(float(checks["clock skew"]["text"].split()[0])) < 1.0
        assert checks["rdma"]["text"] == "n/a (none named)"
    assert column(report, "mac1")["ports"]["text"] == f"127.0.0.1:{port} free"
    assert column(report, "mac2")["ports"]["text"] == f"127.0.0.1:{port + 1} free"


def test_a_missing_python_is_flagged_with_its_fix(sshd, tmp_path):
    hostfile, _ = two_hosts(sshd, tmp_path, python="/nonexistent/bin/python")
    code, report = doctor_json(hostfile)
    assert code == 1 and report["problems"] == 1
    python = column(report, "mac2")["python"]
    assert python["status"] == "problem" and python["text"] == "missing: /nonexistent/bin/python"
    assert 'point host "mac2"\'s "python" at its venv' in python["fix"]
    assert column(report, "mac2")["mlx"]["status"] == "skip"
    assert column(report, "mac1")["python"]["status"] == "ok"


def test_an_unknown_host_key_is_flagged_with_its_fix_and_nothing_is_written(sshd, tmp_path):
    hostfile, _ = two_hosts(sshd, tmp_path, known=False)
    done = run_cli("doctor", str(hostfile), timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "unknown host key" in done.stdout
    fix = f"fix: trust it: ssh-keyscan -p {sshd.port} 127.0.0.1 >> {tmp_path / 'known_hosts'}"
    assert done.stdout.count(fix) == 2, done.stdout  # mac1 and mac2, each one line
    assert "2 problem(s)" in done.stdout
    assert not (tmp_path / "known_hosts").exists(), "the doctor trusts nothing by itself"


def test_a_version_mismatch_is_flagged(sshd, tmp_path):
    fake = {"env": {"MLXS_DOCTOR_FAKE_VERSION": "mlx_lm=0.0.1"}}  # test-only switch
    hostfile, _ = two_hosts(sshd, tmp_path, **fake)
    code, report = doctor_json(hostfile)
    here = installed("mlx-lm", report)
    assert code == 1 and report["problems"] == 1, report["findings"]
    mismatch = column(report, "mac2")["mlx-lm"]
    assert mismatch["status"] == "problem" and mismatch["text"] == f"0.0.1 (here {here})"
    assert mismatch["fix"] == f"on mac2: {sys.executable} -m pip install 'mlx-lm=={here}'"
    assert column(report, "mac1")["mlx-lm"] == {
        "status": "ok",
        "text": here,
        "fix": "",
        "detail": "",
    }


def test_a_busy_port_is_flagged(sshd, tmp_path):
    hostfile, port = two_hosts(sshd, tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port + 1))  # mac2's ring port
        busy.listen(1)
        code, report = doctor_json(hostfile)
    ports = column(report, "mac2")["ports"]
    assert code == 1 and ports["status"] == "problem", report["findings"]
    assert f"127.0.0.1:{port + 1} Address already in use" in ports["text"]
    assert f"lsof -i :{port + 1}" in ports["fix"] and '"starting_port"' in ports["fix"]
    assert column(report, "mac1")["ports"]["status"] == "ok"


def test_bad_input_exits_2_with_one_line(tmp_path):
    assert run_cli("doctor").returncode == 2
    bad_flag = run_cli("doctor", "x.json", "--bogus")
    assert bad_flag.returncode == 2 and bad_flag.stderr.count("\n") == 1
    (tmp_path / "h.json").write_text('{"hosts": [{"ssh": "localhost", "pyhton": "/x"}]}')
    typo = run_cli("doctor", str(tmp_path / "h.json"))
    assert typo.returncode == 2 and typo.stdout == ""
    assert typo.stderr.count("\n") == 1 and '"pyhton"' in typo.stderr


def test_start_refuses_a_missing_local_python_with_the_doctors_fix(tmp_path):
    missing = tmp_path / "no-venv" / "python"
    hostfile = tmp_path / "h.json"
    hostfile.write_text(json.dumps({"hosts": [{"ssh": "localhost", "python": str(missing)}]}))
    done = run_cli("start", str(hostfile), "--port", "0", timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        f'supervisor: {hostfile}: node localhost: "python" {missing} does not exist; install '
        'Python with mlx-supervisor on localhost, or point host "localhost"\'s "python" at its '
        "venv's python (e.g. ~/mlx-supervisor/.venv/bin/python)\n"
    )
