"""Before anything starts: can every multi-host group split its model the way it asks?

Only models this machine can see are checked here (demo models by their size, a local
directory, a Hub checkpoint already in the cache); every rank checks again before loading,
so a model only the nodes have still fails with the same one-line message, just later.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from actors.protocol.model_spec import ModelUnavailable, demo_size, is_demo_spec, model_display_name
from actors.protocol.sharding import ModelShape, demo_facts, model_facts, sharding_problem
from supervisor.config.spec import ClusterSpec, GroupSpec


class GroupConfigError(Exception):
    """A group that cannot split its model, as one line naming the group, model and fix."""


def validate_groups(
    spec: ClusterSpec,
    *,
    locate: Callable[[str], Path | None] | None = None,
    facts_of: Callable[[Path], ModelShape] = model_facts,
) -> None:
    """Raise GroupConfigError for the first multi-host group that cannot split its model."""
    known: dict[str, ModelShape | None] = {}
    for group in spec.groups:
        if group.world_size < 2:
            continue
        if group.model in known:
            pass
        elif locate is None and is_demo_spec(group.model):
            known[group.model] = _demo_facts(group.model)
        else:
            path = (locate or local_model_dir)(group.model)
            known[group.model] = None if path is None else _facts(group, path, facts_of)
        facts = known[group.model]
        if facts is None:
            continue
        name = model_display_name(group.model)
        problem = sharding_problem(group.name, name, group.parallel, group.world_size, facts)
        if problem:
            raise GroupConfigError(problem)


def _facts(group: GroupSpec, path: Path, facts_of: Callable[[Path], ModelShape]) -> ModelShape:
    try:
        return facts_of(path)
    except (ValueError, OSError, KeyError) as error:
        raise GroupConfigError(
            f'group "{group.name}": {model_display_name(group.model)} cannot be inspected '
            f"({error}); is it an MLX model directory mlx_lm supports?"
        ) from None


def _demo_facts(spec: str) -> ModelShape:
    try:
        return demo_facts(demo_size(spec))
    except ModelUnavailable as error:
        raise GroupConfigError(str(error)) from None


def local_model_dir(spec: str) -> Path | None:
    """The model's directory if this machine has it, else None (demo models: see
    ``demo_facts``, which needs no build)."""
    local = Path(spec).expanduser()
    if (local / "config.json").is_file():
        return local
    if local.exists() or spec.startswith((".", "/", "~")):
        return None  # a path on the nodes, not necessarily here
    return _cached_hub_dir(spec)


def _cached_hub_dir(repo_id: str) -> Path | None:
    """A Hub checkpoint's directory when its config.json is already in the local cache."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an id the Hub would refuse: the ranks report it with the download
        return None
    return Path(found).parent if isinstance(found, str) else None
