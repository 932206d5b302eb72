"""Ollama wire shapes: request bodies and responses of the native ``/api/*`` endpoints.

Request Structs carry their limits as ``msgspec.Meta`` constraints, so a bad value is a
400 naming the field. Unknown fields are accepted and ignored, as Ollama ignores unknown
options; ``null`` means "not set" for every optional field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar.params import KwargDefinition
from msgspec import Meta, Struct

from api.edge.limits import MAX_SEED, StopList, StopString

Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
Count = Annotated[int, Meta(le=2**31 - 1)]

# --------------------------------------------------------------------------- #
# Requests
# --------------------------------------------------------------------------- #


class Options(Struct, kw_only=True):
    """Modelfile parameters a request may override; the others Ollama knows are ignored."""

    num_predict: Annotated[Count, Meta(ge=-2)] | None = None  # -1 / -2: until the context is full
    temperature: Annotated[float, Meta(ge=0.0, le=100.0)] | None = None
    top_p: Probability | None = None
    top_k: Annotated[Count, Meta(ge=0)] | None = None  # 0 disables it
    min_p: Probability | None = None
    # negative: a random seed, as Ollama's -1; seeds travel as int64
    seed: Annotated[int, Meta(ge=-MAX_SEED - 1, le=MAX_SEED)] | None = None
    stop: StopString | StopList | None = None  # the OpenAI side's caps
    repeat_penalty: Annotated[float, Meta(ge=0.0, le=10.0)] | None = None  # 0 and 1 disable it
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    num_ctx: int | None = None  # accepted; the context is the model's own


class ToolCallFunction(Struct, kw_only=True):
    name: str
    arguments: dict[str, Any] = {}
    index: int | None = None


class ToolCall(Struct, kw_only=True, omit_defaults=True):
    """A function call; ``arguments`` is a JSON object, not a string as in OpenAI."""

    function: ToolCallFunction
    id: str | None = None


class Message(Struct, kw_only=True):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None
    thinking: str | None = None


class ToolFunction(Struct, kw_only=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(Struct, kw_only=True):
    function: ToolFunction
    type: Literal["function"] = "function"


# /schema names a component by its module when both dialects have a class of that name;
# these keys pin the names they had before the modules moved, so /schema stays the same.
ToolEntry = Annotated[Tool, KwargDefinition(schema_component_key="ollama_models_Tool")]


# "" or "json" (JSON mode) or a JSON schema object (structured output)
Format = Literal["", "json"] | dict[str, Any]
Think = bool | Literal["low", "medium", "high"]


class GenerationFields(Struct, kw_only=True):
    """Fields /api/chat and /api/generate share."""

    model: Annotated[str, Meta(min_length=1)]
    format: Format | None = None
    options: Options | None = None
    stream: bool | None = None  # unset means true, as in Ollama
    keep_alive: float | str | None = None  # accepted; models stay loaded while served
    think: Think | None = None  # accepted; thinking text, if any, stays in the content
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None


class ChatRequest(GenerationFields, kw_only=True):
    messages: list[Message] = []  # empty: just load the model
    tools: list[ToolEntry] | None = None


class GenerateRequest(GenerationFields, kw_only=True):
    prompt: str = ""  # empty: just load the model
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool | None = None
    images: list[str] | None = None


class ModelRequest(Struct, kw_only=True):
    """``/api/show`` and ``/api/pull``; ``name`` is the older spelling of ``model``."""

    model: str | None = None
    name: str | None = None
    verbose: bool | None = None
    insecure: bool | None = None
    stream: bool | None = None


# --------------------------------------------------------------------------- #
# Responses
# --------------------------------------------------------------------------- #


class TopLogprob(Struct):
    token: str
    logprob: float
    bytes: list[int]


class Logprob(Struct):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


class ToolCallOut(Struct, omit_defaults=True):
    function: ToolCallFunction
    id: str | None = None


ToolCallOutEntry = Annotated[
    ToolCallOut, KwargDefinition(schema_component_key="ollama_models_ToolCallOut")
]


class MessageOut(Struct, omit_defaults=True):
    role: str
    content: str
    tool_calls: list[ToolCallOutEntry] | None = None


class _Reply(Struct, kw_only=True, omit_defaults=True):
    """What every reply line carries; the last line (``done``) has the figures, in ns."""

    model: str
    created_at: str
    done: bool
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
    logprobs: list[Logprob] | None = None


class ChatResponse(_Reply, kw_only=True, omit_defaults=True):
    """A whole chat reply, or one line of a streamed one."""

    message: MessageOut


class GenerateResponse(_Reply, kw_only=True, omit_defaults=True):
    """As ChatResponse, with the text in ``response``."""

    response: str


class ModelDetails(Struct):
    parent_model: str
    format: str
    family: str
    families: list[str] | None
    parameter_size: str
    quantization_level: str


class ListedModel(Struct):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class TagsResponse(Struct):
    models: list[ListedModel]


class RunningModel(Struct):
    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str
    size_vram: int
    context_length: int


class PsResponse(Struct):
    models: list[RunningModel]


class ShowResponse(Struct):
    modelfile: str
    parameters: str
    template: str
    details: ModelDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class VersionResponse(Struct):
    version: str


class OllamaError(Struct):
    """Ollama's error shape: one line saying what was wrong."""

    error: str
