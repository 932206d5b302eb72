"""Admission: turn a ``GenerationRequest`` into a ``Sequence`` ready to join the batch.

Everything that can fail because of the request happens here, before ``BatchGenerator``
sees it: a bad value raised inside a batch step would fail every request in the batch,
not just the one that sent it. A ``ValueError`` raised here (``GrammarError`` included)
becomes the request's 400.

Two steps: ``render`` templates and tokenizes the prompt on the caller's thread (the
costly, prompt-sized part, which must not stall the batch), ``prepare_sequence``
validates and compiles the rest on the engine thread.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import msgspec
import structlog
from mlx_lm.sample_utils import LogitsProcessor, Sampler

from actors.generation.cache.checkpoints import segment_ends
from actors.generation.engine.inbox import Prompted
from actors.generation.requests.constrained import Constraint, GrammarTokenizer, constraint_for
from actors.generation.requests.output import Output
from actors.generation.requests.prompt import render_prompt, tool_dict
from actors.generation.requests.sampling import (
    MAX_TOP_LOGPROBS,
    make_request_processors,
    make_request_sampler,
    validate_sampling,
)
from actors.generation.requests.tool_calls import DEFAULT_MARKERS, ToolCallReader
from actors.protocol.messages import GenerationRequest, Usage

log = structlog.get_logger()


@dataclass(frozen=True)
class ModelFacts:
    """What admission needs to know about the loaded model."""

    tokenizer: Any  # mlx_lm's TokenizerWrapper
    vocab_size: int  # width of the logits
    context_length: int
    default_max_tokens: int
    grammar: GrammarTokenizer | None = None  # None: constrained decoding is unavailable
    grammar_problem: str = "this model has no grammar tokenizer (see the actor log)"
    grammars: GrammarCache = field(default_factory=lambda: GrammarCache(), compare=False)

    @property
    def tool_markers(self) -> tuple[str, str]:
        start = getattr(self.tokenizer, "tool_call_start", None)
        end = getattr(self.tokenizer, "tool_call_end", None)
        return (start, end) if start and end else DEFAULT_MARKERS

    def tool_call_start_id(self) -> int | None:
        """The start marker's token id when it is a single token (as in Qwen templates)."""
        ids = self.tokenizer.encode(self.tool_markers[0], add_special_tokens=False)
        return ids[0] if len(ids) == 1 else None


def load_grammar(model: Any, tokenizer: Any) -> GrammarTokenizer | None:
    """The vocabulary for constrained decoding, built once per model (<1 s); None if unusable."""
    args = getattr(model, "args", None)
    vocab_size = int(getattr(args, "vocab_size", 0) or len(tokenizer))
    try:
        return GrammarTokenizer.from_tokenizer(tokenizer, vocab_size)
    except Exception as error:  # noqa: BLE001 - the model still serves free text
        log.warning("grammar_unavailable", error=str(error))
        return None


class GrammarCache:
    """Compiled constraints by what shaped them; agents send the same tools every turn.

    Compiling costs ~2-8 ms on the engine thread, which stalls the whole batch; a copy
    of a compiled one costs ~20 us. Engine thread only.
    """

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._compiled: OrderedDict[bytes, Constraint | None] = OrderedDict()

    def constraint(
        self, request: GenerationRequest, grammar: GrammarTokenizer
    ) -> Constraint | None:
        """A fresh constraint for ``request``; raises ``GrammarError`` like ``constraint_for``."""
        key = msgspec.msgpack.encode(
            (
                request.response_format,
                request.tools,
                request.tool_choice,
                request.parallel_tool_calls,
            )
        )
        if key in self._compiled:
            self._compiled.move_to_end(key)
        else:
            self._compiled[key] = constraint_for(request, grammar)
            if len(self._compiled) > self._size:
                self._compiled.popitem(last=False)
        template = self._compiled[key]
        return template.copy() if template is not None else None


@dataclass(eq=False)
class Sequence:
    """One admitted request, from its insert into the batch to its last event."""

    request: GenerationRequest
    prompt: list[int]  # what is prefilled: the rendered prompt + resume_tokens
    prompt_tokens: int  # usage: the rendered prompt alone
    max_new_tokens: int
    sampler: Sampler
    processors: list[LogitsProcessor]  # penalties, bias, then the constraint's mask
    output: Output
    constraint: Constraint | None = None
    checkpoints: list[tuple[int, str]] = field(default_factory=list)  # (offset, kind)
    uid: int = -1
    cached_tokens: int = 0
    generated: int = 0
    last_emit: float = float("-inf")

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def wants_logprobs(self) -> bool:
        return self.request.logprobs or self.request.top_logprobs > 0

    @property
    def ignores_eos(self) -> bool:
        # A grammar ends its output with EOS: a constrained request always honours it.
        return self.request.ignore_eos and self.constraint is None

    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=len(self.request.resume_tokens) + self.generated,
            cached_tokens=min(self.cached_tokens, self.prompt_tokens),
        )


