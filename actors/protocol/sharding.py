"""Can this model be split over a group of N ranks? Facts from config.json, one-line answers.

mlx_lm's ``shard()`` does not check that the group size divides the head counts and fails
later with an unclear reshape error (MLX-NOTES), so both the supervisor (before anything
starts) and each rank (before loading) ask ``sharding_problem`` first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from actors.protocol.model_spec import DEMO_SIZES


@dataclass(frozen=True)
class ModelShape:
    """What decides how a model may be split: its class's abilities and its shape."""

    model_type: str
    tensor: bool  # the mlx_lm model class has shard()
    pipeline: bool  # its inner model has pipeline() (mlx_lm's PipelineMixin)
    layers: int
    attention_heads: int
    kv_heads: int
    intermediate_size: int = 0  # 0: unknown (MoE and other shapes shard otherwise)


def read_config(path: str | Path) -> dict:
    """A model directory's config.json."""
    with open(Path(path) / "config.json", encoding="utf-8") as f:
        return json.load(f)


def model_facts(path: str | Path) -> ModelShape:
    """The shape of the model directory at ``path`` (its config.json)."""
    return facts_from_config(read_config(path))


def demo_facts(size: str) -> ModelShape:
    """The shape of a demo model, from its size alone: no build needed to check a split."""
    return facts_from_config(
        {
            **DEMO_SIZES[size].config(),
            "vocab_size": 128,  # the vocabulary does not decide a split
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False,
        }
    )


def facts_from_config(config: dict) -> ModelShape:
    """Read the shape from a config and ask mlx_lm's model class what it supports.

    The model is instantiated lazily (no weights are read, no memory is filled), as
    ``mlx_lm.utils.sharded_load`` itself does to find out the same thing.
    """
    from mlx_lm.utils import _get_classes

    model_class, args_class = _get_classes(config)  # ValueError names an unknown model_type
    model = model_class(args_class.from_dict(config))
    inner = getattr(model, "model", None)
    text = config.get("text_config")
    shape = {**config, **text} if isinstance(text, dict) else config  # VLMs nest the LM's shape
    heads = int(shape.get("num_attention_heads") or 0)
    return ModelShape(
        model_type=str(config.get("model_type", "?")),
        tensor=hasattr(model, "shard"),
        pipeline=inner is not None and hasattr(inner, "pipeline"),
        layers=len(getattr(inner, "layers", ()) or ()) or int(shape.get("num_hidden_layers", 0)),
        attention_heads=heads,
        kv_heads=int(shape.get("num_key_value_heads") or heads),
        intermediate_size=int(shape.get("intermediate_size") or 0),
    )


def sharding_problem(group: str, model: str, parallel: str, size: int, facts: ModelShape) -> str:
    """Why ``size`` ranks cannot serve ``model`` split by ``parallel``, or "" if they can."""
    if size <= 1:
        return ""
    where = f'group "{group}": {model}'
    if parallel == "pipeline":
        return _pipeline_problem(where, size, facts)
    return _tensor_problem(where, size, facts)


def _tensor_problem(where: str, size: int, facts: ModelShape) -> str:
    pipeline_fits = facts.pipeline and facts.layers >= size
    if not facts.tensor:
        fix = 'use "parallel": "pipeline"' if pipeline_fits else "serve it on one host"
        return (
            f"{where} ({facts.model_type}) cannot be split tensor-parallel: mlx_lm's model "
            f"has no shard(); {fix}"
        )
    for count, what in _split_counts(facts):
        if count % size:
            fits = _or_list(_sizes_that_fit(facts))
            also = ', or "parallel": "pipeline"' if pipeline_fits else ""
            return (
                f"{where} has {count} {what}; a tensor-parallel group of {size} cannot split "
                f"them; use {fits} hosts{also}"
            )
    return ""


def _pipeline_problem(where: str, size: int, facts: ModelShape) -> str:
    if not facts.pipeline:
        tensor_fits = facts.tensor and all(c % size == 0 for c, _ in _split_counts(facts))
        also = '; use "parallel": "tensor"' if tensor_fits else "; serve it on one host"
        return (
            f"{where} ({facts.model_type}) cannot be split into pipeline stages: mlx_lm's "
            f"model has no pipeline(){also}"
        )
    if facts.layers < size:
        return (
            f"{where} has {facts.layers} layers; a pipeline group of {size} needs at least one "
            f"per rank; use at most {facts.layers} hosts"
        )
    return ""


def _split_counts(facts: ModelShape) -> list[tuple[int, str]]:
    """What shard() divides by the group size, in the order a user should read about it."""
    counts = [
        (facts.kv_heads, "key/value heads"),
        (facts.attention_heads, "attention heads"),
        (facts.intermediate_size, "MLP channels"),
    ]
    return [(c, what) for c, what in counts if c]


def _sizes_that_fit(facts: ModelShape) -> list[int]:
    """Group sizes shard() can split this model into (every count divisible), at most 8."""
    counts = [c for c, _ in _split_counts(facts)]
    limit = min(counts) if counts else 1
    return [n for n in range(1, limit + 1) if all(c % n == 0 for c in counts)][:8]


def _or_list(numbers: list[int]) -> str:
    words = [str(n) for n in numbers]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
