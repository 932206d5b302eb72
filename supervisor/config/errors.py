"""msgspec's hostfile decoding errors rewritten as one-line hints naming the key."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

import msgspec.inspect as mi

_AT = re.compile(r"^(?P<what>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.DOTALL)
_QUOTED = re.compile(r"`([^`]*)`")
_PATH_TOKEN = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_BYTE = re.compile(r"\s*\(byte (\d+)\)$")


def explain_validation_error(message: str, root: object) -> str:
    """Rewrite a msgspec ValidationError as ``$.path: what is expected``."""
    match = _AT.match(message)
    what, path = match["what"], match["path"] or "$"
    if path == "$" and what.startswith("Expected `object | array`"):
        got = what.rsplit("`", 2)[-2]
        return f'$: expected a JSON list of hosts or an object with "hosts", got {got}'
    if what.startswith("Object contains unknown field"):
        key = _QUOTED.search(what)[1]
        return f'{path}: unknown key "{key}"{_key_hint(key, _keys_at(root, path))}'
    if what.startswith("Object missing required field"):
        return f'{path}: missing required key "{_QUOTED.search(what)[1]}"'
    if what.startswith("Invalid enum value"):
        value = what.removeprefix("Invalid enum value ").strip().strip("'")
        choices = ", ".join(f'"{c}"' for c in _choices_at(root, path))
        return f'{path}: invalid value "{value}"; expected one of {choices}'
    return f"{path}: {what.replace('`', '')}"


def explain_json_error(message: str, data: bytes) -> str:
    """Rewrite a msgspec DecodeError as ``invalid JSON at line L, column C: reason``."""
    if message == "Input data was truncated":
        return "invalid JSON: the file ends early (an unclosed bracket, brace or string?)"
    reason = message.removeprefix("JSON is malformed: ")
    found = _BYTE.search(reason)
    if not found:
        return f"invalid JSON: {reason}"
    offset = int(found[1])
    before = data[:offset]
    line = before.count(b"\n") + 1
    column = len(before[before.rfind(b"\n") + 1 :].decode("utf-8", "replace")) + 1
    return f"invalid JSON at line {line}, column {column}: {reason[: found.start()]}"


def _key_hint(key: str, known: Sequence[str]) -> str:
    if not known:
        return ""
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f'; did you mean "{close[0]}"?'
    return "; expected one of " + ", ".join(f'"{k}"' for k in known)


def _type_at(root: object, path: str) -> mi.Type | None:
    """The msgspec type found at a ``$.a[0].b`` path under ``root``, or None."""
    node = mi.type_info(root)
    for field, index in _PATH_TOKEN.findall(path.removeprefix("$")):
        node = _pick(node, want_struct=bool(field))
        if field and isinstance(node, mi.StructType):
            node = next((f.type for f in node.fields if f.encode_name == field), None)
        elif index and isinstance(node, mi.ListType | mi.VarTupleType):
            node = node.item_type
        else:
            return None
    return node


def _pick(node: mi.Type | None, *, want_struct: bool) -> mi.Type | None:
    if not isinstance(node, mi.UnionType):
        return node
    kinds = mi.StructType if want_struct else (mi.ListType, mi.VarTupleType)
    return next((t for t in node.types if isinstance(t, kinds)), None)


def _keys_at(root: object, path: str) -> list[str]:
    node = _pick(_type_at(root, path), want_struct=True)
    if not isinstance(node, mi.StructType):
        return []
    return [f.encode_name for f in node.fields]


def _choices_at(root: object, path: str) -> list[str]:
    node = _type_at(root, path)
    members = node.types if isinstance(node, mi.UnionType) else (node,)
    return [v for t in members if isinstance(t, mi.LiteralType) for v in t.values]