class ContextTooLong(ValueError):
    """A prompt that cannot fit the model's context."""

    code = "context_length_exceeded"  # OpenAI's code for it


def render(request: GenerationRequest, model: ModelFacts) -> Prompted:
    """Template and tokenize ``request``'s prompt; any thread. Raises ValueError (400)."""
    prompt = render_prompt(model.tokenizer, request)
    check_context(len(prompt) + len(request.resume_tokens), model.context_length)
    return Prompted(request, prompt, segment_ends(model.tokenizer, request, prompt))


def check_context(tokens: int, context_length: int) -> None:
    if tokens >= context_length:
        raise ContextTooLong(
            f"prompt is {tokens} tokens but the model's context is "
            f"{context_length}; shorten the prompt"
        )


def prepare_sequence(prompted: Prompted, model: ModelFacts) -> Sequence:
    """Validate and compile one rendered request; raises ValueError naming what is wrong."""
    request = prompted.request
    if not 0 <= request.top_logprobs <= MAX_TOP_LOGPROBS:
        raise ValueError(f"top_logprobs must be in 0..{MAX_TOP_LOGPROBS}")
    if request.max_tokens is not None and request.max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {request.max_tokens}")
    validate_sampling(request.sampling, model.vocab_size)
    resume = list(request.resume_tokens)
    if any(not 0 <= t < model.vocab_size for t in resume):
        raise ValueError("resume_tokens holds ids outside the model's vocabulary")
    prompt = prompted.prompt
    full = prompt + resume
    check_context(len(full), model.context_length)
    room = model.context_length - len(full)
    budget = request.max_tokens if request.max_tokens is not None else model.default_max_tokens
    constraint = request_constraint(request, model)
    return Sequence(
        request=request,
        prompt=full,
        prompt_tokens=len(prompt),
        max_new_tokens=min(budget - len(resume), room),
        sampler=make_request_sampler(request.sampling, model.vocab_size),
        processors=make_request_processors(request.sampling)
        + processors_for(request, constraint, model),
        output=Output(
            model.tokenizer.detokenizer, request.stop, resume, tool_call_reader(request, model)
        ),
        constraint=constraint,
        checkpoints=list(prompted.checkpoints),
    )


def request_constraint(request: GenerationRequest, model: ModelFacts) -> Constraint | None:
    """The grammar a request's output must follow (response_format, tool_choice), or None."""
    needs_grammar = (
        request.response_format is not None and request.response_format.type != "text"
    ) or request.tool_choice not in (None, "none", "auto")
    if not needs_grammar:
        return None
    if model.grammar is None:
        raise ValueError(
            f"response_format and tool_choice are unavailable: {model.grammar_problem}"
        )
    constraint = model.grammars.constraint(request, model.grammar)
    if constraint is not None and not constraint.advance(request.resume_tokens):
        raise ValueError(f"resume_tokens do not follow the request's grammar: {constraint.error}")
    return constraint


def processors_for(
    request: GenerationRequest, constraint: Constraint | None, model: ModelFacts
) -> list[LogitsProcessor]:
    """Logits processors after penalties and bias: the grammar's mask, or a ban on calls."""
    if constraint is not None:
        return [constraint.processor]  # last, so nothing can re-allow a masked token
    if request.tools and request.tool_choice == "none":
        banned = model.tool_call_start_id()
        if banned is not None:
            return [_ban_token(banned)]
    return []


def tool_call_reader(request: GenerationRequest, model: ModelFacts) -> ToolCallReader | None:
    """Splits tool calls out of the output when the request lets the model call its tools."""
    if not request.tools or request.tool_choice == "none":
        return None
    # A named tool_choice is one call of that function, parallel_tool_calls or not.
    forced_one = request.tool_choice not in (None, "auto", "required")
    single = forced_one or not request.parallel_tool_calls
    return ToolCallReader(
        request.request_id,
        [tool_dict(t) for t in request.tools],
        markers=model.tool_markers,
        parse=getattr(model.tokenizer, "tool_parser", None),
        max_calls=1 if single else None,
    )


def _ban_token(token: int) -> LogitsProcessor:
    """tool_choice "none": the model sees its tools but cannot open a call."""

    def ban(_tokens: mx.array, logits: mx.array) -> mx.array:
        return logits.at[:, token].add(-mx.inf)

    return ban
