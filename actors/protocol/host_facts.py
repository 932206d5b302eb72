"""What ``supervisor doctor`` asks a host and what the host answers (``python -m actors
--host-facts``): one JSON line each way on the probe's stdin and stdout, then a clock ping.

Shared by both sides: the supervisor builds the request from the hostfile, the host gathers
the facts (``actors.doctor.facts``). Nothing here runs anything but ``bind_error``, which
both sides use to see whether a rank's port is free.
"""

from __future__ import annotations

import socket
from typing import Literal

import msgspec

# Test-only: ``mlx_lm=0.0.1,mlx=0.1`` makes ``--version`` and ``--host-facts`` report these
# versions instead of the installed ones, so a test can show a mismatch without a second venv.
FAKE_VERSION_ENV = "MLXS_DOCTOR_FAKE_VERSION"
VERSION_KEYS = ("mlx_supervisor", "python", "mlx", "mlx_lm")
CLOCK_PING = "clock"  # the line the supervisor sends once the facts are in: "your time now?"


class PortToBind(msgspec.Struct, frozen=True):
    """An ``ip:port`` a rank on this host will listen on."""

    ip: str
    port: int


class FactsRequest(msgspec.Struct, frozen=True):
    """The host's part of the hostfile: its models, ports, RDMA devices and environment."""

    models: tuple[str, ...] = ()
    ports: tuple[PortToBind, ...] = ()
    rdma: tuple[str, ...] = ()  # device names the hostfile gives this host
    env: dict[str, str] = {}  # the hostfile's envs and the host's env, as its actors get them


ModelSource = Literal["demo", "local", "hub", "fake"]


class ModelFacts(msgspec.Struct, frozen=True):
    """One model spec as this host sees it."""

    spec: str
    present: bool
    source: ModelSource = "local"
    path: str = ""  # where it is, or where it would go
    size_bytes: int | None = None  # None: unknown here
    disk_free: int | None = None  # bytes free where it is or would go


class PortFacts(msgspec.Struct, frozen=True):
    ip: str
    port: int
    error: str = ""  # empty: bindable now


class RdmaFacts(msgspec.Struct, frozen=True):
    """``ibv_devinfo`` on this host: None ``devices`` when the tool is missing."""

    devices: dict[str, str] | None = None  # hca_id -> port state (PORT_ACTIVE, PORT_DOWN, ...)
    error: str = ""


class HostFacts(msgspec.Struct, frozen=True):
    """The host's answer: versions, hardware, memory, models, RDMA, ports."""

    versions: dict[str, str]
    info: dict[str, str]  # actors.memory.hardware.hardware_info: chip, os, ...
    platform: str  # sys.platform
    mem_available: int
    models: tuple[ModelFacts, ...] = ()
    ports: tuple[PortFacts, ...] = ()
    rdma: RdmaFacts = RdmaFacts()


class ClockReply(msgspec.Struct, frozen=True):
    time: float  # time.time() when the ping was read


def bind_error(ip: str, port: int) -> str:
    """Why a rank could not listen on ``ip:port`` now ("" if it could). With SO_REUSEADDR,
    as the ring backend binds, so a port in TIME_WAIT from a previous run counts as free."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((ip, port))
            sock.listen(1)
    except OSError as exc:
        return exc.strerror or str(exc)
    return ""
