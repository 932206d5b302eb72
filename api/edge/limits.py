"""Bounds on request fields that wire types cannot express, shared by both dialects.

A JSON schema (``response_format``, a tool's ``parameters``, Ollama's ``format``) is
compiled into a grammar, rendered into the prompt and sent to the actors; one nested
thousands deep would overflow a recursion somewhere on the way, and a huge one stalls
the engine while it compiles. Each is refused here, as a 400 naming the field.
Seeds of ``n`` choices must stay in range too: ``seed + i`` wraps. The limits the wire
types can carry (stop sequences) are defined here too, for both dialects' models.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from msgspec import Meta

from supervisor.serving.contract import BadRequest

# Real schemas nest a handful of levels; 64 leaves room for any hand-written one.
MAX_SCHEMA_DEPTH = 64
# Nodes (objects, arrays, values) in one schema: large tool catalogues stay well under.
MAX_SCHEMA_NODES = 10_000
# Seeds travel as int64 (msgpack, mx.random.key): 0..2**63-1.
SEED_SPAN = 1 << 63
MAX_SEED = SEED_SPAN - 1
# OpenAI's cap on stop sequences, for both dialects; each is matched on every token.
MAX_STOPS = 4
MAX_STOP_CHARS = 256
StopString = Annotated[str, Meta(max_length=MAX_STOP_CHARS)]
StopList = Annotated[list[StopString], Meta(max_length=MAX_STOPS)]


def check_schema(schema: Any, where: str) -> None:
    """Raise a BadRequest naming ``where`` when ``schema`` nests too deep or is too large.

    Iterative, so that the check itself cannot overflow; it stops at the first excess.
    """
    stack = [(schema, 1)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_SCHEMA_NODES:
            raise BadRequest(
                f"{where}: the schema has more than {MAX_SCHEMA_NODES} nodes; simplify it",
                param=where,
            )
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_SCHEMA_DEPTH and children:
            raise BadRequest(
                f"{where}: the schema nests deeper than {MAX_SCHEMA_DEPTH} levels; flatten it",
                param=where,
            )
        stack.extend((child, depth + 1) for child in children)


def choice_seed(seed: int, i: int) -> int:
    """The seed of choice ``i`` of a request seeded ``seed``: distinct, reproducible, in range."""
    return (seed + i) % SEED_SPAN


# --------------------------------------------------------------------------- #
# Bodies nested too deep to decode at all
# --------------------------------------------------------------------------- #

# JSON values a schema lives in, as paths from the body's root ("#": any array index).
_SCHEMA_PATHS = (
    ("response_format", "json_schema", "schema"),
    ("tools", "#", "function", "parameters"),
    ("format",),
)
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\],:]')
# The scan runs only on a body msgspec could not decode: bounded all the same.
_MAX_SCAN_TOKENS = 200_000


def too_deep_field(body: bytes, depth: int = MAX_SCHEMA_DEPTH) -> str | None:
    """The field of ``body`` (JSON) whose value nests past ``depth``, named for a message.

    msgspec refuses a body nested ~1000 levels deep with a RecursionError that names no
    field; this scan of its tokens finds the path. A schema location (e.g.
    ``tools[0].function.parameters``) is named as such, anything else by its top-level key.
    """
    path: list[str | int] = []  # keys and indexes of the open containers' current items
    kinds: list[bytes] = []  # b"{" or b"[" per open container
    for n, match in enumerate(_JSON_TOKEN.finditer(body)):
        if n > _MAX_SCAN_TOKENS:
            return None
        token = match.group()
        if token in (b"{", b"["):
            if len(kinds) >= depth:
                return _field_name(path)
            kinds.append(token)
            path.append(0 if token == b"[" else "")
        elif token in (b"}", b"]"):
            if kinds:
                kinds.pop()
                path.pop()
        elif token == b",":
            if kinds and kinds[-1] == b"[":
                path[-1] += 1
        elif token != b":" and kinds and kinds[-1] == b"{" and _is_key(body, match.end()):
            path[-1] = token[1:-1].decode(errors="replace")
    return None


def _is_key(body: bytes, end: int) -> bool:
    """Whether the string ending at ``end`` is an object key (a ``:`` follows it)."""
    return body[end : end + 64].lstrip()[:1] == b":"


def _field_name(path: list[str | int]) -> str | None:
    if not path or not isinstance(path[0], str):
        return None  # the body itself is an array: no field to name
    for known in _SCHEMA_PATHS:
        head = path[: len(known)]
        if len(head) == len(known) and all(
            k == "#" and isinstance(f, int) or k == f for k, f in zip(known, head, strict=True)
        ):
            return "".join(f"[{f}]" if isinstance(f, int) else f".{f}" for f in head).lstrip(".")
    return path[0]
