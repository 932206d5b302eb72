"""One report over every host: the table's columns, each row's verdicts, the problems list."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from supervisor.config.spec import ClusterSpec
from supervisor.doctor.checks import ROWS, host_verdicts, reference_verdicts
from supervisor.doctor.gather import Gathered
from supervisor.doctor.model_checks import model_sizes
from supervisor.doctor.verdict import Verdict

REFERENCE = "this machine"


@dataclass(frozen=True)
class Column:
    name: str  # the node's name, or "this machine"
    where: str  # "local", user@host:port
    verdicts: dict[str, Verdict]


@dataclass(frozen=True)
class Finding:
    node: str
    row: str
    verdict: Verdict


@dataclass(frozen=True)
class Report:
    columns: tuple[Column, ...]  # this machine first, then the hosts in hostfile order

    @property
    def findings(self) -> list[Finding]:
        """Every problem and warning, problems first, in table order."""
        found = [
            Finding(column.name, row, column.verdicts[row])
            for column in self.columns[1:]
            for row in ROWS
            if column.verdicts[row].status in ("problem", "warn")
        ]
        return sorted(found, key=lambda f: f.verdict.status != "problem")

    @property
    def problems(self) -> int:
        return sum(f.verdict.status == "problem" for f in self.findings)

    @property
    def clean(self) -> bool:
        return self.problems == 0

    def as_json(self) -> dict:
        return {
            "ok": self.clean,
            "problems": self.problems,
            "warnings": len(self.findings) - self.problems,
            "hosts": [
                {
                    "name": c.name,
                    "where": c.where,
                    "checks": {row: asdict(c.verdicts[row]) for row in ROWS},
                }
                for c in self.columns
            ],
            "findings": [
                {"node": f.node, "check": f.row, **asdict(f.verdict)} for f in self.findings
            ],
        }


def build_report(spec: ClusterSpec, reference: Gathered, hosts: list[Gathered]) -> Report:
    sizes = model_sizes(reference, hosts)
    columns = [Column(REFERENCE, "local", reference_verdicts(reference))]
    for host in hosts:
        verdicts = host_verdicts(host, reference, sizes, spec.memory_margin_bytes)
        columns.append(Column(host.needs.host.name, host.where, verdicts))
    return Report(tuple(columns))
