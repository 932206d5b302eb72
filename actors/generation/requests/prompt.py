"""Prompt rendering: chat messages and tools through the model's chat template."""

from __future__ import annotations

import json
from typing import Any

from actors.protocol.messages import ChatMessage, GenerationRequest, ToolSpec


def render_prompt(tokenizer: Any, request: GenerationRequest) -> list[int]:
    """Prompt token ids: the chat template for ``messages``, plain encoding for ``prompt``."""
    if (request.messages is None) == (request.prompt is None):
        raise ValueError("set exactly one of messages or prompt")
    if request.messages is not None:
        if not request.messages:
            raise ValueError("messages is empty")
        text = tokenizer.apply_chat_template(
            [message_dict(m) for m in request.messages],
            tools=[tool_dict(t) for t in request.tools] if request.tools else None,
            add_generation_prompt=True,
            tokenize=False,
        )
        # The template writes any BOS itself, as tokenize=True would assume.
        tokens = tokenizer.encode(text, add_special_tokens=False)
    else:
        bos = tokenizer.bos_token
        add_special = bos is None or not request.prompt.startswith(bos)
        tokens = tokenizer.encode(request.prompt, add_special_tokens=add_special)
    if not tokens and not request.resume_tokens:
        raise ValueError("prompt is empty")
    return list(tokens)


def message_dict(message: ChatMessage) -> dict[str, Any]:
    """A chat message as chat templates expect it (OpenAI shape, arguments as an object)."""
    out: dict[str, Any] = {"role": message.role, "content": message.content or ""}
    if message.name is not None:
        out["name"] = message.name
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": _json_or_text(call.arguments)},
            }
            for call in message.tool_calls
        ]
    return out


def _json_or_text(arguments: str) -> Any:
    # Templates render arguments with tojson, as mlx_lm.server passes them: decoded.
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def tool_dict(tool: ToolSpec) -> dict[str, Any]:
    """A tool as chat templates expect it (OpenAI function shape)."""
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.parameters is not None:
        function["parameters"] = tool.parameters
    return {"type": "function", "function": function}
