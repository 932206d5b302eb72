"""The model's rows: its size, whether a host has it, and room for it in memory and on disk.

A model's size is what this machine's probe found (a demo model from its shape, a local
directory from its files, a Hub checkpoint from the local HF cache), else what a host that
has it reported, else unknown. A host's memory need is the sum of its ranks' shares (a rank
of an N-rank group holds about 1/N of the weights, as ``actors.memory.fit`` estimates) plus
one ``memory_margin_bytes``: nothing runs yet, so every rank it will hold counts.
"""

from __future__ import annotations

from actors.protocol.host_facts import ModelFacts
from supervisor.doctor.gather import Gathered
from supervisor.doctor.verdict import Verdict, info, ok, problem, warn


def model_sizes(reference: Gathered, hosts: list[Gathered]) -> dict[str, int | None]:
    """Each model's weight bytes: this machine's figure first, then any host's."""
    sizes: dict[str, int | None] = {}
    for source in (reference, *hosts):
        for model in source.facts.models if source.facts else ():
            if sizes.get(model.spec) is None:
                sizes[model.spec] = model.size_bytes
    return sizes


def human_bytes(n: int) -> str:
    """Decimal units, one decimal: ``38.2 GB`` (as ``actors.memory.fit`` says them)."""
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def memory_need(host: Gathered, sizes: dict[str, int | None], margin: int) -> int | None:
    """Bytes this host's ranks will hold, plus the margin; None when a size is unknown."""
    total = 0
    for rank in host.needs.ranks:
        size = sizes.get(rank.model)
        if size is None:
            return None
        total += -(-size // max(1, rank.world_size))
    return total + margin


def memory_verdict(host: Gathered, sizes: dict[str, int | None], margin: int) -> Verdict:
    free = host.facts.mem_available
    need = memory_need(host, sizes, margin)
    if need is None:
        return info(f"{human_bytes(free)} free (model size unknown)")
    text = f"{human_bytes(free)} free, needs {human_bytes(need)}"
    if need <= free:
        return ok(text)
    node = host.needs.host.name
    return problem(
        text,
        f"free memory on {node}, spread the model over more ranks, or choose a smaller one",
        f"needs its ranks' share of the weights + memory_margin_bytes {human_bytes(margin)}",
    )


def disk_verdict(host: Gathered, sizes: dict[str, int | None]) -> Verdict:
    """Room to build or download every model the host does not have yet."""
    short: list[tuple[ModelFacts, int]] = []
    texts = []
    for model in host.facts.models:
        if model.present or model.source == "fake":
            continue
        size = sizes.get(model.spec)
        if size is None or model.disk_free is None:
            texts.append(f"{model.spec}: size unknown")
            continue
        texts.append(f"{human_bytes(model.disk_free)} free, model {human_bytes(size)}")
        if model.disk_free < size:
            short.append((model, size))
    if short:
        model, size = short[0]
        return problem(
            "; ".join(texts),
            f"free {human_bytes(size - model.disk_free)} on {host.needs.host.name} under "
            f"{model.path}, or point HF_HOME / MLX_SUPERVISOR_CACHE (hostfile env) elsewhere",
        )
    if not texts:
        return ok("model already here")
    text = "; ".join(texts)
    return info(text) if any("unknown" in t for t in texts) else ok(text)


def model_verdict(host: Gathered) -> Verdict:
    """The worst of the host's models: absent local path > absent Hub id > fine."""
    verdicts = [_one_model(host, m) for m in host.facts.models]
    if not verdicts:
        return info("none")
    for status in ("problem", "warn"):
        worst = [v for v in verdicts if v.status == status]
        if worst:
            return Verdict(
                status, "; ".join(v.text for v in verdicts), worst[0].fix, worst[0].detail
            )
    return ok("; ".join(v.text for v in verdicts))


def _one_model(host: Gathered, model: ModelFacts) -> Verdict:
    spec, node = model.spec, host.needs.host.name
    many = len(host.facts.models) > 1
    name = f"{spec}: " if many else ""
    if model.present:
        return ok(f"{name}present")
    if model.source == "fake":
        return ok(f"{name}fake (no weights)")
    if model.source == "demo":
        if not model.path:
            return problem(f"{name}unknown demo size", 'use "demo:tiny" or "demo:small"')
        return ok(f"{name}built at start")
    if model.source == "local":
        target = f"{host.needs.host.ssh}:" if host.where != "local" else ""
        return problem(
            f"{name}missing at {model.path or spec}",
            f"copy it there: rsync -a <the model dir>/ {target}{model.path or spec}/",
        )
    return warn(
        f"{name}not in the HF cache",
        f"it downloads at start; to fetch it now, on {node}: hf download {spec}",
    )
