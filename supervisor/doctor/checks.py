"""The doctor's checks: pure functions from gathered facts to one verdict per row and host.

Row order is the table's. Model size, memory and disk live in ``model_checks``.
"""

from __future__ import annotations

from collections.abc import Callable

from supervisor.doctor.gather import Gathered
from supervisor.doctor.model_checks import disk_verdict, memory_verdict, model_verdict
from supervisor.doctor.verdict import (
    Verdict,
    info,
    ok,
    port_fix,
    problem,
    python_fix,
    skipped,
    warn,
)

SKEW_LIMIT = 1.0  # seconds: log lines and link-probe times of different hosts are compared
VERSION_ROWS = {
    "mlx_supervisor": "mlx-supervisor",
    "python": "python version",
    "mlx": "mlx",
    "mlx_lm": "mlx-lm",
}
ROWS = (
    "ssh",
    "python",
    *VERSION_ROWS.values(),
    "os",
    "chip",
    "memory",
    "disk",
    "model",
    "rdma",
    "clock skew",
    "ports",
)


def host_verdicts(
    host: Gathered, reference: Gathered, sizes: dict[str, int | None], margin: int
) -> dict[str, Verdict]:
    """Every row for one host, ``reference`` being this machine (versions to match)."""
    found = {"ssh": ssh_verdict(host), "python": python_verdict(host)}
    ref = reference.facts.versions if reference.facts else {}
    for key, row in VERSION_ROWS.items():
        found[row] = version_verdict(host, key, ref.get(key, ""))
    rest: dict[str, Callable[[], Verdict]] = {
        "os": lambda: info(host.facts.info.get("os", "unknown")),
        "chip": lambda: info(chip_text(host.facts.info)),
        "memory": lambda: memory_verdict(host, sizes, margin),
        "disk": lambda: disk_verdict(host, sizes),
        "model": lambda: model_verdict(host),
        "rdma": lambda: rdma_verdict(host),
        "clock skew": lambda: skew_verdict(host),
        "ports": lambda: ports_verdict(host),
    }
    for row, check in rest.items():
        found[row] = check() if host.facts is not None else skipped()
    return found


def reference_verdicts(reference: Gathered) -> dict[str, Verdict]:
    """This machine's column: what the hosts are compared with."""
    found = {row: skipped() for row in ROWS}
    found["ssh"] = info("(this machine)")
    found["python"] = python_verdict(reference)
    if reference.facts is not None:
        for key, row in VERSION_ROWS.items():
            found[row] = info(reference.facts.versions.get(key) or "not installed")
        found["os"] = info(reference.facts.info.get("os", "unknown"))
        found["chip"] = info(chip_text(reference.facts.info))
    return found


def chip_text(hw: dict[str, str]) -> str:
    chip = hw.get("chip") or hw.get("cpu") or "unknown"
    gpu = f", {hw['gpu_cores']} GPU cores" if hw.get("gpu_cores") else ""
    return chip + gpu


def ssh_verdict(host: Gathered) -> Verdict:
    if host.where == "local":
        return ok("local (no SSH)")
    failure = host.ssh
    if failure is None:
        return ok(host.where)
    node = host.needs.host.name
    detail = failure.message
    if failure.kind == "unknown_key":
        trust = f"trust it: {failure.fix_hint}"
        if host.accept_new_host_keys:
            return warn(
                "unknown host key (start will trust it)",
                f"{trust}, then run doctor again to check the rest",
                detail,
            )
        return problem("unknown host key", f'{trust} (or set "accept_new_host_keys": true)', detail)
    if failure.kind == "changed_key":
        return problem(
            "host key CHANGED",
            f"if {node} was reinstalled, remove the old key: {failure.fix_hint}; else "
            "find out who answers at that address",
            detail,
        )
    test = f"{host.ssh_target} true" if host.ssh_target else "ssh to it"
    if failure.kind == "unreachable":
        return problem(
            "unreachable",
            f'power {node} on and start sshd there, or correct its "ssh"; test: {test}',
            detail,
        )
    return problem("refused", f"make `{test}` work (keys: ssh-copy-id)", detail)


