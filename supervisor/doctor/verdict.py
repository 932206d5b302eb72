"""A doctor's verdict on one check of one host, and the fix lines ``supervisor start`` shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# ok: fine; warn: works, but look (shown, exit 0); problem: will fail (exit 1);
# info: a fact with no judgement (os, chip); skip: not checked (the host was not reached).
Status = Literal["ok", "warn", "problem", "info", "skip"]
SKIPPED_TEXT = "—"


@dataclass(frozen=True)
class Verdict:
    status: Status
    text: str  # the table cell: a few words
    fix: str = ""  # one line, for warn and problem
    detail: str = ""  # the whole story when the cell is short (an SSH error, say)


def ok(text: str) -> Verdict:
    return Verdict("ok", text)


def info(text: str) -> Verdict:
    return Verdict("info", text)


def skipped() -> Verdict:
    return Verdict("skip", SKIPPED_TEXT)


def problem(text: str, fix: str, detail: str = "") -> Verdict:
    return Verdict("problem", text, fix, detail)


def warn(text: str, fix: str, detail: str = "") -> Verdict:
    return Verdict("warn", text, fix, detail)


def python_fix(node: str) -> str:
    return (
        f'install Python with mlx-supervisor on {node}, or point host "{node}"\'s "python" '
        "at its venv's python (e.g. ~/mlx-supervisor/.venv/bin/python)"
    )


def port_fix(node: str, ip: str, port: int, group: str, error: str) -> str:
    if "assign" in error.lower():  # EADDRNOTAVAIL: the ip is not on that host
        return f'{ip} is not an address of {node}: correct host "{node}"\'s "ips"'
    return (
        f"free port {port} on {node} (who holds it: lsof -i :{port}) or give group "
        f'"{group}" another "starting_port"'
    )
