"""Turn a model spec (``demo:tiny``, a local dir, a Hub repo id) into a local MLX model dir."""

from __future__ import annotations

import json
import os
from pathlib import Path

from actors.models.demo import Progress, ensure_demo_model
from actors.protocol.model_spec import ModelUnavailable, demo_size, is_demo_spec, looks_like_path

# What mlx_lm itself fetches for a checkpoint (mlx_lm.utils.DEFAULT_ALLOW_PATTERNS).
MLX_MODEL_PATTERNS = [
    "*.json",
    "model*.safetensors",
    "*.py",
    "tokenizer.model",
    "*.tiktoken",
    "tiktoken.model",
    "*.txt",
    "*.jsonl",
    "*.jinja",
]


def resolve_model(spec: str, progress: Progress | None = None) -> Path:
    """Return a local directory holding the model ``spec`` names, building or downloading it."""
    if is_demo_spec(spec):
        return _resolve_demo(spec, progress)
    local = Path(spec).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelUnavailable(f'model "{spec}" is a directory without config.json')
        return local
    if looks_like_path(spec):
        raise ModelUnavailable(f'model "{spec}": no such directory; use a local path or demo:tiny')
    return _download(spec, progress)


def _resolve_demo(spec: str, progress: Progress | None) -> Path:
    """Build or reuse the cached demo model a ``demo:<size>`` spec names."""
    return ensure_demo_model(demo_size(spec), progress=progress)


def _download(spec: str, progress: Progress | None) -> Path:
    """Fetch an MLX checkpoint (``org/name[@revision]``) from the Hugging Face Hub, or raise
    ``ModelUnavailable``.

    A complete snapshot already in the cache (the ``sync`` actor put it there) is used as is:
    no Hub call, so a node serves a synced model with the Hub out of reach."""
    from huggingface_hub import snapshot_download

    repo_id, _, revision = spec.partition("@")
    revision = revision or None
    cached = _complete_local_snapshot(repo_id, revision)
    if cached is not None:
        return cached
    if progress:
        progress("download", 0.0)
    try:
        path = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=MLX_MODEL_PATTERNS,
                # huggingface_hub reads HF_HUB_OFFLINE once at import; honour it per call.
                local_files_only=_hub_offline(),
            )
        )
    except Exception as error:  # every failure, whatever its kind, becomes one line for the user
        raise _unavailable(spec, short_reason(error)) from error
    if not (path / "config.json").is_file():
        raise _unavailable(spec, "the repository has no config.json")
    if progress:
        progress("download", 1.0)
    return path


def _complete_local_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The cached snapshot of ``repo_id`` at ``revision`` (None: main) when it holds
    config.json and every weight file."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=MLX_MODEL_PATTERNS,
                local_files_only=True,
            )
        )
    except Exception:  # not cached (or not a repo id): the network path decides and explains
        return None
    return path if _has_weights(path) else None


def _has_weights(path: Path) -> bool:
    """config.json and the weights: those the index names, else some model*.safetensors."""
    if not (path / "config.json").is_file():
        return False
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError):
            return False
        return bool(names) and all((path / name).is_file() for name in names)
    return any(path.glob("model*.safetensors"))


def _hub_offline() -> bool:
    """True if the environment asks for no Hub traffic right now."""
    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return any((flag or "").strip().lower() in {"1", "true", "yes", "on"} for flag in flags)


def _unavailable(repo_id: str, reason: str) -> ModelUnavailable:
    return ModelUnavailable(
        f'model "{repo_id}" is not a local MLX model directory and could not be downloaded '
        f"from the Hugging Face Hub ({reason}); use a local path or demo:tiny"
    )


def short_reason(error: Exception) -> str:
    """A few words on why a Hub download failed, never a multi-line traceback text."""
    from huggingface_hub import errors

    known = [
        (errors.GatedRepoError, "the repository is gated; log in with `hf auth login`"),
        (errors.RepositoryNotFoundError, "no such repository, or it is private"),
        (errors.RevisionNotFoundError, "no such revision"),
        (errors.HFValidationError, "not a valid repository id"),
        (errors.OfflineModeIsEnabled, "offline mode is on"),
    ]
    for kind, reason in known:
        if isinstance(error, kind):
            return reason
    if isinstance(error, errors.LocalEntryNotFoundError):
        return "offline mode and not in the local cache" if _hub_offline() else "Hub unreachable"
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return first_line[:120]
