"""The cluster hostfile: a JSON superset of mlx.launch's, decoded into frozen specs."""

from __future__ import annotations

import os
from typing import Annotated, Literal

import msgspec

from supervisor import hostfile_validation as checks
from supervisor.hostfile_errors import explain_json_error, explain_validation_error
from supervisor.hostfile_validation import Problem
from supervisor.mlx_launch import RING_STARTING_PORT as RING_STARTING_PORT
from supervisor.mlx_launch import JacclEnv as JacclEnv
from supervisor.mlx_launch import jaccl_env as jaccl_env
from supervisor.mlx_launch import listen_addresses as listen_addresses
from supervisor.mlx_launch import loopback_ring as loopback_ring
from supervisor.mlx_launch import port_count as port_count
from supervisor.mlx_launch import ring_hostfile as ring_hostfile
from supervisor.mlx_launch import ring_ips as ring_ips

Backend = Literal["ring", "jaccl", "jaccl-ring"]
Parallel = Literal["tensor", "pipeline"]
RouterPolicy = Literal["least_loaded", "round_robin", "hardware_aware", "sticky"]
LogFormat = Literal["json", "console"]
# OTP's restart types: always restarted, restarted after an abnormal exit only, never.
RestartType = Literal["permanent", "transient", "temporary"]
# One rdma entry per peer: a device name, several devices (multi-link), or null (none/self).
RdmaDevice = str | tuple[str, ...] | None
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
Comment = str | list[str] | None

DEFAULT_MODEL = "demo:tiny"
DEFAULT_GROUP = "main"


class HostfileError(Exception):
    """A hostfile problem, as one line naming the file, the place and what is expected."""


class _Spec(msgspec.Struct, frozen=True, repr_omit_defaults=True):
    """Base of every spec: immutable, printed without its defaults."""


class _Written(_Spec, forbid_unknown_fields=True):
    """Base of what is decoded from the file: an unknown key is a typo, not ignored."""


class HostSpec(_Written):
    """One machine (one rank when in a group): mlx.launch's keys plus our per-node hints."""

    ssh: str
    ips: tuple[str, ...] = ()
    rdma: tuple[RdmaDevice, ...] = ()
    name: str = ""
    python: str | None = None
    workdir: str | None = None
    env: dict[str, str] = {}
    chip: str | None = None
    gpu_cores: Annotated[int, msgspec.Meta(ge=1)] | None = None
    memory_gb: Annotated[float, msgspec.Meta(gt=0)] | None = None
    comment: Comment = None


class RestartSpec(_Written):
    """OTP restart type/intensity/period, backoff between restarts, failure detection times."""

    type: RestartType = "permanent"  # of every group that names no "restart" of its own
    intensity: Annotated[int, msgspec.Meta(ge=0)] = 5
    period: Seconds = 60.0
    backoff_initial: Annotated[float, msgspec.Meta(ge=0)] = 0.5
    backoff_max: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    # Heartbeats come every 1 s; 2 s tolerates one late beat. Measured under 32 streams and a
    # test run at load 9: longest silence 1.02 s (docs/benchmarks.md, ops/chaos).
    heartbeat_timeout: Seconds = 2.0
    watchdog_interval: Seconds = 30.0
    comment: Comment = None


class RouterSpec(_Written):
    """How requests are spread over groups; ``session_ttl`` bounds sticky sessions."""

    policy: RouterPolicy = "least_loaded"
    session_ttl: Seconds = 600.0
    comment: Comment = None


class ApiSpec(_Written):
    """Where the HTTP API listens (port 0: any free port), and the HTTP server's limits."""

    host: str = "127.0.0.1"
    port: Port = 8080
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 8 * 1024 * 1024  # larger: 413
    header_timeout: Seconds = 10.0  # a connection must send its request head within this
    body_timeout: Seconds = 30.0  # ... and its body within this after the head
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 1000  # beyond: 503, Retry-After
    comment: Comment = None


