"""`supervisor bootstrap` end to end: the real CLI, a real sshd on loopback as the new host,
a real venv and a real ``pip install`` of the wheel built from this tree (dependencies from
this machine's package index)."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import run_cli
from tests.sshd import Sshd, sshd_fixture  # noqa: F401

INSTALL_TIMEOUT = 600  # s: pip installs mlx, transformers... into the new venv


def ssh_args(sshd: Sshd, tmp: Path, *, known: bool = True) -> list[str]:
    known_hosts = tmp / "known_hosts"
    if known:
        sshd.write_known_hosts(known_hosts)
    return [
        f"root@127.0.0.1:{sshd.port}",
        "--identity",
        str(sshd.client_key),
        "--known-hosts",
        str(known_hosts),
    ]


def one_line_error(done: subprocess.CompletedProcess) -> str:
    errors = [line for line in done.stderr.splitlines() if line.startswith("supervisor: ")]
    assert len(errors) == 1, done.stderr
    return errors[0]


def test_bootstrap_installs_our_version_and_a_rerun_is_a_no_op(sshd, tmp_path):
    venv = tmp_path / "new mac" / "venv"  # a space: every remote path is quoted
    args = [*ssh_args(sshd, tmp_path), "--python", sys.executable, "--path", str(venv)]
    done = run_cli("bootstrap", *args, "--system-site-packages", timeout=INSTALL_TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    entry = json.loads(done.stdout)
    ours = importlib.metadata.version("mlx-supervisor")
    assert entry == {"ssh": f"root@127.0.0.1:{sshd.port}", "python": str(venv / "bin" / "python")}
    assert "pip: " in done.stderr, "pip's output is streamed as progress"
    assert (venv / "pyvenv.cfg").read_text().count("include-system-site-packages = true") == 1
    # The venv runs its own installed copy (cwd away from this tree), at our version.
    probe = "import actors, json; print(json.dumps(actors.__file__))"
    where = subprocess.run(
        [entry["python"], "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert where.returncode == 0, where.stderr
    assert json.loads(where.stdout).startswith(str(venv)), where.stdout
    versions = subprocess.run(
        [entry["python"], "-m", "actors", "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    there = json.loads(versions.stdout)
    assert there["mlx_supervisor"] == ours
    # mlx and mlx-lm pinned to this machine's: the doctor requires them equal on every host.
    assert there["mlx"] == importlib.metadata.version("mlx")
    assert there["mlx_lm"] == importlib.metadata.version("mlx-lm")
    record = next(venv.glob("lib/python*/site-packages/mlx_supervisor-*.dist-info/RECORD"))
    installed_at = record.stat().st_mtime_ns

    again = run_cli("bootstrap", *args, "--json", timeout=120)
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["installed"] is False and result["version"] == ours
    assert result["host"] == entry
    assert "no-op" in again.stderr
    assert "pip" not in again.stderr and "building the wheel" not in again.stderr
    assert record.stat().st_mtime_ns == installed_at, "nothing was reinstalled"


def test_a_missing_python_is_one_line_and_exit_1(sshd, tmp_path):
    venv = tmp_path / "venv"
    args = [*ssh_args(sshd, tmp_path), "--python", "/nonexistent/bin/python3", "--path", str(venv)]
    done = run_cli("bootstrap", *args, timeout=60)
    assert done.returncode == 1
    line = one_line_error(done)
    assert "/nonexistent/bin/python3 does not run there" in line and "--python" in line
    assert not venv.exists()


def test_a_python_older_than_3_11_is_refused(sshd, tmp_path):
    old = tmp_path / "python3.10"  # what a 3.10 answers to bootstrap's one-line probe
    old.write_text("#!/bin/sh\necho 3 10 13 /usr/bin/python3.10\n")
    old.chmod(0o755)
    done = run_cli("bootstrap", *ssh_args(sshd, tmp_path), "--python", str(old), timeout=60)
    assert done.returncode == 1
    assert "is Python 3.10.13; mlx-supervisor needs 3.11 or newer" in one_line_error(done)


def test_an_unknown_host_key_is_refused_with_its_fix(sshd, tmp_path):
    done = run_cli("bootstrap", *ssh_args(sshd, tmp_path, known=False), timeout=60)
    assert done.returncode == 1
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >>" in one_line_error(done)


def test_bad_arguments_exit_2(tmp_path):
    done = run_cli("bootstrap", "--", "-oProxyCommand=x", timeout=60)
    assert done.returncode == 2 and "must not start with '-'" in one_line_error(done)
    missing = str(tmp_path / "no-key")
    done = run_cli("bootstrap", "mac9.local", "--identity", missing, timeout=60)
    assert done.returncode == 2 and "no such file" in one_line_error(done)
