"""`python -m actors <kind>`: run one actor; config and token come from the environment."""

from __future__ import annotations

import sys

from actors.runtime.control import configure_logging, serve

KINDS = ("generation", "memory", "probe", "fake_engine", "sync", "share")


def _make_actor(kind: str):
    if kind == "generation":
        from actors.generation.actor import GenerationActor

        return GenerationActor()
    if kind == "memory":
        from actors.memory.reporter import MemoryActor

        return MemoryActor()
    if kind == "probe":
        from actors.probe.actor import ProbeActor

        return ProbeActor()
    if kind == "fake_engine":
        from actors.fake.engine import FakeEngineActor

        return FakeEngineActor()
    if kind == "sync":
        from actors.sync.actor import SyncActor

        return SyncActor()
    if kind == "share":
        from actors.sync.share import ShareActor

        return ShareActor()
    raise SystemExit(f"actors: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")


def main(argv: list[str]) -> int:
    if argv in (["--version"], ["--host-facts"]):  # supervisor doctor's probes (actors/doctor)
        from actors.doctor.probe import print_versions, serve_host_facts

        return print_versions() if argv[0] == "--version" else serve_host_facts()
    if len(argv) != 1:
        print(f"usage: python -m actors {{{'|'.join(KINDS)}}}", file=sys.stderr)
        return 2
    configure_logging()
    return serve(_make_actor(argv[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
