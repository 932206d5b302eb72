"""Checkpoints: where in a prompt its KV cache is worth storing, and taking a copy there.

A chat prompt's system prompt and earlier turns are shared with other requests (every
conversation with that system prompt, the conversation's next turn). As in
``mlx_lm.server`` 0.32 (``_tokenize``'s segments, ``extract_cache``), the engine stores
the KV cache at those offsets as soon as prefill passes them, not only when the
sequence finishes: a follow-up sent while the first request still decodes, or after a
burst of other requests, starts from the stored prefix (``actors.generation.cache.prompt_cache``).

The offsets are found on the caller's thread at render time, by templating message
prefixes; rank 0 of a group shares them with its plans, so every rank stops prefill
chunks and stores caches at the same places.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import KVCache

from actors.generation.requests.prompt import message_dict, tool_dict
from actors.protocol.messages import GenerationRequest

MIN_CHECKPOINT = 32  # tokens: a shorter prefix saves too little to be worth an entry
TURN_CHECKPOINTS = 2  # earlier turns checkpointed, the latest ones: each costs a template run


def segment_ends(
    tokenizer: Any, request: GenerationRequest, prompt: list[int]
) -> list[tuple[int, str]]:
    """``(offset, kind)`` where the system prompt ("system") and earlier turns ("user") end.

    An offset is the length of the common prefix of ``prompt`` and the template rendered
    over the messages up to that point, so it is always a true prefix of ``prompt``.
    """
    messages = request.messages
    if not messages or len(messages) < 2 or messages[-1].role != "user":
        return []
    system = next((i for i, m in enumerate(messages) if m.role != "system"), len(messages))
    # A turn ends where a user message follows something that is not a user message.
    turns = [
        i
        for i in range(system + 1, len(messages))
        if messages[i].role == "user" and messages[i - 1].role != "user"
    ][-TURN_CHECKPOINTS - 1 : -1]
    tools = [tool_dict(t) for t in request.tools] if request.tools else None
    ends: list[tuple[int, str]] = []
    for count, kind in [(system, "system")] * (system > 0) + [(i, "user") for i in turns]:
        head = [message_dict(m) for m in messages[:count]]
        if kind == "system":
            # Some templates refuse a conversation of only system messages.
            head.append({"role": "user", "content": ""})
        text = tokenizer.apply_chat_template(
            head, tools=tools, add_generation_prompt=False, tokenize=False
        )
        rendered = tokenizer.encode(text, add_special_tokens=False)
        offset = _common_prefix(rendered, prompt)
        if kind == "system" and offset == len(rendered):
            offset = 0  # the empty user message matched too: no clean end of system
        if MIN_CHECKPOINT <= offset < len(prompt) - 1 and all(o < offset for o, _ in ends):
            ends.append((offset, kind))
    return ends


def due(ends: list[tuple[int, str]], held: int, prompt_length: int) -> list[tuple[int, str]]:
    """The ends still ahead of a sequence whose cache holds ``held`` tokens of its prompt."""
    return [(o, k) for o, k in ends if held < o < prompt_length - 1]


def snapshot(cache: list[Any]) -> list[Any] | None:
    """A copy of a plain KV cache as it is now (None: a kind of cache we do not copy)."""
    if not cache or any(type(c) is not KVCache or c.keys is None for c in cache):
        return None
    copies = []
    for c in cache:
        copy = KVCache()
        copy.keys = mx.contiguous(c.keys[..., : c.offset, :])
        copy.values = mx.contiguous(c.values[..., : c.offset, :])
        copy.offset = c.offset
        copies.append(copy)
    mx.eval([(c.keys, c.values) for c in copies])
    return copies


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
