"""OpenAI wire shapes: request bodies, responses and stream chunks, as msgspec Structs.

Request Structs carry their limits as ``msgspec.Meta`` constraints, so Litestar
answers a bad value with a 400 that names the field. Unknown fields are accepted
(clients send many) and ``null`` means "not set" for every optional field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar.params import KwargDefinition
from msgspec import Meta, Struct

from api.edge.limits import MAX_SEED, StopList, StopString

# --------------------------------------------------------------------------- #
# Shared request pieces
# --------------------------------------------------------------------------- #

Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
Bias = Annotated[float, Meta(ge=-100.0, le=100.0)]
PositiveInt = Annotated[int, Meta(ge=1, le=2**31 - 1)]
Seed = Annotated[int, Meta(ge=0, le=MAX_SEED)]
# A token id as a decimal string of ASCII digits (str.isdigit() also takes "²" and "٣");
# nine digits cover every vocabulary, and the actor checks the id against its own.
TokenIdKey = Annotated[str, Meta(pattern="^[0-9]{1,9}$")]
# OpenAI's cap on logit_bias entries.
MAX_LOGIT_BIAS = 300


class StreamOptions(Struct):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


class FunctionSpec(Struct):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(Struct):
    function: FunctionSpec
    type: Literal["function"] = "function"


# /schema names a component by its module when both dialects have a class of that name;
# these keys pin the names they had before the modules moved, so /schema stays the same.
ToolEntry = Annotated[Tool, KwargDefinition(schema_component_key="openai_models_Tool")]


class NamedFunction(Struct):
    name: str


class NamedToolChoice(Struct):
    function: NamedFunction
    type: Literal["function"] = "function"


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ResponseFormatText(Struct, tag_field="type", tag="text"):
    pass


class ResponseFormatJSONObject(Struct, tag_field="type", tag="json_object"):
    pass


class JSONSchemaSpec(Struct):
    name: str = "response"
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class ResponseFormatJSONSchema(Struct, tag_field="type", tag="json_schema"):
    json_schema: JSONSchemaSpec


ResponseFormat = ResponseFormatText | ResponseFormatJSONObject | ResponseFormatJSONSchema


class SamplingFields(Struct, kw_only=True):
    """Fields both endpoints share; ``null`` everywhere means "use the default"."""

    model: str
    max_tokens: PositiveInt | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    top_k: Annotated[int, Meta(ge=-1, le=2**31 - 1)] | None = (
        None  # -1 (vLLM) and 0 both mean "off"
    )
    min_p: Probability | None = None
    seed: Seed | None = None
    stop: StopString | StopList | None = None
    repetition_penalty: Annotated[float, Meta(gt=0.0)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: Annotated[dict[TokenIdKey, Bias], Meta(max_length=MAX_LOGIT_BIAS)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: Annotated[int, Meta(ge=1, le=16)] | None = None
    user: str | None = None
    ignore_eos: bool | None = None  # vLLM's extension: decode exactly max_tokens
    # Accepted and ignored (or used only as hints): real clients send these.
    session_id: str | None = None
    store: bool | None = None
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None


# --------------------------------------------------------------------------- #
# Chat completions request
# --------------------------------------------------------------------------- #


class ContentPart(Struct):
    """One part of a message's content; only text parts can be served."""

    type: str
    text: str | None = None


class FunctionCall(Struct):
    name: str
    arguments: str | dict[str, Any] = "{}"


class RequestToolCall(Struct):
    function: FunctionCall
    id: str | None = None
    type: Literal["function"] = "function"


class RequestMessage(Struct):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[RequestToolCall] | None = None
    tool_call_id: str | None = None


class ChatCompletionRequest(SamplingFields, kw_only=True):
    messages: list[RequestMessage]
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    tools: list[ToolEntry] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: str | None = None
    modalities: list[str] | None = None


# --------------------------------------------------------------------------- #
# Completions request
# --------------------------------------------------------------------------- #


class CompletionRequest(SamplingFields, kw_only=True):
    # A list is accepted so that a one-string list works and token arrays get a clear error.
    prompt: Annotated[str, Meta(min_length=1)] | list[Any]
    logprobs: Annotated[int, Meta(ge=0, le=5)] | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None
    response_format: ResponseFormat | None = None


# --------------------------------------------------------------------------- #
# Responses
# --------------------------------------------------------------------------- #


class PromptTokensDetails(Struct):
    cached_tokens: int = 0


class UsageInfo(Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class FunctionCallOut(Struct):
    name: str
    arguments: str


class ToolCallOut(Struct):
    id: str
    function: FunctionCallOut
    type: str = "function"


ToolCallOutEntry = Annotated[
    ToolCallOut, KwargDefinition(schema_component_key="openai_models_ToolCallOut")
]


class DeltaToolCall(Struct):
    index: int
    id: str
    function: FunctionCallOut
    type: str = "function"


class TopLogprobOut(Struct):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(Struct):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprobOut]


class ChatLogprobs(Struct):
    content: list[TokenLogprobOut] | None
    refusal: list[TokenLogprobOut] | None = None


class AssistantMessage(Struct, omit_defaults=True):
    role: str
    content: str | None
    tool_calls: list[ToolCallOutEntry] | None = None


class ChatChoice(Struct):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: str | None


# A tag is always encoded, so ``object`` is always present even with omit_defaults.
class ChatCompletionResponse(Struct, omit_defaults=True, tag_field="object", tag="chat.completion"):
    id: str
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None


class DeltaMessage(Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatChunkChoice(Struct):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(
    Struct, omit_defaults=True, tag_field="object", tag="chat.completion.chunk"
):
    id: str
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None


class CompletionLogprobs(Struct):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(Struct):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(Struct, omit_defaults=True, tag_field="object", tag="text_completion"):
    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None


class ModelCard(Struct, tag_field="object", tag="model"):
    id: str
    created: int
    owned_by: str


class ModelList(Struct, tag_field="object", tag="list"):
    data: list[ModelCard]
