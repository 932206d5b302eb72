"""The cluster hostfile's shape: frozen msgspec specs as written and as run."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

RING_STARTING_PORT = 32323  # mlx.launch --starting-port default
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
    # This node's huggingface_hub cache (HF_HUB_CACHE for its actors); None: the top level's.
    models_dir: str | None = None
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


class HistorySpec(_Written):
    """What the state keeps of past requests and errors (bounded rings, newest kept)."""

    requests: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    errors: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 200
    keep_prompts: bool = False  # store each request's last user message (bounded) too
    comment: Comment = None


class LogsSpec(_Written):
    """The supervisor's recent log lines kept in memory (``supervisor logs``)."""

    lines: Annotated[int, msgspec.Meta(ge=100, le=1_000_000)] = 5000
    follow_buffer: Annotated[int, msgspec.Meta(ge=10, le=100_000)] = 1000  # per follower
    followers: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 32
    comment: Comment = None


class MembershipSpec(_Written):
    """Hosts joining and leaving at run time."""

    unreachable_grace: Seconds = 120.0  # a node down this long is drained and removed
    comment: Comment = None


class ProbeSpec(_Written):
    """The live link probe of every multi-rank group, run between steps while it is idle."""

    enabled: bool = True
    latency_interval: Annotated[float, msgspec.Meta(ge=0.1, le=86400)] = 10.0  # 1 KiB all_sum
    bandwidth_interval: Annotated[float, msgspec.Meta(ge=0.1, le=86400)] = 60.0
    bandwidth_bytes: Annotated[int, msgspec.Meta(ge=4096, le=1 << 30)] = 4 * 1024 * 1024
    timeout: Annotated[float, msgspec.Meta(gt=0, le=600)] = 5.0  # then the link is down
    comment: Comment = None


class ModelsSpec(_Written):
    """Model jobs: download once, send to the other nodes (``supervisor.models``)."""

    jobs_kept: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 50  # ended jobs shown
    files_in_flight: Annotated[int, msgspec.Meta(ge=1, le=64)] = 4  # per target, over SFTP
    transfer_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0  # one read/write
    scan_timeout: Annotated[float, msgspec.Meta(gt=0, le=600)] = 10.0  # a node's disk listing
    download_timeout: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 600.0  # hub silence
    pull_with_inference_key: bool = False  # Ollama /api/pull with the api_key, not admin
    jobs_running: Annotated[int, msgspec.Meta(ge=1, le=64)] = 4  # more at once: 429
    sync_queue: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 64  # asks a sync actor holds
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
    memory_margin_bytes: Annotated[int, msgspec.Meta(ge=0)] = 2_000_000_000
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
    history: HistorySpec = HistorySpec()
    logs: LogsSpec = LogsSpec()
    probe: ProbeSpec = ProbeSpec()
    models: ModelsSpec = ModelsSpec()
    models_dir: str | None = None  # every node's huggingface_hub cache, unless its own says
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
    memory_margin_bytes: int = 2_000_000_000  # kept free beyond a rank's weights at load
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
    history: HistorySpec = HistorySpec()
    logs: LogsSpec = LogsSpec()
    probe: ProbeSpec = ProbeSpec()
    models: ModelsSpec = ModelsSpec()
    models_dir: str | None = None
