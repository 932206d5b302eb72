"""Model specs, as the hostfile and both sides name them: ``demo:<size>``, ``fake:<name>?…``,
a local directory or a Hub repo id; and the demo models' shapes and cache place.

Names only, no loading: the supervisor checks and displays specs with these, the actors
resolve them (``actors.models.resolve.resolve``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

DEMO_PREFIX = "demo:"
FAKE_PREFIX = "fake:"


class ModelUnavailable(Exception):
    """A model spec that names no usable model; the message is one line for the user."""


@dataclass(frozen=True)
class DemoSize:
    """Shape of one demo qwen2; num_key_value_heads bounds the tensor-parallel size."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int

    def config(self) -> dict:
        """The qwen2 config.json keys this shape decides (the build adds the rest)."""
        return {
            "model_type": "qwen2",
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "intermediate_size": self.intermediate_size,
        }


DEMO_SIZES: dict[str, DemoSize] = {
    "tiny": DemoSize(64, 2, 4, 2, 192),
    "small": DemoSize(512, 8, 8, 4, 1536),
}


def is_demo_spec(spec: str) -> bool:
    """True for ``demo:<size>`` specs."""
    return spec.startswith(DEMO_PREFIX)


def demo_size(spec: str) -> str:
    """The size a ``demo:<size>`` spec names; ModelUnavailable for an unknown one."""
    size = spec.removeprefix(DEMO_PREFIX)
    if size not in DEMO_SIZES:
        known = ", ".join(DEMO_PREFIX + s for s in DEMO_SIZES)
        raise ModelUnavailable(f'model "{spec}": unknown demo size; known: {known}')
    return size


def looks_like_path(spec: str) -> bool:
    """True if ``spec`` cannot be a Hub repo id (``name`` or ``org/name``)."""
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1


def model_display_name(spec: str) -> str:
    """The name to show for a spec: demo and repo specs as given, local dirs by their name."""
    local = Path(spec).expanduser()
    if is_demo_spec(spec) or not (local.is_dir() or looks_like_path(spec)):
        return spec
    return local.resolve().name


def parse_fake_spec(spec: str) -> tuple[str, dict[str, str]] | None:
    """``fake:bench?tokens_per_second=20`` -> ``("fake:bench", {...})``; None if not fake."""
    if not spec.startswith(FAKE_PREFIX):
        return None
    name, _, query = spec.partition("?")
    return name, dict(parse_qsl(query, keep_blank_values=True))


def served_model(spec: str) -> str:
    """The model id clients ask for: a fake spec without its options, any other spec as is."""
    fake = parse_fake_spec(spec)
    return fake[0] if fake else spec


def default_cache_dir() -> Path:
    """``$MLX_SUPERVISOR_CACHE`` or ``~/.cache/mlx-supervisor``."""
    env = os.environ.get("MLX_SUPERVISOR_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mlx-supervisor"