class ControlSpec(_Written):
    """The control port actors dial back to; ``host`` None lets the supervisor choose."""

    host: str | None = None
    port: Port = 0
    max_pending: Annotated[int, msgspec.Meta(ge=1)] = 64  # connections not yet past Hello
    max_hello_bytes: Annotated[int, msgspec.Meta(ge=256, le=65536)] = 4096  # first frame
    comment: Comment = None


class SSHSpec(_Written):
    """How the supervisor reaches remote hosts: host keys, timeouts, an ssh_config file."""

    known_hosts: str | None = None  # None: ~/.ssh/known_hosts
    accept_new_host_keys: bool = False
    connect_timeout: Seconds = 10.0
    retries: Annotated[int, msgspec.Meta(ge=0)] = 3
    config: str | None = None  # None: ~/.ssh/config
    comment: Comment = None


class MembershipSpec(_Written):
    """Hosts joining and leaving at run time."""

    unreachable_grace: Seconds = 120.0  # a node down this long is drained and removed
    comment: Comment = None


class GroupEntry(_Written):
    """A group as written: hosts inline or referenced by top-level index or name."""

    hosts: tuple[HostSpec | int | str, ...]
    name: str | None = None
    model: str | None = None
    parallel: Parallel | None = None
    backend: str | None = None
    starting_port: Port | None = None
    restart: RestartType | None = None  # None: the cluster's restart.type
    comment: Comment = None


class ClusterFile(_Written):
    """The hostfile object as written (mlx.launch form 2 plus cluster keys)."""

    hosts: tuple[HostSpec, ...] = ()
    backend: str = ""
    envs: tuple[str, ...] = ()
    model: str = DEFAULT_MODEL
    api: ApiSpec = ApiSpec()
    control: ControlSpec = ControlSpec()
    queue_limit: Annotated[int, msgspec.Meta(ge=1)] = 256
    max_batch: Annotated[int, msgspec.Meta(ge=1)] = 32
    prompt_cache_bytes: Annotated[int, msgspec.Meta(ge=0)] | None = None  # None: derived
    prompt_cache_entries: Annotated[int, msgspec.Meta(ge=0, le=65536)] = 64
    prefill_step_tokens: Annotated[int, msgspec.Meta(ge=16, le=65536)] = 256
    stream_interval_ms: Annotated[float, msgspec.Meta(ge=0, le=1000)] = 20.0
    restart: RestartSpec = RestartSpec()
    router: RouterSpec = RouterSpec()
    api_key: str | None = None
    admin_key: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    stream_buffer_bytes: Annotated[int, msgspec.Meta(ge=65536)] = 1024 * 1024
    ready_wait: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 30.0
    log_format: LogFormat = "json"
    parallel: Parallel = "tensor"
    starting_port: Port = RING_STARTING_PORT
    ssh: SSHSpec = SSHSpec()
    membership: MembershipSpec = MembershipSpec()
    groups: tuple[GroupEntry, ...] | None = None
    schema: str | None = msgspec.field(name="$schema", default=None)
    comment: Comment = None


HostfileDocument = list[HostSpec] | ClusterFile


class GroupSpec(_Spec):
    """A generation group: ranks (host order = rank order) serving one model together."""

    name: str
    model: str
    hosts: tuple[HostSpec, ...]
    parallel: Parallel = "tensor"
    backend: Backend = "ring"
    inherits_model: bool = True  # the group named no model, so --model replaces it
    # First ring port (jaccl: the coordinator's port); None: free ports are picked at start
    # (every rank on loopback) or no port is needed (one rank).
    starting_port: int | None = None
    restart: RestartType = "permanent"

    @property
    def world_size(self) -> int:
        """Number of ranks in the group."""
        return len(self.hosts)


