"""What a host can say about itself before anything starts: the facts ``supervisor doctor``
judges (``supervisor.doctor.checks``). Read-only: nothing is built, downloaded or left bound.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from actors.memory.fit import weight_bytes
from actors.memory.hardware import hardware_info
from actors.protocol.host_facts import (
    FAKE_VERSION_ENV,
    VERSION_KEYS,
    FactsRequest,
    HostFacts,
    ModelFacts,
    PortFacts,
    RdmaFacts,
    bind_error,
)
from actors.protocol.model_spec import (
    DEMO_SIZES,
    FAKE_PREFIX,
    ModelUnavailable,
    demo_size,
    is_demo_spec,
    looks_like_path,
)

IBV_DEVINFO_TIMEOUT = 5.0


def versions(info: dict[str, str] | None = None) -> dict[str, str]:
    """mlx-supervisor, Python, mlx and mlx-lm here ("" when not installed), fakes applied."""
    info = hardware_info() if info is None else info
    found = {key: info.get(key, "") for key in VERSION_KEYS}
    found.update(fake_versions(os.environ.get(FAKE_VERSION_ENV, "")))
    return found


def fake_versions(text: str) -> dict[str, str]:
    """``mlx_lm=0.0.1,mlx=0.1`` -> those keys (test-only; unknown keys are ignored)."""
    pairs = (item.partition("=") for item in text.split(",") if item.strip())
    return {k.strip(): v.strip() for k, sep, v in pairs if sep and k.strip() in VERSION_KEYS}


def gather(request: FactsRequest) -> HostFacts:
    """Every fact the request asks about; the environment is the actors' (request.env)."""
    import psutil

    os.environ.update(request.env)  # HF_HOME, MLX_SUPERVISOR_CACHE decide where models are
    info = hardware_info()
    return HostFacts(
        versions=versions(info),
        info=info,
        platform=sys.platform,
        mem_available=psutil.virtual_memory().available,
        models=tuple(model_facts(spec) for spec in request.models),
        ports=tuple(port_facts(p.ip, p.port) for p in request.ports),
        rdma=rdma_facts() if request.rdma else RdmaFacts(),
    )


def model_facts(spec: str) -> ModelFacts:
    """Is the model here, how big is it, and how much disk is free where it would go."""
    if spec.startswith(FAKE_PREFIX):
        return ModelFacts(spec, present=True, source="fake", size_bytes=0)
    if is_demo_spec(spec):
        return _demo_facts(spec)
    local = Path(spec).expanduser()
    if local.exists() or looks_like_path(spec):
        present = (local / "config.json").is_file()
        return ModelFacts(
            spec,
            present=present,
            path=str(local),
            size_bytes=weight_bytes(local) if present else None,
            disk_free=disk_free(local),
        )
    return _hub_facts(spec)


def _demo_facts(spec: str) -> ModelFacts:
    from actors.models.demo import demo_model_dir, is_complete

    try:
        size = demo_size(spec)
    except ModelUnavailable:
        return ModelFacts(spec, present=False, source="demo")
    path = demo_model_dir(size)
    present = is_complete(path)
    return ModelFacts(
        spec,
        present=present,
        source="demo",
        path=str(path),
        size_bytes=weight_bytes(path) if present else demo_weight_bytes(size),
        disk_free=disk_free(path),
    )


def demo_weight_bytes(size: str) -> int:
    """A demo model's float32 weights, from its shape alone (no build)."""
    from actors.models.demo import SPECIAL_TOKENS, TOOL_TOKENS, TRAINED_VOCAB, count_parameters

    shape = DEMO_SIZES[size]
    tokens = TRAINED_VOCAB + len(SPECIAL_TOKENS) + len(TOOL_TOKENS)
    config = {
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "num_hidden_layers": shape.num_hidden_layers,
        "vocab_size": -(-tokens // 128) * 128,  # padded as the build pads it
        "tie_word_embeddings": False,
    }
    return 4 * count_parameters(config)


def _hub_facts(repo_id: str) -> ModelFacts:
    """A Hub checkpoint: present when its config.json is in this host's HF cache."""
    try:
        from huggingface_hub import constants, try_to_load_from_cache

        cache = Path(constants.HF_HUB_CACHE)
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an id the Hub would refuse: the ranks say so when they download
        return ModelFacts(repo_id, present=False, source="hub")
    if isinstance(found, str):
        snapshot = Path(found).parent
        return ModelFacts(
            repo_id,
            present=True,
            source="hub",
            path=str(snapshot),
            size_bytes=weight_bytes(snapshot),
            disk_free=disk_free(snapshot),
        )
    return ModelFacts(
        repo_id, present=False, source="hub", path=str(cache), disk_free=disk_free(cache)
    )


def disk_free(path: Path) -> int | None:
    """Bytes free on the file system that holds ``path`` (or would: its nearest parent)."""
    for place in (path, *path.parents):
        if place.exists():
            try:
                return shutil.disk_usage(place).free
            except OSError:
                return None
    return None


def port_facts(ip: str, port: int) -> PortFacts:
    """Can a rank bind ``ip:port`` now? (``bind_error``, as the supervisor checks its own.)"""
    return PortFacts(ip, port, bind_error(ip, port))


def rdma_facts() -> RdmaFacts:
    """``ibv_devinfo``'s devices and their port states; ``devices`` None without the tool."""
    tool = shutil.which("ibv_devinfo")
    if tool is None:
        return RdmaFacts(error="ibv_devinfo not found")
    try:
        out = subprocess.run(
            [tool], capture_output=True, text=True, timeout=IBV_DEVINFO_TIMEOUT, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return RdmaFacts(devices={}, error=f"ibv_devinfo failed: {exc}")
    devices = parse_ibv_devinfo(out.stdout)
    error = "" if devices or out.returncode == 0 else (out.stderr.strip().splitlines() or [""])[0]
    return RdmaFacts(devices=devices, error=error)


_HCA = re.compile(r"^\s*hca_id:\s*(\S+)")
_STATE = re.compile(r"^\s*state:\s*(\S+)")


def parse_ibv_devinfo(text: str) -> dict[str, str]:
    """hca_id -> the state of its first port (``PORT_ACTIVE``, ``PORT_DOWN``, ...)."""
    devices: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if found := _HCA.match(line):
            current = found[1]
            devices[current] = "no port"
        elif (found := _STATE.match(line)) and current and devices[current] == "no port":
            devices[current] = found[1]
    return devices
