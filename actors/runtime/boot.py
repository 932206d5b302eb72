"""`python -m actors.runtime.boot <kind>`: take the environment from stdin, then become the actor.

Over SSH the cluster token must stay off every command line (``ps`` shows those to
all users), so the supervisor writes the actor's environment as one JSON line on
stdin. The first stdout line is ``{"pid": N}``: the actor's own PID, which the
``execve`` that LD_PRELOAD needs keeps (the loader reads LD_PRELOAD only at exec).
"""

from __future__ import annotations

import json
import os
import sys

from actors.__main__ import KINDS
from actors.__main__ import main as run_actor


def read_environment(stream) -> dict[str, str]:
    """One JSON object of strings, the first line of ``stream``."""
    line = stream.readline()
    if not line.strip():
        raise SystemExit(
            "actors.runtime.boot: no environment on stdin; the supervisor sends it as "
            "one JSON line (run actors by hand with: python -m actors KIND)"
        )
    try:
        env = json.loads(line)
    except ValueError as exc:
        raise SystemExit(f"actors.runtime.boot: the environment line is not JSON ({exc})") from None
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise SystemExit(
            "actors.runtime.boot: the environment line must be a JSON object of strings"
        )
    return env


def present_preloads(value: str) -> tuple[str, list[str]]:
    """The LD_PRELOAD entries that exist on this machine, and those that do not.

    The supervisor picked them on its own machine; a library missing here would only
    make the loader complain on every exec.
    """
    entries = [p for p in value.replace(" ", ":").split(":") if p]
    present = [p for p in entries if os.path.exists(p)]
    return ":".join(present), [p for p in entries if p not in present]


def _say(**fields) -> None:
    """A structured line on stderr, which the supervisor relays into its log."""
    print(json.dumps({"level": "info", **fields}), file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in KINDS:
        print(
            f"usage: python -m actors.runtime.boot {{{'|'.join(KINDS)}}} < environment.json",
            file=sys.stderr,
        )
        return 2
    kind = argv[0]
    in_effect = os.environ.get("LD_PRELOAD", "")
    os.environ.update(read_environment(sys.stdin.buffer))
    preload, missing = present_preloads(os.environ.get("LD_PRELOAD", ""))
    if missing:
        _say(event="preload_missing", level="warning", missing=missing)
    if preload:
        os.environ["LD_PRELOAD"] = preload
    else:
        os.environ.pop("LD_PRELOAD", None)
    reexec = bool(preload) and preload != in_effect
    print(json.dumps({"pid": os.getpid()}), flush=True)
    _say(
        event="actor_boot",
        kind=kind,
        pid=os.getpid(),
        python=sys.executable,
        cwd=os.getcwd(),
        preload=preload or None,
    )
    if reexec:
        # The environment (token included) goes to execve, never into argv.
        os.execve(sys.executable, [sys.executable, "-u", "-m", "actors", kind], dict(os.environ))
    return run_actor([kind])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