class ClusterSpec(_Spec):
    """The whole cluster as the supervisor runs it; ``groups`` is never empty."""

    source: str
    model: str
    groups: tuple[GroupSpec, ...]
    nodes: tuple[HostSpec, ...]
    envs: dict[str, str] = {}
    api: ApiSpec = ApiSpec()
    control: ControlSpec = ControlSpec()
    queue_limit: int = 256
    max_batch: int = 32
    prompt_cache_bytes: int | None = None
    prompt_cache_entries: int = 64
    prefill_step_tokens: int = 256
    stream_interval_ms: float = 20.0
    restart: RestartSpec = RestartSpec()
    router: RouterSpec = RouterSpec()
    api_key: str | None = None
    admin_key: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    stream_buffer_bytes: int = 1024 * 1024
    ready_wait: float = 30.0
    log_format: LogFormat = "json"
    ssh: SSHSpec = SSHSpec()
    membership: MembershipSpec = MembershipSpec()


def is_local(host: HostSpec) -> bool:
    """True when the host is this machine (ssh empty, localhost, 127.0.0.1 or ::1)."""
    return checks.is_local_ssh(host.ssh)


def load_hostfile(path: str | os.PathLike[str]) -> ClusterSpec:
    """Read and validate a hostfile; every problem is a one-line HostfileError."""
    name = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise HostfileError(
            f"{name}: no such file; pass the path of a JSON hostfile (e.g. hostfiles/demo.json)"
        ) from None
    except IsADirectoryError:
        raise HostfileError(f"{name}: is a directory; expected a JSON hostfile") from None
    except OSError as exc:
        raise HostfileError(f"{name}: cannot be read ({exc.strerror})") from None
    return parse_hostfile(data, name)


def parse_hostfile(data: bytes, name: str) -> ClusterSpec:
    """Decode and validate hostfile bytes; ``name`` prefixes every error message."""
    if not data.strip():
        raise HostfileError(
            f'{name}: the file is empty; expected a JSON list of hosts or an object with "hosts"'
        )
    try:
        document = msgspec.json.decode(data, type=HostfileDocument)
    except msgspec.ValidationError as exc:
        detail = explain_validation_error(str(exc), HostfileDocument)
        raise HostfileError(f"{name}: {detail}") from None
    except msgspec.DecodeError as exc:
        raise HostfileError(f"{name}: {explain_json_error(str(exc), data)}") from None
    if isinstance(document, list):
        document = ClusterFile(hosts=tuple(document))
    try:
        return _build_cluster(document, name)
    except Problem as exc:
        raise HostfileError(f"{name}: {exc}") from None


def _build_cluster(doc: ClusterFile, source: str) -> ClusterSpec:
    checks.check_model(doc.model, '"model"')
    backend = checks.check_backend(doc.backend, '"backend"')
    envs = checks.env_assignments(doc.envs, '"envs"')
    top = checks.name_hosts(doc.hosts)
    if doc.groups is None:
        if not top:
            raise Problem('no hosts; list at least one host under "hosts"')
        entries = (GroupEntry(hosts=tuple(range(len(top))), name=DEFAULT_GROUP),)
    elif not doc.groups:
        raise Problem(
            '"groups" is empty; list a group, or leave "groups" out to serve "model" '
            'from all "hosts" as one group'
        )
    else:
        entries = doc.groups
    implicit = doc.groups is None
    groups: list[GroupSpec] = []
    for i, entry in enumerate(entries):
        group = _build_group(i, entry, doc, top, backend, implicit)
        if any(g.name == group.name for g in groups):
            raise Problem(
                f"groups {[g.name for g in groups].index(group.name)} and {i} are both "
                f'named "{group.name}"; group names must be unique'
            )
        groups.append(group)
    groups = _assign_ports(groups, doc.starting_port)
    nodes = checks.distinct_nodes([g.hosts for g in groups])
    checks.check_control(doc.control, nodes)
    return ClusterSpec(
        source=source,
        model=doc.model,
        groups=tuple(groups),
        nodes=nodes,
        envs=envs,
        api=doc.api,
        control=doc.control,
        queue_limit=doc.queue_limit,
        max_batch=doc.max_batch,
        prompt_cache_bytes=doc.prompt_cache_bytes,
        prompt_cache_entries=doc.prompt_cache_entries,
        prefill_step_tokens=doc.prefill_step_tokens,
        stream_interval_ms=doc.stream_interval_ms,
        restart=_check_restart(doc.restart),
        router=doc.router,
        api_key=checks.check_key(doc.api_key, '"api_key"'),
        admin_key=checks.check_key(doc.admin_key, '"admin_key"'),
        allowed_hosts=checks.check_allowed_hosts(doc.allowed_hosts),
        cors_origins=checks.check_cors_origins(doc.cors_origins),
        stream_buffer_bytes=doc.stream_buffer_bytes,
        ready_wait=doc.ready_wait,
        log_format=doc.log_format,
        ssh=doc.ssh,
        membership=doc.membership,
    )


