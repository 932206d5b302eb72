"""`python -m actors <kind>`: run one actor; config and token come from the environment."""

from __future__ import annotations

import sys

from actors.runtime.control import configure_logging, serve

KINDS = ("generation", "memory", "fake_engine")


def _make_actor(kind: str):
    if kind == "generation":
        from actors.generation.actor import GenerationActor

        return GenerationActor()
    if kind == "memory":
        from actors.memory.reporter import MemoryActor

        return MemoryActor()
    if kind == "fake_engine":
        from actors.fake.engine import FakeEngineActor

        return FakeEngineActor()
    raise SystemExit(f"actors: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(f"usage: python -m actors {{{'|'.join(KINDS)}}}", file=sys.stderr)
        return 2
    configure_logging()
    return serve(_make_actor(argv[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
