"""Every message that crosses a process boundary, and nothing else.

Each message is a frozen, tagged ``msgspec.Struct``; ``Message`` is their union.
Frames on the wire are a 4-byte big-endian length followed by msgpack
(see ``actors.protocol.transport``). Adding a message means adding a Struct here and
naming it in ``Message``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from actors.protocol.model_messages import SYNC_REPLIES, ShareDone, SyncAsk, SyncReply

PROTOCOL_VERSION = 1

ActorKind = Literal["generation", "memory", "probe", "sync", "share", "fake_engine"]


class _Msg(msgspec.Struct, frozen=True, tag=True, tag_field="t", omit_defaults=True):
    pass


# --------------------------------------------------------------------------- #
# Internal generation request (what api/ translates OpenAI / Ollama bodies into)
# --------------------------------------------------------------------------- #


class ToolCall(msgspec.Struct, frozen=True, omit_defaults=True):
    """One function call, OpenAI shaped: ``arguments`` is a JSON string."""

    id: str
    name: str
    arguments: str


class ChatMessage(msgspec.Struct, frozen=True, omit_defaults=True):
    role: str
    content: str | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class ToolSpec(msgspec.Struct, frozen=True, omit_defaults=True):
    """A function the model may call; ``parameters`` is its JSON schema."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ResponseFormat(msgspec.Struct, frozen=True, omit_defaults=True):
    type: Literal["text", "json_object", "json_schema"] = "text"
    schema: dict[str, Any] | None = None
    name: str | None = None


class SamplingParams(msgspec.Struct, frozen=True, omit_defaults=True):
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None


class GenerationRequest(msgspec.Struct, frozen=True, omit_defaults=True):
    """One completion to produce, independent of the HTTP dialect that asked for it.

    Exactly one of ``messages`` (chat, rendered through the model's chat
    template) or ``prompt`` (raw text) is set.  ``resume_tokens`` are tokens
    already sent to the client by a group that died: the new group prefills
    prompt + resume_tokens and continues from there.
    """

    request_id: str
    model: str
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    max_tokens: int | None = None
    sampling: SamplingParams = SamplingParams()
    stop: list[str] = []
    logprobs: bool = False
    top_logprobs: int = 0
    tools: list[ToolSpec] | None = None
    tool_choice: str | None = None  # "none" | "auto" | "required" | a function name
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    session: str | None = None
    resume_tokens: list[int] = []
    ignore_eos: bool = False  # benchmarks and tests: decode exactly max_tokens
    # Who asked, for the request history: "openai" or "ollama", and the path it came on.
    dialect: str = ""
    endpoint: str = ""


# --------------------------------------------------------------------------- #
# Generation events (actor -> supervisor -> api), keyed by request_id
# --------------------------------------------------------------------------- #


class TopLogprob(msgspec.Struct, frozen=True):
    token_id: int
    token: str
    logprob: float


class TokenLogprob(msgspec.Struct, frozen=True, omit_defaults=True):
    token_id: int
    token: str
    logprob: float
    top: list[TopLogprob] = []


class Usage(msgspec.Struct, frozen=True, omit_defaults=True):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


class TokenDelta(_Msg, frozen=True):
    """New output since the last delta (coalesced over a few ms)."""

    request_id: str
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    tool_calls: list[ToolCall] | None = None


class Finished(_Msg, frozen=True):
    request_id: str
    finish_reason: Literal["stop", "length", "tool_calls", "cancelled"]
    usage: Usage
    tool_calls: list[ToolCall] | None = None


class GenerationFailed(_Msg, frozen=True):
    """The request could not be completed; ``retryable`` if another group may succeed."""

    request_id: str
    message: str
    retryable: bool = False
    status: int = 500
    code: str = ""  # an error code for the client (e.g. "context_length_exceeded"), if any


GenerationEvent = TokenDelta | Finished | GenerationFailed


# --------------------------------------------------------------------------- #
# Actor lifecycle (actor <-> supervisor)
# --------------------------------------------------------------------------- #


class ProbeSettings(msgspec.Struct, frozen=True, omit_defaults=True):
    """The live link probe of a multi-rank group (the hostfile's ``probe`` section)."""

    enabled: bool = True
    latency_interval: float = 10.0  # s between small all_sums, while the group is idle
    bandwidth_interval: float = 60.0  # s between large ones
    bandwidth_bytes: int = 4 * 1024 * 1024
    timeout: float = 5.0  # s: a probe not done by then is reported down


class ActorConfig(msgspec.Struct, frozen=True, omit_defaults=True):
    """What an actor is told at spawn, as JSON in $MLXS_ACTOR_CONFIG (the token travels apart)."""

    actor_id: str
    kind: str
    node: str
    control_host: str  # "": the address of the SSH client this actor was started by
    control_port: int
    rank: int = 0
    world_size: int = 1
    group: str = ""
    model: str = ""
    max_batch: int = 32
    prompt_cache_bytes: int | None = (
        None  # None: derived from the memory left (actors.generation.engine.engine)
    )
    prompt_cache_entries: int = 64
    prefill_step_tokens: int = 256  # prompt tokens one engine step may prefill, all sequences
    stream_interval_ms: float = 20.0
    parallel: str = "tensor"
    options: dict[str, str] = {}
    # Free memory a rank keeps beyond its weights, or it refuses to load (actors.memory.fit).
    memory_margin_bytes: int = 2_000_000_000
    probe: ProbeSettings = ProbeSettings()  # generation ranks of a multi-rank group


