"""The cluster hostfile: a JSON superset of mlx.launch's, decoded into frozen specs
(``supervisor.config.spec``) and checked (``supervisor.config.checks``)."""

from __future__ import annotations

import os

import msgspec

from supervisor.config import checks as checks
from supervisor.config.checks import Problem
from supervisor.config.errors import explain_json_error, explain_validation_error
from supervisor.config.mlx_launch import listen_addresses, loopback_ring, port_count
from supervisor.config.spec import (
    DEFAULT_GROUP,
    ClusterFile,
    ClusterSpec,
    GroupEntry,
    GroupSpec,
    HostfileDocument,
    HostSpec,
    RestartSpec,
)


class HostfileError(Exception):
    """A hostfile problem, as one line naming the file, the place and what is expected."""


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
        memory_margin_bytes=doc.memory_margin_bytes,
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
        history=doc.history,
        logs=doc.logs,
        probe=doc.probe,
        models=doc.models,
        models_dir=doc.models_dir,
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
