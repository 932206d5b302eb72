"""``ops/bench prefix``: prefix-cache and scheduling patterns, ours against mlx_lm.server.

    ops/bench prefix [--model demo:small] [--rounds 3] [--system-tokens N] [--users-tokens N]
                     [--tokens 32] [--stream-tokens 128] [--streams 32,64] [--burst 32]
                     [--users 10] [--follow-ups 4] [--only shared,decoding,users,streams]
                     [--profile DIR] [--json FILE]

Patterns (bench_patterns.py): a shared long system prompt cold, warm, warm after a burst
of unrelated requests, and warm while the previous request still decodes; simultaneous
users with one new system prompt (time to the last first token); N concurrent streams
(aggregate tok/s). Both servers serve the same model under the same BLAS; in every round
each pattern runs on one server, then the other, the order alternating by round.
Printed: medians over rounds for both, the median of per-round ratios ours / mlx_lm.server,
``cached_tokens`` as each server reports it, and where the CPU went at the first stream count.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

import psutil
from bench_lib import process_cpu
from bench_patterns import (
    Prompts,
    Settings,
    concurrent,
    figures,
    shared_prompt,
    simultaneous_users,
    value,
    while_decoding,
)
from bench_profile import Spy, ThreadCpu, summarize_spy
from bench_servers import MlxLmServer, OurSupervisor, temporary_dir

from actors.models.resolve import resolve_model
from actors.protocol.model_spec import ModelUnavailable

KEYS = ("ours", "server")
PATTERNS = ("shared", "decoding", "users", "streams")
NAMES = {"ours": "ours", "server": "mlx_lm.server"}
REPLY_ROOM = 64  # tokens kept free in the context for the user turn and the template


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ops/bench prefix", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo:small", help="one model spec (demo:small)")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (default 3)")
    parser.add_argument("--system-tokens", type=int, help="shared prompt (default context-256)")
    parser.add_argument("--users-tokens", type=int, help="users' prompt (default context/2)")
    parser.add_argument("--tokens", type=int, default=32, help="reply tokens of TTFT patterns")
    parser.add_argument("--stream-tokens", type=int, default=128, help="tokens per stream")
    parser.add_argument("--streams", default="32,64", help="concurrent stream counts")
    parser.add_argument("--burst", type=int, default=32, help="unrelated requests in the burst")
    parser.add_argument("--users", type=int, default=10, help="simultaneous users")
    parser.add_argument("--follow-ups", type=int, default=4, help="follow-ups while decoding")
    parser.add_argument("--only", default=",".join(PATTERNS), help="patterns to run (all)")
    parser.add_argument("--profile", type=Path, help="py-spy ours at the first stream count here")
    parser.add_argument("--json", type=Path, help="also write every sample to this file")
    args = parser.parse_args(argv)
    try:
        args.streams = [int(n) for n in args.streams.split(",") if n.strip()]
    except ValueError:
        parser.error(f"--streams: expected numbers like 32,64, got {args.streams!r}")
    args.only = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in args.only if p not in PATTERNS]
    if unknown or not args.only:
        parser.error(f"--only: unknown pattern {unknown[:1]}; known: {', '.join(PATTERNS)}")
    small = [args.rounds, args.tokens, args.stream_tokens, args.users, args.follow_ups]
    if min(small) < 1 or args.burst < 0 or not args.streams or min(args.streams) < 1:
        parser.error("--rounds, --tokens, --stream-tokens, --users, --follow-ups, --streams >= 1")
    try:
        args.path = resolve_model(args.model)
    except ModelUnavailable as exc:
        parser.error(f"--model: {exc}")
    config = json.loads((args.path / "config.json").read_text())
    args.context = int(config.get("max_position_embeddings") or 4096)
    args.system_tokens = args.system_tokens or args.context - 256
    args.users_tokens = args.users_tokens or args.context // 2
    longest = max(args.system_tokens, args.users_tokens) + REPLY_ROOM + args.tokens
    if longest > args.context:
        parser.error(
            f"a {max(args.system_tokens, args.users_tokens)}-token system prompt + "
            f"{args.tokens} reply tokens does not fit the model's context of {args.context}"
        )
    return args


def load_tokenizer(path: Path):
    import transformers
    from mlx_lm.utils import load_tokenizer as load

    # Sizing a prompt encodes a little more text than the context: no warning for that.
    transformers.logging.set_verbosity_error()

    config = json.loads((path / "config.json").read_text())
    eos = config.get("eos_token_id")
    return load(path, eos_token_ids=[eos] if isinstance(eos, int) else eos)


def measure(contenders: dict, args: argparse.Namespace, settings: Settings, prompts: Prompts):
    """Every pattern on every contender, round by round; samples[key][figure] = per round."""
    patterns = [
        ("shared", "shared system prompt", shared_prompt),
        ("decoding", "follow-ups while decoding", while_decoding),
        ("users", "simultaneous users", simultaneous_users),
        *(("streams", f"{n} streams", concurrent(n, args.stream_tokens)) for n in args.streams),
    ]
    patterns = [(name, run) for kind, name, run in patterns if kind in args.only]
    first_streams = f"{args.streams[0]} streams"
    wanted = figures(args.streams, settings)
    samples = {k: {f.key: [] for f in wanted} for k in contenders}
    cached = {k: {f.key: [] for f in wanted} for k in contenders}
    errors: list[str] = []
    roles = {"supervisor": contenders["ours"].supervisor_pid, "actor": contenders["ours"].actor_pid}
    threads = ThreadCpu(roles)
    cpu = {k: {"tokens": 0, "client": 0.0} for k in contenders}
    client = psutil.Process()
    for n in range(args.rounds):
        order = list(KEYS[n % 2 :] + KEYS[: n % 2])
        load = os.getloadavg()[0]
        outs: dict[str, dict] = {key: {} for key in contenders}  # every pattern's, this round
        for name, pattern in patterns:
            for key in order:
                c, out = contenders[key], outs[key]
                measured = name == first_streams
                if key == "ours":  # the watchdog may have restarted it in a previous pattern
                    c.follow_restart()
                    roles["actor"] = c.actor_pid
                    threads.follow("actor", c.actor_pid)
                before, own = c.cpu_seconds(), process_cpu(client)
                threads.skip()
                spy = None
                if measured and key == "ours" and args.profile:
                    spy = Spy(roles, args.profile, f"round{n + 1}")
                began = time.perf_counter()
                try:
                    pattern(c, prompts, settings, f"{n}-{time.monotonic_ns()}", out)
                except Exception as exc:  # one failed pattern is a figure too: print, go on
                    what = f"{type(exc).__name__}: {exc}".rstrip(": ")
                    took = time.perf_counter() - began
                    errors.append(f"round {n + 1}, {name}, {NAMES[key]}, at {took:.1f} s: {what}")
                    print(f"  FAILED: {errors[-1]}", flush=True)
                finally:
                    if spy:
                        spy.stop()
                if measured and name in out:
                    tally = cpu[key]
                    tally["tokens"] += out[name].tokens
                    tally["client"] += process_cpu(client) - own
                    for role, seconds in c.cpu_seconds().items():
                        tally[role] = tally.get(role, 0.0) + seconds - before[role]
                    if key == "ours":
                        threads.add_since_last()
        for key, out in outs.items():
            for f in wanted:
                got = value(f.key, out)
                samples[key][f.key].append(got[0] if got else None)
                cached[key][f.key].append(got[1] if got else None)
        print(f"  round {n + 1}/{args.rounds} done (load {load:.2f} → {os.getloadavg()[0]:.2f})")
    return samples, cached, errors, cpu, threads.total


def report(args, settings, samples, cached, errors, cpu, threads, loads) -> list[str]:
    lines = [
        f"\n### {args.model}: {args.rounds} rounds, medians",
        "",
        f"Load average (1 min) before / after: {loads[0]:.2f} / {loads[1]:.2f}",
        "",
        "| pattern | ours | mlx_lm.server | ours / mlx_lm.server | target | cached_tokens ours "
        "| cached_tokens mlx_lm.server |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for f in [f for f in figures(args.streams, settings) if f.kind in args.only]:
        ours, server = samples["ours"][f.key], samples["server"][f.key]
        ratios = [a / b for a, b in zip(ours, server, strict=True) if a and b]
        ratio = statistics.median(ratios) if ratios else None
        target = ""
        if f.target is not None and ratio is not None:
            met = ratio <= f.target if f.unit == "s" else ratio >= f.target
            sign = "≤" if f.unit == "s" else "≥"
            target = f"{sign} {f.target}: {'met' if met else '**missed**'}"
        lines.append(
            f"| {f.label} | {_median(ours, f.unit)} | {_median(server, f.unit)} "
            f"| {_ratio(ratio, ratios)} | {target} | {_cached(cached['ours'][f.key])} "
            f"| {_cached(cached['server'][f.key])} |"
        )
    lines.append("")
    for key in KEYS if "shared" in args.only else ():
        cold, burst = samples[key]["cold"], samples[key]["after burst"]
        per = [b / c for b, c in zip(burst, cold, strict=True) if b and c]
        verdict = ""
        if key == "ours" and per:
            verdict = f" (target ≤ 0.1: {'met' if statistics.median(per) <= 0.1 else 'missed'})"
        lines.append(f"- {NAMES[key]}: after burst / cold {_ratio(_med(per), per)}{verdict}")
    if "streams" in args.only:
        lines.append(f"- CPU µs per token at {args.streams[0]} streams:")
    for key in KEYS if "streams" in args.only else ():
        tally = dict(cpu[key])
        tokens = tally.pop("tokens") or 1
        parts = ", ".join(f"{role} {s / tokens * 1e6:.0f}" for role, s in tally.items())
        lines.append(f"  - {NAMES[key]}: {parts}")
    tokens = cpu["ours"]["tokens"] or 1
    for (role, thread), seconds in sorted(threads.items(), key=lambda kv: -kv[1]):
        if seconds / tokens * 1e6 >= 1:
            lines.append(f"  - ours, {role}, thread {thread}: {seconds / tokens * 1e6:.0f}")
    for line in errors:
        lines.append(f"- FAILED: {line}")
    return lines


def _med(values: list) -> float | None:
    return statistics.median(values) if values else None


def _median(values: list, unit: str) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "failed"
    text = f"{statistics.median(got):.2f} s" if unit == "s" else f"{statistics.median(got):.0f}"
    rounds = "/".join(
        "–" if v is None else f"{v:.2f}" if unit == "s" else f"{v:.0f}" for v in values
    )
    return f"{text} ({rounds})" if len(values) > 1 else text


def _ratio(ratio: float | None, ratios: list[float]) -> str:
    if ratio is None:
        return "–"
    spread = f" ({min(ratios):.2f}–{max(ratios):.2f})" if len(ratios) > 1 else ""
    return f"{ratio:.2f}{spread}"


def _cached(rounds: list) -> str:
    seen = sorted({c for per in rounds if per for c in per})
    if not seen:
        return "–"
    return str(seen[0]) if len(seen) == 1 else f"{seen[0]}–{seen[-1]}"


def main(argv: list[str], same_blas) -> int:
    args = parse_args(argv)  # a bad argument: one line, exit code 2, before anything starts
    same_blas()
    tokenizer = load_tokenizer(args.path)
    settings = Settings(
        args.system_tokens,
        args.users_tokens,
        args.tokens,
        args.burst,
        16,
        args.follow_ups,
        args.users,
    )
    log_dir = temporary_dir()
    eos = sorted(tokenizer.eos_token_ids)
    print(f"ops/bench prefix {' '.join(argv)}\n{time.strftime('%Y-%m-%d %H:%M')}, logs {log_dir}")
    print(f"== {args.model} ({args.path}), context {args.context}, EOS ids {eos} banned")
    contenders: dict = {}
    loads = [os.getloadavg()[0], 0.0]
    try:
        contenders["ours"] = OurSupervisor(args.model, eos, log_dir)
        contenders["server"] = MlxLmServer(args.path, eos, log_dir)
        for c in contenders.values():
            print(f"  {c.name}: BLAS {c.blas}", flush=True)
            c.single("warm-s", 8)
            c.concurrent([f"warm-{i}" for i in range(4)], 8)
        results = measure(contenders, args, settings, Prompts(tokenizer))
    except KeyboardInterrupt:
        print("\ninterrupted; every started process has been ended", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"ops/bench prefix: {exc}\n(every started process is ended)", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C must not cut the clean-up short and orphan a server.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            for c in contenders.values():
                try:
                    c.close()
                except Exception as exc:  # one failed close must not leave the other running
                    print(f"ops/bench prefix: closing {c.name}: {exc}", file=sys.stderr)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    loads[1] = os.getloadavg()[0]
    print("\n".join(report(args, settings, *results, loads)))
    if args.profile:
        for path in sorted(args.profile.glob("*.txt")):
            print(f"\npy-spy {path}:")
            print("\n".join(summarize_spy(path)))
    if args.json:
        samples, cached, errors, cpu, threads = results
        dump = {"samples": samples, "cached": cached, "errors": errors, "cpu": cpu}
        dump["threads"] = {f"{r}/{t}": s for (r, t), s in threads.items()}
        args.json.write_text(json.dumps(dump, indent=2))
    return 0