def _build_group(
    i: int,
    entry: GroupEntry,
    doc: ClusterFile,
    top: tuple[HostSpec, ...],
    backend: str,
    implicit: bool,
) -> GroupSpec:
    name = entry.name if entry.name is not None else f"group-{i}"
    where = "" if implicit else f'group {i} ("{name}")'
    checks.check_group_name(name, f"group {i}")
    if entry.model is not None:
        checks.check_model(entry.model, f'{where} "model"')
    group_backend = backend
    if entry.backend is not None:
        group_backend = checks.check_backend(entry.backend, f'{where} "backend"')
    hosts, indices = checks.resolve_hosts(entry.hosts, top, where or "the cluster")
    hosts = checks.project_rdma(hosts, indices, len(top))
    checks.check_links(hosts, group_backend, where)
    return GroupSpec(
        name=name,
        model=entry.model if entry.model is not None else doc.model,
        hosts=hosts,
        parallel=entry.parallel or doc.parallel,
        backend=group_backend,
        inherits_model=entry.model is None,
        starting_port=entry.starting_port,
        restart=entry.restart or doc.restart.type,
    )


def _assign_ports(groups: list[GroupSpec], first: int) -> list[GroupSpec]:
    """Give each multi-host group its own port range, counting up from ``first``.

    Groups may share machines, so ranges must not overlap; a group that names its own
    ``starting_port`` keeps it. Ring groups whose every rank listens on loopback get free
    ports when they start instead.
    """
    assigned, next_port = [], first
    for group in groups:
        if group.world_size > 1 and group.starting_port is None and not loopback_ring(group):
            group = msgspec.structs.replace(group, starting_port=next_port)
            next_port += port_count(group)
        assigned.append(group)
    checks.check_port_clashes([(g.name, listen_addresses(g)) for g in assigned])
    return assigned


def _check_restart(restart: RestartSpec) -> RestartSpec:
    if restart.backoff_max < restart.backoff_initial:
        raise Problem(
            f"restart.backoff_max ({restart.backoff_max:g}) is below restart.backoff_initial "
            f"({restart.backoff_initial:g}); the cap must be at least the first delay"
        )
    return restart


def apply_overrides(
    spec: ClusterSpec,
    *,
    host: str | None = None,
    port: int | None = None,
    model: str | None = None,
) -> ClusterSpec:
    """CLI flags over the file: API host/port, and the model of groups that named none."""
    api = spec.api
    if host is not None:
        api = msgspec.structs.replace(api, host=host)
    if port is not None:
        if not 0 <= port <= 65535:
            raise HostfileError(f"--port {port} is out of range; expected 0..65535")
        api = msgspec.structs.replace(api, port=port)
    groups, default_model = spec.groups, spec.model
    if model is not None:
        if not model.strip():
            raise HostfileError(
                '--model is empty; name a model ("demo:tiny", a HF repo id or a path)'
            )
        default_model = model
        groups = tuple(
            msgspec.structs.replace(g, model=model) if g.inherits_model else g for g in groups
        )
    return msgspec.structs.replace(spec, api=api, model=default_model, groups=groups)
