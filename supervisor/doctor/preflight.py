"""The doctor's cheap subset, run by ``supervisor start`` before anything is spawned.

Only what costs no SSH round trip: a local host's ``python`` exists and runs, and the ports
its ranks will listen on are free. Remote hosts are left to the spawn itself, which already
says unknown host keys, unreachable hosts and a missing python in one line each; probing
their versions would add an exec and a Python start per host to every start (``supervisor
doctor`` does that). The lines are the doctor's own fixes.
"""

from __future__ import annotations

import os

from actors.protocol.host_facts import bind_error
from supervisor.config.load import is_local
from supervisor.config.spec import ClusterSpec
from supervisor.doctor.needs import host_needs
from supervisor.doctor.verdict import port_fix, python_fix


def preflight_problems(spec: ClusterSpec) -> list[str]:
    """One line per problem (``node a: ...; fix: ...``), empty when start may go on."""
    lines = []
    for needs in host_needs(spec):
        host = needs.host
        if not is_local(host):
            continue
        if host.python is not None:
            python = os.path.expanduser(host.python)
            if not (os.path.isfile(python) and os.access(python, os.X_OK)):
                why = "is not executable" if os.path.exists(python) else "does not exist"
                lines.append(f'node {host.name}: "python" {python} {why}; {python_fix(host.name)}')
        for need in needs.ports:
            error = bind_error(need.ip, need.port)
            if error:
                fix = port_fix(host.name, need.ip, need.port, need.group, error)
                lines.append(f"node {host.name}: {need.ip}:{need.port} {error}; {fix}")
    return lines
