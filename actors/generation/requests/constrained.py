"""Constrained decoding: ``response_format`` and forced tool calls as logits processors.

llguidance compiles a request's JSON schema or tool-call grammar against the model's
vocabulary into an ``LLMatcher``; a ``Constraint`` feeds it every sampled token and masks
the next logits to the tokens the grammar allows. Compilation happens at admission, so a
schema llguidance cannot handle is the request's 400, never a failed batch step.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import llguidance.hf
import mlx.core as mx
import numpy as np
from llguidance import LLMatcher, LLTokenizer
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

from actors.protocol.messages import GenerationRequest, ToolSpec

DEFAULT_TOOL_CALL_TOKENS = ("<tool_call>", "</tool_call>")
# response_format JSON is compact: no whitespace a model could pad forever.
RESPONSE_JSON_OPTIONS = {"whitespace_flexible": False}
# Tool arguments are spaced like the chat templates' ``tojson``, as the model saw them in training.
TOOL_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY_OBJECT: dict[str, Any] = {"type": "object"}
MAX_ERROR_CHARS = 300


class GrammarError(ValueError):
    """The request's schema, tools or tool_choice cannot be turned into a grammar."""


def _one_line(message: str) -> str:
    """llguidance errors carry a source excerpt over several lines; keep the gist, bounded.

    "regex parse error:\\n    ((\\n     ^\\nerror: unclosed group" becomes
    "regex parse error: unclosed group".
    """
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "unknown grammar error"
    text = lines[0]
    if text.endswith(":") and len(lines) > 1:
        text = f"{text} {lines[-1].removeprefix('error:').strip()}"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


# --------------------------------------------------------------------------- #
# The model's vocabulary, once per model
# --------------------------------------------------------------------------- #


def make_ll_tokenizer(
    tokenizer: Any, vocab_size: int, eos_ids: Iterable[int] | None = None
) -> LLTokenizer:
    """Wrap a HF fast tokenizer (or mlx_lm's ``TokenizerWrapper``) for llguidance; ~1 s, cache it.

    ``vocab_size`` is the width of the model's logits (config ``vocab_size``), which real
    checkpoints pad past the tokenizer; the padding ids become unusable special tokens.
    """
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    eos = _eos_ids(tokenizer) if eos_ids is None else list(eos_ids)
    try:
        return llguidance.hf.from_tokenizer(hf, n_vocab=vocab_size, eos_token=eos or None)
    except ValueError as error:
        raise ValueError(
            f"{type(hf).__name__}: constrained decoding needs a fast (tokenizers) tokenizer"
        ) from error


def _eos_ids(tokenizer: Any) -> list[int]:
    """The tokenizer's own EOS first (llguidance's primary), then the config's others."""
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    primary = getattr(hf, "eos_token_id", None)
    others = sorted(getattr(tokenizer, "eos_token_ids", None) or [])
    return ([primary] if primary is not None else []) + [i for i in others if i != primary]


@dataclass(frozen=True, eq=False)
class GrammarTokenizer:
    """Everything a constraint needs to know about one model's vocabulary; build once per model."""

    ll: LLTokenizer
    vocab_size: int  # width of the logits
    text_vocab: int  # ids below this are tokenizer entries, the rest is embedding padding
    eos_ids: tuple[int, ...]
    tool_call_tokens: tuple[str, str] = DEFAULT_TOOL_CALL_TOKENS

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, vocab_size: int) -> GrammarTokenizer:
        """From mlx_lm's ``TokenizerWrapper`` (or a HF fast tokenizer) and config vocab_size."""
        hf = getattr(tokenizer, "_tokenizer", tokenizer)
        eos = _eos_ids(tokenizer)
        if not eos:
            raise ValueError("the tokenizer has no EOS token; a constrained output could never end")
        start = getattr(tokenizer, "tool_call_start", None)
        end = getattr(tokenizer, "tool_call_end", None)
        return cls(
            ll=make_ll_tokenizer(tokenizer, vocab_size, eos),
            vocab_size=vocab_size,
            text_vocab=min(len(hf), vocab_size),
            eos_ids=tuple(eos),
            tool_call_tokens=(start, end) if start and end else DEFAULT_TOOL_CALL_TOKENS,
        )

    def marker(self, text: str) -> str:
        """A Lark term for ``text``: its token id when it is one token, so it is emitted whole."""
        ids = self.ll.tokenize_str(text, parse_special=True)
        return f"<[{ids[0]}]>" if len(ids) == 1 else _lark_literal(text)


# --------------------------------------------------------------------------- #
# Request -> grammar (pure)
# --------------------------------------------------------------------------- #


def _lark_literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _inline_json(schema: dict[str, Any], options: dict[str, Any]) -> str:
    """``%json {...}`` with our options as defaults that the schema's own x-guidance overrides."""
    own = schema.get("x-guidance")
    merged = {**options, **(own if isinstance(own, dict) else {})}
    return "%json " + json.dumps({**schema, "x-guidance": merged})


