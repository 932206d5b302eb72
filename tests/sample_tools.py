"""Two tools with bounded schemas, so even the random demo model's calls terminate."""

from actors.protocol.messages import ToolSpec

WEATHER = ToolSpec(
    name="get_weather",
    description="Weather in a city",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 10},
            "unit": {"enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
)
ADD = ToolSpec(
    name="add",
    parameters={
        "type": "object",
        "properties": {
            "a": {"type": "integer", "minimum": -100, "maximum": 100},
            "b": {"type": "integer", "minimum": -100, "maximum": 100},
        },
        "required": ["a", "b"],
        "additionalProperties": False,
    },
)
TOOLS = [WEATHER, ADD]