class Hello(_Msg, frozen=True):
    """First frame an actor sends after dialing the control port."""

    actor_id: str
    kind: str
    node: str
    pid: int
    token: str
    protocol: int = PROTOCOL_VERSION
    rank: int = 0
    nonce: str = ""  # this spawn's one-time nonce: the token alone names no incarnation


class Welcome(_Msg, frozen=True):
    heartbeat_interval: float = 1.0


class Refused(_Msg, frozen=True):
    reason: str


class Vitals(msgspec.Struct, frozen=True, omit_defaults=True):
    """Figures an actor reports with every heartbeat."""

    rss_bytes: int = 0
    cpu_percent: float = 0.0
    active_requests: int = 0
    queued_requests: int = 0
    batch_size: int = 0
    peak_batch_size: int = 0
    progress: int = 0  # monotonic: prefill chunks + decoded tokens
    tokens_generated: int = 0
    prompt_tokens: int = 0
    requests_done: int = 0
    cache_hits: int = 0
    prompt_cache_bytes: int = 0  # held by the prefix cache
    prompt_cache_entries: int = 0
    mem_total: int = 0
    mem_available: int = 0
    # Memory actors: the node's figures (bytes) and the OS's memory-pressure level.
    mem_used: int = 0
    swap_used: int = 0
    pressure: str = ""  # "normal" | "warn" | "critical"; "" where the OS does not say
    # Generation ranks: what MLX itself holds, the weights, and (above) the prefix cache.
    mlx_active_bytes: int = 0
    mlx_cache_bytes: int = 0
    mlx_peak_bytes: int = 0
    model_bytes: int = 0


class Heartbeat(_Msg, frozen=True):
    actor_id: str
    seq: int
    vitals: Vitals = Vitals()


class LoadProgress(_Msg, frozen=True):
    """A long start-up step (model build, download, load) moving along."""

    stage: str
    fraction: float = 0.0
    detail: str = ""


class Ready(_Msg, frozen=True):
    """The actor finished starting and can take work."""

    model: str = ""
    model_path: str = ""
    context_length: int = 0
    load_seconds: float = 0.0
    info: dict[str, str] = {}


class ActorError(_Msg, frozen=True):
    """A fatal start-up or runtime error, said before the actor exits.

    ``permanent``: no restart can fix it (a configuration error): the supervisor marks the
    child failed at once instead of restarting it.
    """

    message: str
    permanent: bool = False


class Shutdown(_Msg, frozen=True):
    reason: str = ""


class LinkProbe(_Msg, frozen=True):
    """Rank 0 of a serving group: a live link probe's figure, or why it failed (``ok`` False).

    ``kind`` "latency": ``latency_s`` is the median round trip of a small all_sum;
    "bandwidth": ``bandwidth_gbps`` the algorithm bandwidth of an all_sum of ``nbytes``
    (``peak_gbps`` the fastest round's). ``at``: unix seconds the probe started;
    ``seconds``: how long it ran (for a timeout: until it was reported).
    """

    kind: Literal["latency", "bandwidth"]
    at: float
    seconds: float
    ok: bool = True
    latency_s: float = 0.0
    bandwidth_gbps: float = 0.0
    peak_gbps: float = 0.0
    nbytes: int = 0
    error: str = ""


# --------------------------------------------------------------------------- #
# Link probe (probe actor rank 0 -> `supervisor rdma-test`; progress is LoadProgress)
# --------------------------------------------------------------------------- #


class ProbeBandwidth(msgspec.Struct, frozen=True):
    """One size of the bandwidth sweep: algorithm bandwidth, GB = 1e9 bytes."""

    nbytes: int
    avg_gbps: float
    peak_gbps: float


class ProbeReport(_Msg, frozen=True):
    """A probe group's figures (actors.probe.measure), said by rank 0 once every step ran."""

    correct: bool
    correctness: str
    latency_us: float = 0.0
    bandwidth: list[ProbeBandwidth] = []
    stress_rounds: int = 0  # 0: no stress run
    stress_failed: int = 0
    stress_detail: str = ""  # the first failed round's line


# --------------------------------------------------------------------------- #
# Work (supervisor -> actor)
# --------------------------------------------------------------------------- #


class Generate(_Msg, frozen=True):
    request: GenerationRequest


class Cancel(_Msg, frozen=True):
    request_id: str


Message = (
    Hello
    | Welcome
    | Refused
    | Heartbeat
    | LoadProgress
    | Ready
    | ActorError
    | Shutdown
    | Generate
    | Cancel
    | TokenDelta
    | Finished
    | GenerationFailed
    | ProbeReport
    | LinkProbe
    | SyncAsk
    | SyncReply
    | ShareDone
)

CONFIG_ENV = "MLXS_ACTOR_CONFIG"
TOKEN_ENV = "MLXS_TOKEN"
NONCE_ENV = "MLXS_NONCE"

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode(msg: Message) -> bytes:
    return _encoder.encode(msg)


def decode(data: bytes) -> Message:
    return _decoder.decode(data)


class Route(msgspec.Struct, frozen=True):
    """A message's tag and request id, read without decoding the rest of it."""

    t: str
    request_id: str = ""


_route_decoder = msgspec.msgpack.Decoder(Route)
# Routed by request_id to whoever asked: generation events, and a sync actor's replies.
STREAM_EVENTS = frozenset({"TokenDelta", "Finished", "GenerationFailed"}) | SYNC_REPLIES


def route(data: bytes) -> Route:
    """Where an encoded message goes: a stream event is held undecoded until it is taken."""
    return _route_decoder.decode(data)