def _check_schema(schema: Any, what: str, options: dict[str, Any]) -> None:
    """Raise ``GrammarError`` naming ``what`` if llguidance cannot compile ``schema``."""
    if not isinstance(schema, dict):
        raise GrammarError(f"{what}: a JSON schema must be an object, got {type(schema).__name__}")
    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, defaults=options)
    except ValueError as error:
        raise GrammarError(f"{what}: {_one_line(str(error))}") from None
    problem = LLMatcher.validate_grammar(grammar)
    if problem:
        raise GrammarError(f"{what}: {_one_line(problem)}")


def _called_tools(request: GenerationRequest) -> tuple[list[ToolSpec], bool] | None:
    """The tools the output must call and whether several may be; None if calls are optional."""
    tools = request.tools or []
    choice = request.tool_choice
    if choice in (None, "none", "auto"):
        return None
    if not tools:
        raise GrammarError(f"tool_choice {choice!r} needs tools, and the request has none")
    if choice == "required":
        return tools, request.parallel_tool_calls
    named = [t for t in tools if t.name == choice]
    if not named:
        names = ", ".join(repr(t.name) for t in tools)
        raise GrammarError(f"tool_choice names {choice!r}, which is not among the tools ({names})")
    return named, False


def _response_schema(request: GenerationRequest) -> dict[str, Any] | None:
    fmt = request.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return ANY_OBJECT
    if fmt.schema is None:
        raise GrammarError("response_format json_schema needs a schema")
    return fmt.schema


def _tool_calls_lark(
    tools: list[ToolSpec], parallel: bool, start: str, end: str
) -> tuple[list[str], str]:
    """Lark rules for ``<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`` blocks.

    The text is what mlx_lm's json_tools parser reads and what Qwen-style templates render.
    Returns the rules and the name of the rule for the whole sequence of calls.
    """
    seen: set[str] = set()
    rules, calls = [], []
    for i, tool in enumerate(tools):
        if tool.name in seen:
            raise GrammarError(f"tools: two tools are named {tool.name!r}")
        seen.add(tool.name)
        schema = tool.parameters if tool.parameters is not None else ANY_OBJECT
        _check_schema(schema, f"tool {tool.name!r} parameters", TOOL_JSON_OPTIONS)
        head = '\n{"name": ' + json.dumps(tool.name, ensure_ascii=False) + ', "arguments": '
        rules.append(f'call_{i}: {start} {_lark_literal(head)} args_{i} "}}\\n" {end}')
        rules.append(f"args_{i}: {_inline_json(schema, TOOL_JSON_OPTIONS)}")
        calls.append(f"call_{i}")
    rules.append("call: " + " | ".join(calls))
    # Several calls are separated by a newline, as the templates render them.
    rules.append('calls: call ("\\n" call)*' if parallel else "calls: call")
    return rules, "calls"


def grammar_for(request: GenerationRequest, tokenizer: GrammarTokenizer) -> tuple[str, str] | None:
    """The llguidance grammar a request's output must follow and a short kind; None if free text.

    ``tool_choice`` "required" or a function name forces calls (and wins over
    ``response_format``); "auto" with a JSON ``response_format`` allows either the JSON
    answer or calls; otherwise ``response_format`` alone decides.
    """
    forced = _called_tools(request)
    schema = _response_schema(request)
    start, end = (tokenizer.marker(t) for t in tokenizer.tool_call_tokens)
    if forced is not None:
        tools, parallel = forced
        rules, top = _tool_calls_lark(tools, parallel, start, end)
        kind = "tool_calls" if request.tool_choice == "required" else "tool_call"
        return LLMatcher.grammar_from_lark("\n".join([f"start: {top}", *rules])), kind
    if schema is None:
        return None
    _check_schema(schema, "response_format schema", RESPONSE_JSON_OPTIONS)
    if request.tools and request.tool_choice != "none":
        rules, top = _tool_calls_lark(request.tools, request.parallel_tool_calls, start, end)
        answer = f"answer: {_inline_json(schema, RESPONSE_JSON_OPTIONS)}"
        lark = "\n".join([f"start: answer | {top}", answer, *rules])
        return LLMatcher.grammar_from_lark(lark), "json_or_tool_calls"
    grammar = LLMatcher.grammar_from_json_schema(schema, defaults=RESPONSE_JSON_OPTIONS)
    return grammar, request.response_format.type


def constraint_for(
    request: GenerationRequest,
    tokenizer: GrammarTokenizer,
    tool_call_tokens: tuple[str, str] | None = None,
) -> Constraint | None:
    """A compiled constraint for ``request``, or None when its output is free text.

    Raises ``GrammarError`` (a ``ValueError``; the API's 400) with a one-line reason.
    """
    if tool_call_tokens is not None:
        tokenizer = dataclasses.replace(tokenizer, tool_call_tokens=tool_call_tokens)
    found = grammar_for(request, tokenizer)
    if found is None:
        return None
    grammar, kind = found
    return Constraint(tokenizer, grammar, kind)


