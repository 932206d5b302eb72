"""``python -m actors --version`` and ``python -m actors --host-facts``: the doctor's probes.

``--host-facts`` reads one ``FactsRequest`` JSON line on stdin (never argv: nothing from the
hostfile is parsed by a shell), prints one ``HostFacts`` line, then answers one clock ping
with its time, so the supervisor can halve a round trip that excludes Python's start-up.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

import msgspec

from actors.protocol.host_facts import CLOCK_PING, ClockReply, FactsRequest

EXIT_BAD_REQUEST = 2


def print_versions(out: TextIO = sys.stdout) -> int:
    from actors.doctor.facts import versions

    out.write(json.dumps(versions()) + "\n")
    return 0


def serve_host_facts(stdin: TextIO = sys.stdin, out: TextIO = sys.stdout) -> int:
    from actors.doctor.facts import gather

    try:
        request = msgspec.json.decode(stdin.readline(), type=FactsRequest)
    except msgspec.DecodeError as exc:
        print(f"actors --host-facts: bad request on stdin: {exc}", file=sys.stderr)
        return EXIT_BAD_REQUEST
    out.write(msgspec.json.encode(gather(request)).decode() + "\n")
    out.flush()
    if stdin.readline().strip() == CLOCK_PING:  # EOF: the caller wanted no clock
        out.write(msgspec.json.encode(ClockReply(time.time())).decode() + "\n")
        out.flush()
    return 0