def python_verdict(host: Gathered) -> Verdict:
    if host.ssh is not None:
        return skipped()
    node, failure = host.needs.host.name, host.probe
    if failure is None:
        return ok(host.python)
    if failure.kind == "python_missing":
        return problem(f"missing: {host.python}", python_fix(node), failure.message)
    if failure.kind == "workdir_missing":
        workdir = host.needs.host.workdir
        return problem(
            f"workdir missing: {workdir}",
            f'check out mlx-supervisor at {workdir} on {node}, or correct its "workdir"',
            failure.message,
        )
    if failure.kind == "not_installed":
        return problem(
            "cannot import mlx-supervisor",
            f"on {node}: {host.python} -m pip install -e <the checkout>, or set its "
            '"workdir" to the checkout',
            failure.message,
        )
    return problem(
        "probe failed",
        f"run it by hand to see why: {host.ssh_target or ''} {host.python} -m actors "
        "--version".strip(),
        failure.message,
    )


def version_verdict(host: Gathered, key: str, reference: str) -> Verdict:
    """A version against this machine's: different mlx/mlx-lm/ours is a problem (ranks must
    run the same code), a different Python patch level only a warning."""
    if host.facts is None:
        return skipped()
    have = host.facts.versions.get(key, "")
    node, dist = host.needs.host.name, VERSION_ROWS[key]
    if have == reference:
        return ok(have or "not installed")
    if not have:
        return problem("not installed", _version_fix(key, node, host.python, reference))
    text = f"{have} (here {reference or 'none'})"
    if key == "python" and have.split(".")[:2] == reference.split(".")[:2]:
        return warn(text, f"use Python {reference} on {node} to match exactly")
    return problem(text, _version_fix(key, node, host.python, reference), f"{dist} mismatch")


def _version_fix(key: str, node: str, python: str, reference: str) -> str:
    if key == "python":
        return f'give {node} a Python {reference} venv and point its "python" at it'
    if key == "mlx_supervisor":
        return f"update {node}'s checkout to this machine's {reference}: git pull; pip install -e ."
    dist = VERSION_ROWS[key]
    return f"on {node}: {python} -m pip install '{dist}=={reference}'"


def rdma_verdict(host: Gathered) -> Verdict:
    names, node = host.needs.rdma, host.needs.host.name
    if not names:
        return info("n/a (none named)")
    found = host.facts.rdma
    mac = host.facts.platform == "darwin"
    if found.devices is None:
        fix = (
            "RDMA needs macOS 26.2+ with RDMA enabled (rdma_ctl enable, in Recovery)"
            if mac
            else "install ibverbs-utils (ibv_devinfo), or use the ring backend here"
        )
        return problem("ibv_devinfo missing", f"on {node}: {fix}", found.error)
    missing = [n for n in names if n not in found.devices]
    if missing:
        have = ", ".join(found.devices) or "none"
        return problem(
            f"{', '.join(missing)} missing (found: {have})",
            f"on {node}: enable RDMA (rdma_ctl enable, in Recovery), connect the Thunderbolt "
            'cable, and match "rdma" to the names ibv_devinfo lists',
            found.error,
        )
    down = [f"{n} {found.devices[n]}" for n in names if found.devices[n] != "PORT_ACTIVE"]
    if down:
        return problem(
            ", ".join(down),
            f"on {node}: reseat the Thunderbolt cable (ibv_devinfo must say PORT_ACTIVE)",
        )
    return ok(", ".join(f"{n} PORT_ACTIVE" for n in names))


def skew_verdict(host: Gathered) -> Verdict:
    skew = host.skew
    if skew is None:
        return skipped()
    text = f"{skew:+.3f} s"
    if abs(skew) <= SKEW_LIMIT:
        return ok(text)
    node = host.needs.host.name
    sync = (
        "sudo sntp -sS time.apple.com"
        if host.facts.platform == "darwin"
        else "sudo timedatectl set-ntp true"
    )
    return problem(f"{text} (limit ±{SKEW_LIMIT:g} s)", f"sync {node}'s clock: {sync}")


def ports_verdict(host: Gathered) -> Verdict:
    needs, node = host.needs, host.needs.host.name
    if not needs.ports:
        multi = any(r.world_size > 1 for r in needs.ranks)
        return info("picked at start (loopback)" if multi else "none (one rank)")
    bad = [p for p in host.facts.ports if p.error]
    if not bad:
        return ok(", ".join(f"{p.ip}:{p.port}" for p in host.facts.ports) + " free")
    group = {(p.ip, p.port): p.group for p in needs.ports}
    first = bad[0]
    return problem(
        "; ".join(f"{p.ip}:{p.port} {p.error}" for p in bad),
        port_fix(node, first.ip, first.port, group.get((first.ip, first.port), "?"), first.error),
    )
