"""What models a node's cache holds: ``scan_cache_dir`` plus each snapshot's config.json."""

from __future__ import annotations

import json
from pathlib import Path

from actors.protocol.model_messages import LocalModel

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
WEIGHT_INDEX = "model.safetensors.index.json"
SINGLE_WEIGHTS = "model.safetensors"


def scan_models(models_dir: Path) -> list[LocalModel]:
    """One ``LocalModel`` per cached model snapshot, newest first; broken repos are partial."""
    from huggingface_hub import CorruptedCacheException, scan_cache_dir

    if not models_dir.is_dir():
        return []
    info = scan_cache_dir(models_dir)
    models = []
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        for revision in repo.revisions:
            present = {
                f.file_path.relative_to(revision.snapshot_path).as_posix() for f in revision.files
            }
            missing = missing_files(revision.snapshot_path, present)
            config = _read_json(revision.snapshot_path / "config.json")
            modified = max((f.blob_last_modified for f in revision.files), default=0.0)
            models.append(
                LocalModel(
                    repo=repo.repo_id,
                    commit=revision.commit_hash,
                    path=str(revision.snapshot_path),
                    size=revision.size_on_disk,
                    files=revision.nb_files,
                    complete=not missing,
                    missing=missing,
                    refs=sorted(revision.refs),
                    modified=modified or revision.last_modified,
                    **model_facts(config),
                )
            )
    for warning in info.warnings:
        if isinstance(warning, CorruptedCacheException):
            broken = _broken_repo(models_dir, str(warning))
            if broken is not None:
                models.append(broken)
    return sorted(models, key=lambda m: (-m.modified, m.repo))


def missing_files(snapshot: Path, present: set[str]) -> list[str]:
    """What keeps a snapshot from loading: config, tokenizer, or a weight file the index names."""
    missing = []
    if "config.json" not in present:
        missing.append("config.json")
    if not any(name in present for name in TOKENIZER_FILES):
        missing.append("tokenizer.json")
    if WEIGHT_INDEX in present:
        index = _read_json(snapshot / WEIGHT_INDEX)
        weights = sorted(set((index.get("weight_map") or {}).values()))
        missing.extend(w for w in weights if w not in present)
        if not weights:
            missing.append(f"{WEIGHT_INDEX} names no weight file")
    elif SINGLE_WEIGHTS not in present:
        missing.append(SINGLE_WEIGHTS)
    return missing


def model_facts(config: dict) -> dict:
    """Quantization, architecture and context length as config.json says them."""
    quant = config.get("quantization") or config.get("quantization_config") or {}
    bits = quant.get("bits") if isinstance(quant, dict) else None
    architectures = config.get("architectures") or []
    model_type = str(config.get("model_type") or "")
    context = config.get("max_position_embeddings")
    return {
        "quantization": f"{bits}bit" if isinstance(bits, int) else "",
        "architecture": str(architectures[0]) if architectures else model_type,
        "model_type": model_type,
        "context_length": context if isinstance(context, int) else 0,
    }


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _broken_repo(models_dir: Path, warning: str) -> LocalModel | None:
    """A model repo ``scan_cache_dir`` refused (a blob gone, no snapshot yet): partial.

    Its message names the path; the repo is the ``models--…`` folder on it."""
    for part in Path(warning.rsplit(": ", 1)[-1]).parts:
        if part.startswith("models--"):
            folder = models_dir / part
            repo = part.removeprefix("models--").replace("--", "/")
            snapshots = sorted((folder / "snapshots").glob("*")) if folder.is_dir() else []
            snapshot = snapshots[-1] if snapshots else folder
            return LocalModel(
                repo=repo,
                commit=snapshot.name if snapshots else "",
                path=str(snapshot),
                size=0,
                files=0,
                complete=False,
                missing=[warning.splitlines()[0][:200]],
            )
    return None