# --------------------------------------------------------------------------- #
# The per-sequence matcher and logits processor
# --------------------------------------------------------------------------- #


class Constraint:
    """One sequence's grammar state; ``processor`` goes into that sequence's logits_processors.

    Not shareable: each sequence (each of ``n`` choices too) needs its own, see ``copy()``.
    A matcher error never raises into the batch: it is kept in ``error`` and the mask then
    allows only EOS, so the sequence ends at once and the engine reports it.
    """

    def __init__(self, tokenizer: GrammarTokenizer, grammar: str, kind: str = "grammar"):
        self.tokenizer = tokenizer
        self.grammar = grammar
        self.kind = kind
        self._matcher = LLMatcher(tokenizer.ll, grammar, log_level=0)
        if self._matcher.is_error():
            raise GrammarError(f"{kind}: {_one_line(self._matcher.get_error())}")
        self._bitmask = allocate_token_bitmask(1, tokenizer.vocab_size)
        self._seen: int | None = None  # context length at the first call: the prompt
        self._eos_only = self._mask_of(tokenizer.eos_ids)
        self.error: str | None = None
        self.tokens_consumed = 0
        self.mask_seconds = 0.0
        self.mask_calls = 0

    def copy(self) -> Constraint:
        """A fresh constraint on the same compiled grammar, for another sequence."""
        twin = Constraint.__new__(Constraint)
        twin.__dict__.update(self.__dict__)
        twin._matcher = self._matcher.deep_copy()
        twin._matcher.reset()
        twin._bitmask = allocate_token_bitmask(1, self.tokenizer.vocab_size)
        twin._seen, twin.error = None, None
        twin.tokens_consumed, twin.mask_seconds, twin.mask_calls = 0, 0.0, 0
        return twin

    # -- state the engine reads ------------------------------------------------

    def is_accepting(self) -> bool:
        """The output so far is complete: ending here gives a valid document."""
        return self.error is None and self._matcher.is_accepting()

    def is_stopped(self) -> bool:
        """The grammar is finished (or failed): only EOS can follow."""
        return self.error is not None or self._matcher.is_stopped()

    def advance(self, token_ids: Iterable[int]) -> bool:
        """Consume tokens generated before the first step (``resume_tokens``); False on error."""
        for token in token_ids:
            if not self._consume(int(token)):
                return False
        return True

    # -- the logits processor ----------------------------------------------------

    @property
    def processor(self):
        """``(tokens, logits) -> logits`` for mlx_lm: ``tokens`` is prompt + generated so far."""
        return self.__call__

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        started = time.perf_counter()
        try:
            tokens = tokens.reshape(-1)
            if self._seen is None:
                self._seen = tokens.size  # the first call comes before any generated token
            elif tokens.size > self._seen:
                new = tokens[self._seen :].tolist()
                self._seen = tokens.size
                self.advance(new)
            allowed = self._allowed()
        except Exception as error:  # noqa: BLE001 - one sequence's fault must not fail the batch
            self._fail(f"constraint failed: {error!r}")
            allowed = self._eos_only
        masked = mx.where(self._fit(allowed, logits.shape[-1]), logits, -mx.inf)
        self.mask_seconds += time.perf_counter() - started
        self.mask_calls += 1
        return masked

    def _consume(self, token: int) -> bool:
        if self.error is not None:
            return False
        if not self._matcher.consume_token(token):
            text = self.tokenizer.ll.dbg_tokens([token])
            self._fail(f"token {token} {text} broke the grammar: {self._matcher.get_error()}")
            return False
        self.tokens_consumed += 1
        return True

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = _one_line(message)

    def _allowed(self) -> mx.array:
        if self.is_stopped():
            return self._eos_only
        fill_next_token_bitmask(self._matcher, self._bitmask)
        if self._matcher.is_error():
            self._fail(self._matcher.get_error())
            return self._eos_only
        bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")
        allowed = bits[: self.tokenizer.vocab_size].astype(bool)
        allowed[self.tokenizer.text_vocab :] = False  # embedding padding never decodes to text
        eos = list(self.tokenizer.eos_ids)
        allowed[eos] = bits[eos].astype(bool)
        if not allowed.any():
            self._fail("the grammar allows no next token")
            return self._eos_only
        return mx.array(allowed)

    def _mask_of(self, ids: Iterable[int]) -> mx.array:
        allowed = np.zeros(self.tokenizer.vocab_size, dtype=bool)
        allowed[list(ids)] = True
        return mx.array(allowed)

    @staticmethod
    def _fit(allowed: mx.array, width: int) -> mx.array:
        """Match the logits' width: ids past our vocabulary are never allowed."""
        if allowed.shape[0] == width:
            return allowed
        if allowed.shape[0] > width:
            return allowed[:width]
        return mx.concatenate([allowed, mx.zeros(width - allowed.shape[0], dtype=mx.bool_)])
